"""Container attribution without a runtime: reading client command lines, matching a client to a
container, the tracker's wiring (an attached cgroup is the run's CPU, memory and GPU), the keys.
Real runtimes are in tests/integration/test_containers.py."""

import os

import pytest
from support.fakes.cgroupfs import FakeCgroups
from support.fakes.nvml import FakeGpu, FakeNvml
from support.fakes.procfs import FakeMachine

from mlflow_wattsup.meters.cgroup import CgroupMeter, locate
from mlflow_wattsup.meters.estimator import CpuPowerModel
from mlflow_wattsup.meters.proctree import ProcessTreeMeter
from mlflow_wattsup.sink import keys
from mlflow_wattsup.tracking.container_run import Image, parse_image, run_command
from mlflow_wattsup.tracking.containers import (
    ContainerUse,
    ContainerWatch,
    _created_wall,
    _matches,
    parse_client,
    with_cidfile,
)
from mlflow_wattsup.tracking.tracker import Tracker

CID = "0123456789ab" + "c" * 52


@pytest.mark.parametrize(
    "argv, runtime, command, glob",
    [
        (["docker", "run", "--rm", "bb", "sh"], "docker", "run", ()),
        (
            ["/usr/bin/docker", "-H", "unix:///s", "--debug", "run", "bb"],
            "docker",
            "run",
            ("-H", "unix:///s", "--debug"),
        ),
        (["docker", "--context=remote", "container", "run", "bb"], "docker", "run", ("--context=remote",)),
        (
            ["podman", "--root", "/r", "--runtime", "runc", "run", "x"],
            "podman",
            "run",
            ("--root", "/r", "--runtime", "runc"),
        ),
        (["podman-remote", "run", "x"], "podman", "run", ("--remote",)),
        (["nerdctl", "-n", "k8s.io", "run", "x"], "nerdctl", "run", ("-n", "k8s.io")),
        (["docker", "ps"], "docker", "ps", ()),
        (["docker", "compose", "-f", "c.yml", "run", "svc"], "docker", "compose run", ()),
        (["docker-compose", "compose", "run", "svc"], "docker", "compose run", ()),
        (["docker-compose", "--project-name", "p", "up"], "docker", "compose up", ()),
        (["docker", "compose", "ls"], "docker", "compose", ()),
    ],
)
def test_client_command_lines(argv, runtime, command, glob):
    c = parse_client(argv)
    assert (c.runtime, c.command, c.global_opts) == (runtime, command, glob)


def test_not_a_runtime():
    assert parse_client(["python", "run"]) is None and parse_client([]) is None


def test_cidfile_goes_after_run_and_a_users_own_is_kept():
    assert with_cidfile(["docker", "-H", "x", "run", "--rm", "bb", "run"], "/t/c") == [
        "docker", "-H", "x", "run", "--cidfile", "/t/c", "--rm", "bb", "run"
    ]  # fmt: skip
    assert with_cidfile(["docker", "container", "run", "bb"], "/t/c")[:5] == [
        "docker",
        "container",
        "run",
        "--cidfile",
        "/t/c",
    ]
    assert with_cidfile(["docker", "run", "--cidfile=/mine", "bb"], "/t/c") is None
    assert with_cidfile(["docker", "ps"], "/t/c") is None


def test_options_and_the_daemon_the_client_names():
    c = parse_client(["docker", "-H", "tcp://10.0.0.5:2375", "run", "--name", "seg1", "--cidfile=/x", "img"])
    assert c.option("--name") == "seg1" and c.option("--cidfile") == "/x" and c.option("--user") is None
    assert c.host({}) == "-H tcp://10.0.0.5:2375"
    assert (
        parse_client(["docker", "run", "img"]).host({"DOCKER_HOST": "ssh://gpu1"}) == "DOCKER_HOST=ssh://gpu1"
    )
    assert parse_client(["docker", "run", "img"]).host({}) is None


def inspected(image, path, args, created="2026-12-05T13:48:18.715095718Z"):
    return {"Id": CID, "Created": created, "Path": path, "Args": args, "Config": {"Image": image}}


def test_a_client_matches_the_container_of_its_image_and_command():
    c = parse_client(
        [
            "docker",
            "run",
            "--rm",
            "-v",
            "/d:/d",
            "deepmi/fastsurfer:gpu-v2",
            "--t1",
            "/d/t1.nii",
            "--sid",
            "s",
        ]
    )
    # the image's entrypoint comes first in the container's command; the client's arguments end it
    d = inspected(
        "deepmi/fastsurfer:gpu-v2",
        "/fastsurfer/Docker/entrypoint.sh",
        ["/fastsurfer/run_fastsurfer.sh", "--t1", "/d/t1.nii", "--sid", "s"],
    )
    assert _matches(c, d)
    assert not _matches(
        c, {**d, "Args": ["/fastsurfer/run_fastsurfer.sh", "--t1", "/d/t1.nii", "--sid", "other"]}
    )
    assert not _matches(c, {**d, "Config": {"Image": "deepmi/fastsurfer:cpu-v2"}})
    plain = parse_client(["podman", "run", "busybox"])  # no command: the image's own
    assert _matches(plain, inspected("docker.io/library/busybox:latest", "sh", []))


