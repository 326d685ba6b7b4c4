"""`mlflow run ANY_PROJECT --backend slurm` measures the entry point in the job: a project that
has never heard of wattsup gets its energy in its own run, on a real one-node SLURM cluster
(slurmctld + slurmd + munge in a temp folder) with a real `mlflow server`; a `wattsup run` inside
the entry point stays one measurement.

Skips with the reason where the cluster cannot be started (not root, SLURM not installed:
`.ci/run` installs it)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.plain_project import plain_project, seen
from support.server import MlflowServer
from support.slurm_cluster import running_cluster
from support.study import stub_project

from mlflow_wattsup.backends import slurm

BIN = Path(sys.executable).parent


def test_measurement_keys_of_the_slurm_config_are_checked_and_reach_the_jobs():
    cfg = slurm.SlurmConfig.from_dict({"region": "CA-QC", "interval-s": 2, "partition": "p", "measure": True})
    assert cfg.meter == {"region": "CA-QC", "interval_s": 2.0} and cfg.partition == "p"
    assert "--region" not in " ".join(cfg.directives(gpu=False))
    with pytest.raises(ValueError, match=r"^slurm backend config: .*Atlantis"):
        slurm.SlurmConfig.from_dict({"region": "Atlantis"})
    with pytest.raises(ValueError, match=r"^slurm backend config: measure must be true or false, got 'no'$"):
        slurm.SlurmConfig.from_dict({"measure": "no"})
    with pytest.raises(ValueError, match=r"unknown key 'regoin'; known: .*region"):
        slurm.SlurmConfig.from_dict({"regoin": "CA-QC"})


def test_a_project_task_is_measured_with_the_config_and_a_study_task_priced_by_it():
    from mlflow_wattsup.backends.common import Task

    def tasks():
        project = Task(
            "r1", "python train.py", "/p", "http://h:5000", "1", measure={}
        )  # as project_task makes
        study = Task("r2", "python -m x", "/p", "http://h:5000", "1", {"A": "1"})
        return project, study

    project, study = tasks()
    slurm.apply_measurement([project, study], slurm.SlurmConfig.from_dict({"region": "FRA", "pue": 1.3}))
    assert project.measure == {"region": "FRA", "pue": 1.3, "interval_s": 1.0} and study.measure is None
    assert study.env == {"WATTSUP_REGION": "FRA", "WATTSUP_PUE": "1.3", "A": "1"}
    assert Task.from_json(project.to_json()) == project  # through the manifest
    project, _ = tasks()
    slurm.apply_measurement([project], slurm.SlurmConfig.from_dict({"measure": False}))
    assert project.measure is None  # the wrapper then runs the command as it is


# -- a real cluster ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("slurm")) as c:
        yield c


@pytest.fixture(scope="module")
def server(tmp_path_factory, cluster):
    s = MlflowServer(tmp_path_factory.mktemp("server"))
    s.start()
    yield s.uri
    s.stop()


def _wait_job_end(client, run_id, timeout_s=180):
    """The run once its SLURM job has ended (the wrapper's last act is setting the run's status;
    an entry point's own `with mlflow.start_run()` ends the run FINISHED before that)."""
    job = client.get_run(run_id).data.tags["wattsup.slurm.job_id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = slurm.job_states(job).get(0, ("UNKNOWN",))[0].split("+")[0]
        if state in slurm.END_STATES:
            return client.get_run(run_id)
        time.sleep(0.5)
    raise AssertionError(f"job {job} of run {run_id} still {state} after {timeout_s} s")


def _submit(project, exp_id, config, *params, entry="main", cwd, env):
    e = dict(os.environ, **env)
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"  # the job inherits it: `python` is ours
    r = subprocess.run(
        [str(BIN / "mlflow"), "run", str(project), "-e", entry, "--backend", "slurm"]
        + ["--backend-config", str(config), "--env-manager", "local", "--experiment-id", exp_id]
        + [a for p in params for a in ("-P", p)],
        cwd=cwd,
        env=e,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "submitted job" in r.stderr
    return r


@pytest.mark.slow
def test_any_project_on_slurm_is_measured_once_with_its_status(server, tmp_path, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server)
    config = tmp_path / "slurm.json"
    config.write_text(json.dumps({"workdir": str(tmp_path / "slurm"), "poll_s": 0.5, "region": "CA-QC"}))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "data.csv").write_text("a,b\n")
    project = plain_project(tmp_path / "plain")
    stub = stub_project(tmp_path / "stub")
    (tmp_path / "ctrl").mkdir()
    exps = {name: client.create_experiment(f"{experiment}-{name}") for name in ("ok", "bad", "nested")}
    env = {"MLFLOW_TRACKING_URI": server, "STUB_CONTROL": str(tmp_path / "ctrl")}
    # three jobs at once: a plain project that succeeds, one that fails, and an entry point that
    # runs `wattsup run` itself (like our own projects measure themselves)
    for name, code in (("ok", 0), ("bad", 3)):
        _submit(
            project,
            exps[name],
            config,
            *("alpha=0.5", "epochs=6", "data=data.csv", "burn_s=1", f"exit_code={code}"),
            cwd=cwd,
            env={**env, "PLAIN_SEEN": str(tmp_path / f"seen-{name}.json")},
        )
    _submit(stub, exps["nested"], config, "t1=x", "sid=s1", "burn_s=1", entry="tracked", cwd=cwd, env=env)

    runs = {}
    for name, exp_id in exps.items():
        (run,) = client.search_runs([exp_id])  # no second run
        runs[name] = _wait_job_end(client, run.info.run_id)
    ok, bad, nested = runs["ok"], runs["bad"], runs["nested"]

    assert ok.info.status == "FINISHED" and ok.data.tags["wattsup.exit_code"] == "0"
    assert bad.info.status == "FAILED" and bad.data.tags["wattsup.exit_code"] == "3"
    for run in (ok, bad):
        m, tags = run.data.metrics, run.data.tags
        assert m["rmse"] == 3.0  # the project's own metric, in the same run as...
        assert m["energy_kwh"] > 0 and m["cpu_time_s"] >= 1.0  # ...our energy, of the job's entry point
        assert {tags["wattsup.source.cpu"], tags["wattsup.source.ram"]} <= {"rapl", "estimate"}
        assert tags["mlflow.project.backend"] == "slurm" and tags["wattsup.slurm.job_id"].isdigit()
        assert run.data.params["wattsup.region"] == "CA-QC"
        assert len(client.get_metric_history(run.info.run_id, "energy_kwh")) == 1
    s = seen(tmp_path / "seen-ok.json")
    assert s["MLFLOW_RUN_ID"] == ok.info.run_id == s["WATTSUP_RUN_ID"] and s["MLFLOW_TRACKING_URI"] == server
    assert s["MLFLOW_EXPERIMENT_ID"] == exps["ok"] and s["data_exists"] and Path(s["cwd"]) == project
    (model,) = client.search_logged_models(experiment_ids=[exps["ok"]])
    assert model.source_run_id == ok.info.run_id

    # the entry point's own `wattsup run` joined the job's measurement as a stage: measured once
    rid, m = nested.info.run_id, nested.data.metrics
    assert nested.info.status == "FINISHED"
    for key in ("energy_kwh", "cpu_time_s", "overhead_cpu_s"):
        assert len(client.get_metric_history(rid, key)) == 1, key
    steps = [p.step for p in client.get_metric_history(rid, "system/wattsup_power_w")]
    assert steps and len(steps) == len(set(steps))
    (stage,) = {k.split("/")[1] for k in m if k.startswith("stage/")}
    assert 1.0 <= m[f"stage/{stage}/cpu_time_s"] <= m["cpu_time_s"]
    assert nested.data.tags["wattsup.command"].startswith(f"{sys.executable} -m mlflow_wattsup run")


@pytest.mark.slow
def test_measure_false_leaves_the_measuring_to_the_entry_point(server, tmp_path, experiment):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server)
    config = tmp_path / "slurm.json"
    config.write_text(json.dumps({"workdir": str(tmp_path / "slurm"), "poll_s": 0.5, "measure": False}))
    (tmp_path / "ctrl").mkdir()
    stub = stub_project(tmp_path / "stub")
    exp_id = client.create_experiment(experiment)
    env = {"MLFLOW_TRACKING_URI": server, "STUB_CONTROL": str(tmp_path / "ctrl")}
    _submit(stub, exp_id, config, "t1=x", "sid=s1", "burn_s=1", entry="tracked", cwd=tmp_path, env=env)
    (run,) = client.search_runs([exp_id])
    run = _wait_job_end(client, run.info.run_id)
    # the entry point's `wattsup run` measured the run itself: totals, no stage of an outer one
    assert run.info.status == "FINISHED" and run.data.metrics["cpu_time_s"] >= 1.0
    assert not [k for k in run.data.metrics if k.startswith("stage/")]
