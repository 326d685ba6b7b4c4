"""Containers measured from the host, with real runtimes (issue 19): a private ``dockerd`` (Debian's
docker.io 20.10), rootful Podman with runc, images made here (support/docker.py).

The figure each test compares against is the kernel's own, read by the test: every container runs
under a ``--cgroup-parent`` made for the test, whose CPU counter (v1 ``cpuacct.usage``, v2
``cpu.stat``) includes its child's after the runtime has removed the child at the container's end.
The containers burn a set amount of CPU time (their shell reads its own ``/proc/self/stat``), not
a set number of loop iterations, so the figures do not depend on this machine's speed.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import uuid

import nibabel as nib
import numpy as np
import pytest
from support.docker import (
    DOCKER,
    FASTSURFER_IMAGE_CHANGES,
    FREESURFER_IMAGE_CHANGES,
    PODMAN,
    Dockerd,
    PodmanStore,
    busybox_rootfs,
    cgroup_cpu_s,
    containers_conf_problem,
    docker_unavailable,
    fastsurfer_rootfs,
    freesurfer_rootfs,
    import_image,
    podman_unavailable,
    remove_cgroup,
)
from support.helpers import WATTSUP, only_run, wattsup
from support.paths import REPO
from support.projects import mlflow_run, our_lines, runs_in

BB = "wattsup-busybox:test"
FS_IMAGE = "wattsup-fastsurfer-standin:test"
# burn $1 ticks (1/100 s) of the shell's own CPU time, then exit: `sh -c "$BURN" sh 300` = 3 CPU-s
BURN = (
    't=$1; while :; do read -r l < /proc/$$/stat; set -- $l; [ $(( ${14} + ${15} )) -ge "$t" ] && break; done'
)
ATTRIBUTION = "wattsup.attribution.container"
METHOD = "wattsup.attribution.container_method"
WARNING = "wattsup.warning.container"


@pytest.fixture(scope="module")
def dockerd(tmp_path_factory):
    why = docker_unavailable()
    if why:
        pytest.skip(why)
    d = Dockerd()
    try:  # installed and root, yet it does not start: that is a failure, not a skip
        d.start()
        import_image([DOCKER], busybox_rootfs(d.base), BB, env=d.env)
    except Exception:
        d.stop()
        raise
    yield d
    d.stop()


@pytest.fixture(scope="module")
def podman_store():
    why = podman_unavailable() or containers_conf_problem()
    if why:
        pytest.skip(why)
    store = PodmanStore()
    try:
        import_image([PODMAN, *store.options], busybox_rootfs(store.base), f"localhost/{BB}")
    except Exception:
        store.close()
        raise
    yield store
    store.close()


@pytest.fixture
def cgroup_parent():
    """Names for cgroups made for this test (``--cgroup-parent``), removed afterwards."""
    made = []

    def new(label: str) -> str:
        made.append(f"/wattsup-test-{uuid.uuid4().hex[:10]}-{label}")
        return made[-1]

    yield new
    for parent in made:
        remove_cgroup(parent)


def docker_run(*args: str) -> list[str]:
    return [DOCKER, "run", "--rm", "--network", "none", *args]


def burn(ticks: int) -> list[str]:
    return ["sh", "-c", BURN, "sh", str(ticks)]


def _default_signals():
    for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)


def start_wattsup(experiment: str, cmd: list[str], env: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [*WATTSUP, "run", "--experiment", experiment, "--quiet", "--", *cmd],
        env={**os.environ, **env},
        start_new_session=True,
        preexec_fn=_default_signals,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# -- Docker ---------------------------------------------------------------------------------------


def test_docker_container_cpu_time_is_the_runs(dockerd, tracking_uri, client, experiment, cgroup_parent):
    parent = cgroup_parent("one")
    r = wattsup(
        "run",
        "--experiment",
        experiment,
        "--",
        *docker_run("--cgroup-parent", parent, BB, *burn(300)),
        env={"DOCKER_HOST": dockerd.host},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    truth = cgroup_cpu_s(parent)
    assert truth >= 2.95
    run = only_run(client, experiment)
    m, tags = run.data.metrics, run.data.tags
    assert m["container_cpu_time_s"] == pytest.approx(truth, rel=0.05)
    # the run's CPU time: the container's plus the docker client's own
    assert 0.95 * truth <= m["cpu_time_s"] <= truth + 1.0
    assert re.fullmatch(r"docker:[0-9a-f]{12}", tags[ATTRIBUTION])
    assert tags[METHOD] in ("cgroup-v1", "cgroup-v2")
    assert WARNING not in tags
    w_per_thread = float(run.data.params["wattsup.estimate.cpu_w_per_thread"])  # no RAPL here: estimated
    if tags["wattsup.source.cpu"] == "estimate":
        assert m["energy_cpu_kwh"] == pytest.approx(w_per_thread * m["cpu_time_s"] / 3.6e6, rel=0.02)
    assert f"container {tags[ATTRIBUTION]} ({tags[METHOD]})" in r.stderr  # the summary says so


def test_two_containers_at_once_each_run_gets_its_own(
    dockerd, tracking_uri, client, experiment, cgroup_parent
):
    parents = {"a": cgroup_parent("a"), "b": cgroup_parent("b")}
    ticks = {"a": 150, "b": 300}  # different, so a mix-up cannot pass
    procs = {
        k: start_wattsup(
            f"{experiment}-{k}",
            docker_run("--cgroup-parent", parents[k], BB, *burn(ticks[k])),
            {"DOCKER_HOST": dockerd.host},
        )
        for k in ("a", "b")
    }
    for p in procs.values():
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    seen = set()
    for k in ("a", "b"):
        truth = cgroup_cpu_s(parents[k])
        assert truth >= ticks[k] / 100 - 0.05
        run = only_run(client, f"{experiment}-{k}")
        assert run.data.metrics["container_cpu_time_s"] == pytest.approx(truth, rel=0.05), k
        assert run.data.metrics["cpu_time_s"] <= truth + 1.0, k
        seen.add(run.data.tags[ATTRIBUTION])
    assert len(seen) == 2


def test_container_started_by_a_script_is_found_by_its_image_and_command(
    dockerd, tracking_uri, client, experiment, cgroup_parent, tmp_path
):
    parent = cgroup_parent("nested")
    script = tmp_path / "job.sh"
    cmd = " ".join(docker_run("--cgroup-parent", parent, BB, "sh", "-c", f"'{BURN}'", "sh", "200"))
    # the script outlives its container: the cgroup is gone long before the run's last reading
    script.write_text(f"#!/bin/sh\necho starting\n{cmd}\nsleep 2\n")
    script.chmod(0o755)
    r = wattsup(
        "run",
        "--experiment",
        experiment,
        "--quiet",
        "--",
        str(script),
        env={"DOCKER_HOST": dockerd.host},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    truth = cgroup_cpu_s(parent)
    run = only_run(client, experiment)
    assert run.data.metrics["container_cpu_time_s"] == pytest.approx(truth, rel=0.05)
    assert run.data.tags[ATTRIBUTION].startswith("docker:")


def test_container_started_inside_a_track_block(dockerd, tracking_uri, client, experiment, cgroup_parent):
    parent = cgroup_parent("track")
    code = (
        "import subprocess, sys, mlflow_wattsup\n"
        f"with mlflow_wattsup.track('block', experiment={experiment!r}):\n"
        f"    subprocess.run({docker_run('--cgroup-parent', parent, BB, *burn(200))!r}, check=True)\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "DOCKER_HOST": dockerd.host},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    truth = cgroup_cpu_s(parent)
    run = only_run(client, experiment)
    assert run.data.metrics["container_cpu_time_s"] == pytest.approx(truth, rel=0.05)
    assert run.data.metrics["cpu_time_s"] >= truth  # the block's own Python process too
    assert run.data.tags[METHOD] in ("cgroup-v1", "cgroup-v2")


@pytest.mark.parametrize("proxy", ["--sig-proxy=true", "--sig-proxy=false"])
def test_sigterm_stops_the_container_and_the_run_ends_with_it(
    dockerd, tracking_uri, client, experiment, proxy
):
    # PID 1 in the container is a shell without a TERM handler: the signal the client proxies
    # (sig-proxy=true) is ignored, and with sig-proxy=false the client exits and leaves the container
    # running. Either way wattsup must stop it (its stop timeout: 2 s, then SIGKILL).
    p = start_wattsup(
        experiment,
        docker_run(proxy, "--stop-timeout", "2", BB, *burn(6000)),
        {"DOCKER_HOST": dockerd.host},
    )
    deadline = time.monotonic() + 60
    while not dockerd.running() and time.monotonic() < deadline:
        assert p.poll() is None, p.communicate()[1]
        time.sleep(0.2)
    assert dockerd.running(), "the container never started"
    time.sleep(2.0)  # some CPU time to count
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert dockerd.running() == []  # the run ended with its container, not before it
    run = only_run(client, experiment)
    assert run.info.status == "KILLED", err
    m = run.data.metrics
    assert 1.0 < m["container_cpu_time_s"] < 60 and m["cpu_time_s"] >= m["container_cpu_time_s"]
    assert run.data.tags[ATTRIBUTION].startswith("docker:")


def test_gpu_request_without_a_gpu_fails_in_seconds(dockerd, tracking_uri, client, experiment):
    t0 = time.monotonic()
    r = wattsup(
        "run",
        "--experiment",
        experiment,
        "--quiet",
        "--",
        *docker_run("--gpus", "all", BB, "true"),
        env={"DOCKER_HOST": dockerd.host},
    )
    assert r.returncode != 0 and time.monotonic() - t0 < 60
    assert "gpu" in r.stderr.lower()  # Docker's own one-line reason
    run = only_run(client, experiment)
    assert run.info.status == "FAILED" and ATTRIBUTION not in run.data.tags and WARNING not in run.data.tags


def test_daemon_whose_processes_are_not_here_is_said_once_with_the_machine_figure(
    tracking_uri, client, experiment
):
    # a daemon in a PID namespace of its own: the PID it reports for the container is not that
    # container's process here, exactly as with a daemon on another machine (DOCKER_HOST=tcp://...)
    why = docker_unavailable()
    if why:
        pytest.skip(why)
    remote = Dockerd(pid_namespace=True)
    try:
        remote.start()
        import_image([DOCKER], busybox_rootfs(remote.base), BB, env=remote.env)
        r = wattsup(
            "run",
            "--experiment",
            experiment,
            "--",
            *docker_run(BB, *burn(100)),
            env={"DOCKER_HOST": remote.host},
            timeout=300,
        )
    finally:
        remote.stop()
    assert r.returncode == 0, r.stderr
    said = [ln for ln in r.stderr.splitlines() if ln.startswith("wattsup: warning:")]
    assert len(said) == 1 and "cannot be attributed" in said[0] and "machine_energy_kwh" in said[0], r.stderr
    run = only_run(client, experiment)
    m, tags = run.data.metrics, run.data.tags
    assert "cannot be attributed" in tags[WARNING] and ATTRIBUTION not in tags
    assert "machine_energy_kwh" in m and m["cpu_time_s"] < 0.9  # the client only: said, not hidden
    assert "Warning** (container)" in tags.get("mlflow.note.content", "")


# -- Podman ---------------------------------------------------------------------------------------


def test_podman_container_cpu_time_is_the_runs(podman_store, tracking_uri, client, experiment, cgroup_parent):
    parent = cgroup_parent("podman")
    cmd = [PODMAN, *podman_store.options, "run", "--rm", "--network", "none", "--cgroup-parent", parent]
    r = wattsup(
        "run", "--experiment", experiment, "--quiet", "--", *cmd, f"localhost/{BB}", *burn(300), timeout=300
    )
    assert r.returncode == 0, r.stderr
    truth = cgroup_cpu_s(parent) - cgroup_cpu_s(f"{parent}/conmon")  # Podman puts conmon beside it
    assert truth >= 2.95
    run = only_run(client, experiment)
    m, tags = run.data.metrics, run.data.tags
    assert m["container_cpu_time_s"] == pytest.approx(truth, rel=0.05)
    # rootful Podman's container is a descendant of wattsup (conmon adopted as subreaper): counted
    # once, by the process tree; the rest is podman's and conmon's own CPU time
    assert tags[METHOD] == "process-tree" and tags[ATTRIBUTION].startswith("podman:")
    assert 0.95 * truth <= m["cpu_time_s"] <= truth + 2.0


# -- the cgroup readers on a live container -------------------------------------------------------


def test_v1_and_v2_readers_agree_on_a_live_container(dockerd):
    from mlflow_wattsup.meters.cgroup import CgroupMeter, CgroupUnavailable, locate

    cid = dockerd.docker("run", "-d", "--network", "none", BB, *burn(200)).stdout.strip()
    try:
        pid = int(dockerd.docker("inspect", "-f", "{{.State.Pid}}", cid).stdout)
        locations = {}
        for version in ("v1", "v2"):
            try:
                locations[version] = locate(pid, prefer=version)
            except CgroupUnavailable:
                pass  # a pure v1 or pure v2 host has one of them
        assert locations, "no cgroup hierarchy with CPU accounting for a Docker container"
        for loc in locations.values():
            assert cid in loc.path
        time.sleep(1.0)
        meters = {v: CgroupMeter(loc) for v, loc in locations.items()}
        readings = {v: m.read() for v, m in meters.items()}
        for v, reading in readings.items():
            assert 0.3 < reading.cpu_s < 2.5, v
            assert reading.memory_bytes is None or reading.memory_bytes > 0
        if len(readings) == 2:
            assert readings["v1"].cpu_s == pytest.approx(readings["v2"].cpu_s, abs=0.05)
        dockerd.docker("wait", cid)
        time.sleep(0.5)
        for v, m in meters.items():  # removed with the container: the last figure stays
            gone = m.read()
            assert gone.gone and gone.cpu_s >= readings[v].cpu_s, v
    finally:
        dockerd.docker("rm", "-f", cid, check=False)


# -- projects/fastsurfer with FastSurfer's image (a stand-in: the native stub inside) ---------------


@pytest.fixture(scope="module")
def fastsurfer_image(dockerd):
    import_image(
        [DOCKER], fastsurfer_rootfs(dockerd.base), FS_IMAGE, FASTSURFER_IMAGE_CHANGES, env=dockerd.env
    )
    return f"docker://{FS_IMAGE}"


def _fs_inputs(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((20, 20, 20), np.uint8), np.eye(4)), str(tmp_path / "T1.nii.gz"))
    ref = np.zeros((32, 32, 32), np.int32)  # what the stub segments without STUB_SEG_SOURCE
    ref[8:24, 8:24, 8:24] = 17
    nib.save(nib.MGHImage(ref, np.eye(4)), str(tmp_path / "ref.mgz"))


def test_fastsurfer_docker_image_stages_cost_dice_as_native(
    dockerd, fastsurfer_image, tracking_uri, client, experiment, tmp_path
):
    from support.fastsurfer_env import PARAMS

    _fs_inputs(tmp_path)
    r = mlflow_run(
        REPO / "projects" / "fastsurfer",
        "t1=T1.nii.gz",
        "sid=s",
        "sd=out",
        "device=cpu",
        f"fastsurfer_image={fastsurfer_image}",
        "reference=ref.mgz",
        cwd=tmp_path,
        env={"MLFLOW_EXPERIMENT_NAME": experiment, "DOCKER_HOST": dockerd.host},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = runs_in(client, experiment)
    m, tags = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    log = (tmp_path / "out" / "s" / "scripts" / "deep-seg.log").read_text()
    [coronal] = [float(x) for x in re.findall(r"Coronal inference on .* finished in ([\d.]+) seconds", log)]
    assert m["stage/coronal/duration_s"] == pytest.approx(coronal, abs=1e-6)
    for stage in ("asegdkt", "biasfield", "segstats", "cerebnet", "hypvinn", "sagittal", "axial"):
        assert f"stage/{stage}/duration_s" in m, stage
    assert tags["wattsup.fastsurfer.modules"] == "asegdkt biasfield segstats cerebnet hypvinn"
    assert tags["wattsup.fastsurfer.image"] == fastsurfer_image
    for net, counts in PARAMS.items():  # the checkpoints are inside the image: FastSurfer's own counts
        assert m[f"params/{net}"] == sum(counts), net
    assert m["macs/asegdkt"] == pytest.approx(34.95e12, rel=0.01)
    assert m["dice_mean"] > 0.9
    argv = tags["wattsup.command"]
    for part in ("run --rm", "--network none", f"--user {os.getuid()}:{os.getgid()}", f"-v {tmp_path}/out:"):
        assert part in argv, part
    # the stub's three planes, view aggregation, N4, segstats, CerebNet, HypVINN: ~2.4 CPU-s in the container
    assert tags[ATTRIBUTION].startswith("docker:") and m["container_cpu_time_s"] > 2.0
    assert m["cpu_time_s"] >= m["container_cpu_time_s"]
    assert dockerd.docker("ps", "-aq").stdout.split() == []  # --rm


def test_fastsurfer_docker_gpu_without_gpu_and_missing_image_fail_in_seconds(
    dockerd, fastsurfer_image, tracking_uri, experiment, tmp_path
):
    _fs_inputs(tmp_path)
    base = ["t1=T1.nii.gz", "sid=s", "sd=out"]
    env = {"MLFLOW_EXPERIMENT_NAME": experiment, "DOCKER_HOST": dockerd.host}
    t0 = time.monotonic()
    r = mlflow_run(
        REPO / "projects" / "fastsurfer",
        *base,
        "device=gpu",
        f"fastsurfer_image={fastsurfer_image}",
        cwd=tmp_path,
        env=env,
    )
    assert r.returncode != 0
    [line] = our_lines(r.stderr, "fastsurfer")
    assert "device=gpu" in line and "no usable NVIDIA GPU" in line
    r = mlflow_run(
        REPO / "projects" / "fastsurfer",
        *base,
        "device=cpu",
        "fastsurfer_image=docker://nowhere/fastsurfer:0",
        cwd=tmp_path,
        env=env,
    )
    assert r.returncode != 0
    [line] = our_lines(r.stderr, "fastsurfer")
    assert "not on this machine" in line and "docker pull nowhere/fastsurfer:0" in line
    assert time.monotonic() - t0 < 120 and not (tmp_path / "out" / "s").exists()


# -- projects/freesurfer with FreeSurfer's image (a stand-in: the native recon-all stub inside) -----

FSR_IMAGE = "wattsup-freesurfer-standin:test"


@pytest.fixture(scope="module")
def freesurfer_image(dockerd):
    import_image(
        [DOCKER], freesurfer_rootfs(dockerd.base), FSR_IMAGE, FREESURFER_IMAGE_CHANGES, env=dockerd.env
    )
    return f"docker://{FSR_IMAGE}"


def test_freesurfer_docker_image_stages_as_native(
    dockerd, freesurfer_image, tracking_uri, client, experiment, tmp_path
):
    (tmp_path / "T1.nii.gz").write_bytes(b"any")
    licence = tmp_path / "licence" / "license.txt"
    licence.parent.mkdir()
    licence.write_text("stub licence\n")
    params = [
        "sid=bert",
        "subjects_dir=subjects",
        "t1=T1.nii.gz",
        "directive=autorecon1",
        f"freesurfer_image={freesurfer_image}",
    ]
    env = {"MLFLOW_EXPERIMENT_NAME": experiment, "DOCKER_HOST": dockerd.host, "FREESURFER_HOME": ""}
    t0 = time.monotonic()
    r = mlflow_run(REPO / "projects" / "freesurfer", *params, cwd=tmp_path, env={**env, "FS_LICENSE": ""})
    assert r.returncode != 0 and time.monotonic() - t0 < 60
    [line] = our_lines(r.stderr, "freesurfer")
    assert "needs a licence" in line and "FS_LICENSE" in line

    r = mlflow_run(
        REPO / "projects" / "freesurfer", *params, cwd=tmp_path, env={**env, "FS_LICENSE": str(licence)}
    )
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = [x for x in runs_in(client, experiment) if x.info.status == "FINISHED"]
    m, tags = run.data.metrics, run.data.tags
    stages = sorted(k.split("/")[1] for k in m if k.startswith("stage/") and k.endswith("/duration_s"))
    assert stages == sorted(
        ["MotionCor", "Talairach", "Nu_Intensity_Correction", "Intensity_Normalization", "Skull_Stripping"]
    )
    assert m["fstime_cpu_s"] == pytest.approx(5 * 2 * 0.15, rel=0.35)  # recon-all's own records, as native
    assert tags[ATTRIBUTION].startswith("docker:") and m["container_cpu_time_s"] >= m["fstime_cpu_s"]
    assert tags["wattsup.freesurfer.image"] == freesurfer_image
    argv = tags["wattsup.command"]
    assert (
        f"-e FS_LICENSE={licence}" in argv
        and f"{licence}:{licence}:ro" in argv
        and " recon-all -s bert" in argv
    )
    assert (tmp_path / "subjects" / "bert" / "scripts" / "recon-all.log").exists()