def test_created_times_with_nanoseconds():
    from datetime import datetime, timezone

    at = datetime(2026, 12, 5, 13, 48, 18, tzinfo=timezone.utc).timestamp()
    assert _created_wall("2026-12-05T13:48:18.715095718Z") == pytest.approx(at + 0.715095, abs=1e-6)
    assert _created_wall("2026-12-05T13:48:18Z") == pytest.approx(at)
    assert _created_wall("2026-12-05T14:48:18.5+01:00") == pytest.approx(at + 0.5)
    assert _created_wall("") == 0.0 and _created_wall("garbage") == 0.0


def test_a_compose_run_in_the_tree_is_said_not_hidden(tmp_path):
    proc = tmp_path / "proc" / "4242"
    proc.mkdir(parents=True)
    (proc / "cmdline").write_bytes(b"docker\0compose\0run\0--rm\0seg\0")
    (proc / "stat").write_text("4242 (docker) S 1 4242 4242 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 777 0 0\n")
    said = []
    watch = ContainerWatch(ProcessTreeMeter(), say=said.append, proc_root=str(tmp_path / "proc"))
    watch.observe([4242])
    watch.observe([4242])  # seen already: said once
    watch.close()
    assert len(said) == 1 and "compose" in said[0] and "machine_energy_kwh" in said[0]
    assert watch.warnings == said and watch.uses == ()


def test_an_attached_cgroup_is_the_runs_cpu_memory_and_gpu(tmp_path):
    cg = FakeCgroups(tmp_path / "cg", "v1")
    cg.add(os.getpid(), f"/docker/{CID}", cpu_s=0.0, rss=2**30)
    meter = CgroupMeter(locate(os.getpid(), proc_root=str(cg.proc), mountinfo=str(cg.mountinfo)))
    tree = ProcessTreeMeter(children_of=os.getpid())  # nothing of ours: only the container counts
    fake = FakeNvml([FakeGpu("NVIDIA H100", "GPU-h", power_w=300.0, procs=[(os.getpid(), 2**30)])])
    t = Tracker(
        tree,
        interval_s=3600,
        rapl=False,
        nvml=fake,
        machine=FakeMachine(tmp_path / "m"),
        cpu_model=CpuPowerModel(5.0, "test"),
    )
    t.gpu.proc_root = str(cg.proc)
    t.start()
    tree.attach(f"docker:{CID}", meter, (f"/docker/{CID}",))
    cg.set(f"/docker/{CID}", cpu_s=4.0, rss=2**30)
    fake.advance(10.0)
    t.sample()
    tot = t.stop()
    assert tot.cpu_s == pytest.approx(4.0, abs=0.05)
    assert tot.energy.cpu_j == pytest.approx(5.0 * tot.cpu_s)
    assert tot.energy.gpu_j == pytest.approx(3000.0)  # the container's process holds the whole GPU
    assert tot.energy.ram_j > 0


def test_keys_of_the_containers():
    uses = [
        ContainerUse("docker", CID, "cgroup-v1", 2.5),
        ContainerUse("podman", "f" * 64, "process-tree", 1.0),
    ]
    assert keys.container_tags(uses) == {
        "wattsup.attribution.container": "docker:0123456789ab, podman:ffffffffffff",
        "wattsup.attribution.container_method": "cgroup-v1,process-tree",
    }
    assert keys.container_metrics(uses) == {"container_cpu_time_s": 3.5}
    assert keys.container_tags([]) == {} and keys.container_metrics([]) == {}
    many = keys.container_tags([ContainerUse("docker", f"{i:064x}", "cgroup-v2", 0.1) for i in range(25)])
    assert many["wattsup.attribution.container"].endswith("and 5 more")


def test_image_parameter_and_the_command_built_from_it():
    assert parse_image("docker://deepmi/fastsurfer:cpu-v2.3.3") == Image(
        "docker", "deepmi/fastsurfer:cpu-v2.3.3"
    )
    assert parse_image("podman://localhost/fs:1") == Image("podman", "localhost/fs:1")
    assert parse_image("/images/fastsurfer.sif") is None and parse_image(None) is None
    with pytest.raises(ValueError, match="no image reference"):
        parse_image("docker://")
    cmd = run_command(
        Image("docker", "deepmi/fastsurfer:gpu"), "/usr/bin/docker", ["--sid", "s"],
        mounts=["/data/out"], read_only=["/data/in", "/data/out"], cpus={2, 0}, gpu="1",
    )  # fmt: skip
    assert cmd[:5] == ["/usr/bin/docker", "run", "--rm", "--network", "none"] and "--init" in cmd
    assert cmd[cmd.index("--user") + 1] == f"{os.getuid()}:{os.getgid()}"
    assert cmd[cmd.index("--cpuset-cpus") + 1] == "0,2" and cmd[cmd.index("--gpus") + 1] == "device=1"
    assert (
        "/data/in:/data/in:ro" in cmd and "/data/out:/data/out" in cmd
    )  # a folder written to is never read-only
    assert cmd[-3:] == ["deepmi/fastsurfer:gpu", "--sid", "s"]
    pod = run_command(Image("podman", "fs"), "podman", [], mounts=[], gpu="0")
    assert "--init" not in pod and pod[pod.index("--device") + 1] == "nvidia.com/gpu=0"
