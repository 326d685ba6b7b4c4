"""SLURM's own energy accounting against a real one-node cluster WITH accounting (slurmctld, slurmd,
munge, slurmdbd and a private MariaDB, started here; never a mock of sstat or sacct).

This cluster, like most, has no energy plugin: ConsumedEnergy is 0, so a run inside a job must say
"not collected" (never log 0 J) and state the node's share rule from the job's OverSubscribe.
Skips with the reason where the cluster cannot be started (not root, packages missing:
`.ci/run` installs them)."""

import os
import subprocess
import sys
import time

import pytest
from support.slurm_cluster import running_cluster

from mlflow_wattsup.meters import slurm
from mlflow_wattsup.sink import keys


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("slurm-acct"), accounting=True) as c:
        yield c


def _submit(cluster, tmp_path, name, uri, *sbatch_args):
    script = tmp_path / f"{name}.sh"
    script.write_text(
        "#!/bin/sh\n"
        f"exec {sys.executable} -m mlflow_wattsup run --experiment {name} -- "
        f"{sys.executable} -c 'sum(range(2 * 10**7))'\n"
    )
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, WATTSUP_SPOOL_DIR=str(tmp_path / "spool"))
    env.pop("SLURM_JOB_ID", None)
    out = subprocess.run(
        ["sbatch", "--parsable", *sbatch_args, "-o", str(tmp_path / f"{name}.out"), str(script)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return out.stdout.strip().split(";")[0]


def _wait(job, timeout_s=180):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        q = subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True)
        if q.returncode == 0 and not q.stdout.strip():
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job} still queued or running after {timeout_s} s")


def test_a_run_in_a_job_without_an_energy_plugin_says_not_collected(cluster, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    jobs = {
        "shared": _submit(cluster, tmp_path, "slurm-shared", uri),
        "exclusive": _submit(cluster, tmp_path, "slurm-exclusive", uri, "--exclusive"),
    }
    for job in jobs.values():
        _wait(job)
    client = MlflowClient(uri)
    for kind, job in jobs.items():
        log = (tmp_path / f"slurm-{kind}.out").read_text()
        exp = client.get_experiment_by_name(f"slurm-{kind}")
        assert exp is not None, log
        [run] = client.search_runs([exp.experiment_id])
        m, tags = run.data.metrics, run.data.tags
        assert run.info.status == "FINISHED", log
        # read inside the running step with sstat: 0, i.e. not collected, and never logged as 0 J
        assert tags[keys.SOURCE_SLURM] == "not collected"
        assert f"step {job}.batch" in tags[keys.SLURM_ENERGY]
        assert "sstat reports ConsumedEnergyRaw=0" in tags[keys.SLURM_ENERGY]
        assert keys.SLURM_ENERGY_KWH not in m
        assert m["energy_kwh"] > 0  # our own figures are logged as always
        rule = tags[keys.SLURM_ALLOCATION]
        if kind == "exclusive":
            assert rule.startswith("exclusive (OverSubscribe=NO): the node's energy is the job's")
        else:
            assert rule.startswith("shared (OverSubscribe=OK)") and "not the job's" in rule
        assert "slurm   not collected" in log  # the printed summary says it too
        assert "SLURM's accounting: not collected" in tags["mlflow.note.content"]  # and the description
        # after the job: sstat has no running step, sacct (through slurmdbd) has its 0
        after = slurm.SlurmAccounting(f"{job}.batch").read()
        assert after.energy_j is None and after.via == "sacct"
        assert "sacct reports ConsumedEnergyRaw=0" in after.note
