"""`srun -n 2 wattsup run ...` on a real one-node SLURM cluster (slurmctld + slurmd + munge started
here in a temp folder by tests/support/slurm_cluster.py): both tasks log to one run, the host's machine
energy is counted once, the attributed energy is the sum of the two tasks' trees.

Skips with the reason where the cluster cannot be started (not root, SLURM not installed:
`.ci/run` installs it)."""

import os
import signal
import subprocess
import sys

import pytest
from support.distributed import BIG, WAITER, job_run, kwh_of, wait_joined
from support.fakes.sysfs import FakeRapl
from support.helpers import WATTSUP
from support.slurm_cluster import running_cluster

from mlflow_wattsup.sink import keys
from mlflow_wattsup.tracking.distributed import AgentReport, discover


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("slurm"), set_conf=False) as c:
        yield c


def _srun(cluster, args, **kw):
    env = {**os.environ, **cluster.env}
    return subprocess.Popen(
        ["srun", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def test_the_environment_of_srun_tasks_and_of_a_batch_script(cluster, tmp_path):
    """What discover() reads is what this SLURM gives: two tasks of one step, and a batch script
    (no step id) is not a distributed job."""
    # each task writes its own file: two tasks printing at once can interleave on srun's stdout
    dump = "import json, os, sys; open(sys.argv[1] + os.environ['SLURM_PROCID'], 'w').write(json.dumps(dict(os.environ)))"
    p = _srun(cluster, ["-n", "2", "-N", "1", sys.executable, "-c", dump, str(tmp_path / "task")])
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    ctxs = sorted(
        (discover(__import__("json").loads((tmp_path / f"task{i}").read_text())) for i in (0, 1)),
        key=lambda c: c.rank,
    )
    assert [(c.launcher, c.rank, c.local_rank, c.world_size, c.nodes) for c in ctxs] == [
        ("slurm", 0, 0, 2, 1),
        ("slurm", 1, 1, 2, 1),
    ]
    assert ctxs[0].job_key == ctxs[1].job_key and ctxs[0].host == ctxs[1].host == "localhost"
    script = tmp_path / "batch.sh"
    batch_dump = "import json, os; print(json.dumps(dict(os.environ)))"
    script.write_text(f"#!/bin/sh\n{sys.executable} -c '{batch_dump}' > {tmp_path}/env.json\n")
    b = subprocess.run(
        ["sbatch", "--wait", "-n", "2", "-o", str(tmp_path / "out"), str(script)],
        env={**os.environ, **cluster.env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert b.returncode == 0, b.stderr
    env = __import__("json").loads((tmp_path / "env.json").read_text())
    assert env.get("SLURM_NTASKS") == "2" and discover(env) is None


def test_srun_two_tasks_one_run_machine_energy_once(cluster, tracking_uri, client, experiment, tmp_path):
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    go = tmp_path / "go"
    fake = FakeRapl(
        tmp_path / "rapl", {"intel-rapl:0": ("package-0", 1_000_000, BIG), "intel-rapl:0:0": ("dram", 0, BIG)}
    )
    cmd = ["-n", "2", "-N", "1", *WATTSUP, "run", "--experiment", experiment, "--interval", "0.2", "--quiet"]
    cmd += ["--powercap-root", str(fake.root), "--", sys.executable, str(script), str(go), "0"]
    p = _srun(cluster, cmd)
    run = job_run(client, experiment)
    wait_joined(client, run.info.run_id, 2, [p])
    fake.add("intel-rapl:0", 40_000_000)  # the host's package: 40 J while both tasks run
    fake.add("intel-rapl:0:0", 4_000_000)
    go.touch()
    out, err = p.communicate(timeout=180)
    assert p.returncode == 0, err
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, "two tasks, one run"
    r = runs[0]
    m, t = r.data.metrics, r.data.tags
    assert (
        r.info.status == "FINISHED" and t[keys.DIST_LAUNCHER] == "slurm" and t[keys.DIST_HOSTS] == "localhost"
    )
    reports = [AgentReport.from_json(t[keys.dist_agent_tag(a)]) for a in (0, 1)]
    # each task's agent saw the whole host's 40 J; the run counts the host once, not twice
    assert all(rep.machine_energy.cpu_j == pytest.approx(40, rel=1e-9) for rep in reports)
    assert m["machine_energy_cpu_kwh"] == pytest.approx(kwh_of(40), rel=1e-9)
    assert m["machine_energy_ram_kwh"] == pytest.approx(kwh_of(4), rel=1e-9)
    # attributed: the sum of the two tasks' trees (capped at the host's machine energy)
    summed = reports[0].energy + reports[1].energy
    assert m["energy_cpu_kwh"] == pytest.approx(kwh_of(min(summed.cpu_j, 40)), rel=1e-9)
    assert m["energy_ram_kwh"] == pytest.approx(kwh_of(min(summed.ram_j, 4)), rel=1e-9)
    assert m["cpu_time_s"] == pytest.approx(reports[0].cpu_s + reports[1].cpu_s)
    assert all(rep.cpu_s >= 0.2 for rep in reports)  # each tree holds its own task's burn
    assert {rep.local_rank for rep in reports} == {0, 1}


def _agent_pid(job_id: str, rank: int) -> int:
    """The pid of task ``rank``'s `wattsup run` in SLURM job ``job_id`` (from /proc)."""
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            cmd = open(f"/proc/{d}/cmdline", "rb").read().split(b"\0")
            env = dict(
                e.split(b"=", 1) for e in open(f"/proc/{d}/environ", "rb").read().split(b"\0") if b"=" in e
            )
        except OSError:
            continue
        if b"mlflow_wattsup" in cmd and env.get(b"SLURM_JOB_ID") == job_id.encode():
            if env.get(b"SLURM_PROCID") == str(rank).encode():
                return int(d)
    raise AssertionError(f"no wattsup agent of rank {rank} in job {job_id}")


@pytest.mark.slow
def test_srun_a_task_killed_ends_the_run_failed_and_names_it(
    cluster, tracking_uri, client, experiment, tmp_path
):
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    go = tmp_path / "go"
    cmd = ["-n", "2", "-N", "1", "--export", "ALL,WATTSUP_DIST_REPORT_S=4", *WATTSUP, "run"]
    cmd += [
        "--experiment",
        experiment,
        "--interval",
        "0.2",
        "--quiet",
        "--",
        sys.executable,
        str(script),
        str(go),
        "0",
    ]
    p = _srun(cluster, cmd)
    run = job_run(client, experiment)
    tags = wait_joined(client, run.info.run_id, 2, [p])
    job_id = tags[keys.DIST_JOB].split(":")[2].split(".")[0]
    os.kill(_agent_pid(job_id, 1), signal.SIGKILL)  # task 1's agent dies before reporting
    go.touch()
    p.communicate(timeout=180)
    assert p.returncode != 0  # srun reports the killed task
    r = client.get_run(run.info.run_id)
    t, m = r.data.tags, r.data.metrics
    assert r.info.status == "FAILED" and t[keys.STATUS] == "FAILED"
    assert t[keys.DIST_MISSING] == "agent 1: joined: host localhost, rank 1, local rank 1, no report"
    rep0 = AgentReport.from_json(t[keys.dist_agent_tag(0)])
    assert m["energy_kwh"] == pytest.approx(kwh_of(rep0.energy.total_j), rel=1e-9)  # what reported
    assert len(client.search_runs([r.info.experiment_id])) == 1


@pytest.mark.slow
def test_srun_agent_0_killed_the_other_task_takes_over_and_ends_the_run(
    cluster, tracking_uri, client, experiment, tmp_path
):
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    go = tmp_path / "go"
    knobs = "ALL,WATTSUP_DIST_REPORT_S=4,WATTSUP_DIST_TAKEOVER_S=2"  # within the cluster's KillWait=5
    cmd = ["-n", "2", "-N", "1", "--export", knobs, *WATTSUP, "run", "--experiment", experiment]
    cmd += ["--interval", "0.2", "--quiet", "--", sys.executable, str(script), str(go), "0"]
    p = _srun(cluster, cmd)
    run = job_run(client, experiment)
    tags = wait_joined(client, run.info.run_id, 2, [p])
    job_id = tags[keys.DIST_JOB].split(":")[2].split(".")[0]
    os.kill(_agent_pid(job_id, 0), signal.SIGKILL)  # task 0's agent (it created the run) dies
    go.touch()
    out = p.communicate(timeout=180)
    assert p.returncode != 0, out  # srun reports the killed task
    r = client.get_run(run.info.run_id)
    t, m = r.data.tags, r.data.metrics
    assert r.info.status == "FAILED" and t[keys.STATUS] == "FAILED", out
    assert t[keys.DIST_MISSING] == "agent 0: joined: host localhost, rank 0, local rank 0, no report"
    assert t[keys.DIST_TAKEOVER].startswith("agent 1 took over")
    rep1 = AgentReport.from_json(t[keys.dist_agent_tag(1)])
    assert m["energy_kwh"] == pytest.approx(kwh_of(rep1.energy.total_j), rel=1e-9)  # what reported
    assert len(client.search_runs([r.info.experiment_id])) == 1
