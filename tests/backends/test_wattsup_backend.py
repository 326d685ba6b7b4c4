"""`mlflow run ANY_PROJECT --backend wattsup`: a project that has never heard of wattsup, run
through the real `mlflow` command against a real sqlite store, measured into its own run."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.contract import documented, undocumented
from support.paths import REPO
from support.plain_project import plain_project, seen

from mlflow_wattsup.backends.measured import MeterSettings
from mlflow_wattsup.backends.wattsup import FinishedRun, check_config

BIN = Path(sys.executable).parent


def mlflow_run(project, *args, cwd, env=None, timeout=300):
    """``mlflow run PROJECT --backend wattsup ARGS`` as a user types it, with this venv first on
    PATH (``python`` in the MLproject is ours)."""
    e = dict(os.environ)
    e.update(env or {})
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    cmd = [str(BIN / "mlflow"), "run", str(project), "--backend", "wattsup", *args]
    return subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)


def runs_of(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


@pytest.fixture
def plain(tmp_path):
    project = plain_project(tmp_path / "plain")
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "data.csv").write_text("x,y\n1,2\n")  # a `path` parameter: resolved against mlflow run's folder
    return {"project": project, "cwd": cwd, "seen": tmp_path / "seen.json"}


# -- the backend config ---------------------------------------------------------------------------


def test_backend_config_keys_are_checked_naming_the_bad_key():
    s = check_config(
        {"region": "CA-QC", "pue": "1.2", "interval-s": 0.5, "ENV_MANAGER": "local", "build_image": False}
    )
    assert (s.region, s.pue, s.interval_s) == ("CA-QC", 1.2, 0.5)
    assert s.env() == {"WATTSUP_REGION": "CA-QC", "WATTSUP_PUE": "1.2"}
    with pytest.raises(ValueError, match=r"^wattsup backend config: unknown key 'regoin'; known: region, "):
        check_config({"regoin": "CA-QC"})
    with pytest.raises(
        ValueError, match=r"^wattsup backend config: interval_s must be a number > 0, got 'fast'$"
    ):
        check_config({"interval_s": "fast"})
    with pytest.raises(ValueError, match=r"^wattsup backend config: .*PUE"):
        check_config({"pue": 0.5})
    with pytest.raises(ValueError, match=r"^wattsup backend config: .*Atlantis"):
        check_config({"region": "Atlantis"})
    assert MeterSettings.from_dict(s.to_dict()) == s  # what a SLURM task's manifest carries


def test_a_finished_run_object_is_what_mlflow_waits_on():
    from mlflow.entities import RunStatus

    ok, bad = FinishedRun("r1", "FINISHED", 0), FinishedRun("r2", "FAILED", 3)
    assert ok.wait() and not bad.wait() and ok.run_id == "r1"
    assert RunStatus.to_string(bad.get_status()) == "FAILED"


# -- mlflow run --backend wattsup -----------------------------------------------------------------


@pytest.mark.slow
def test_a_plain_project_is_measured_into_its_one_run(plain, tracking_db, client, experiment, tmp_path):
    config = tmp_path / "wattsup.json"
    config.write_text(json.dumps({"region": "CA-QC", "pue": 1.2}))  # a JSON file path, as MLflow allows
    r = mlflow_run(
        plain["project"],
        *("--env-manager", "local", "--experiment-name", experiment, "--backend-config", str(config)),
        *("-P", "alpha=0.25", "-P", "epochs=8", "-P", "data=data.csv", "-P", "burn_s=1.5"),
        cwd=plain["cwd"],
        env={"MLFLOW_TRACKING_URI": tracking_db, "PLAIN_SEEN": str(plain["seen"])},
    )
    assert r.returncode == 0, r.stderr
    (run,) = runs_of(client, experiment)  # the project's own logging joined the measured run
    # the run has ended when the `mlflow run` process has: the CLI returned after the run, not before
    assert run.info.status == "FINISHED"
    m, tags, params = run.data.metrics, run.data.tags, run.data.params
    assert m["rmse"] == 2.0  # the project's own metric: alpha x epochs, typed parameters
    assert m["energy_kwh"] > 0 and m["cpu_time_s"] >= 1.5  # ...and our energy, of the entry point's burn
    assert {tags["wattsup.source.cpu"], tags["wattsup.source.ram"]} <= {"rapl", "estimate"}
    assert (
        tags["wattsup.source.gpu"]
        and tags["wattsup.exit_code"] == "0"
        and tags["wattsup.status"] == "FINISHED"
    )
    assert params["wattsup.region"] == "CA-QC" and params["wattsup.pue"] == "1.2"
    assert tags["mlflow.project.backend"] == "wattsup" and tags["mlflow.project.entryPoint"] == "main"
    assert params["alpha"] == "0.25" and params["epochs"] == "8"  # MLflow's own project params
    own = {"rmse", "alpha", "epochs", "name", "data", "burn_s", "exit_code"}  # the project's keys
    assert undocumented((set(m) | set(params) | set(tags)) - own, documented()) == []  # ours: in metrics.md
    (model,) = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    assert model.source_run_id == run.info.run_id
    # what MLflow gives an entry point, and our marker
    s = seen(plain["seen"])
    assert s["MLFLOW_RUN_ID"] == run.info.run_id == s["WATTSUP_RUN_ID"]
    assert s["MLFLOW_EXPERIMENT_ID"] == run.info.experiment_id and s["MLFLOW_TRACKING_URI"] == tracking_db
    assert Path(s["cwd"]) == plain["project"]
    data = s["argv"][s["argv"].index("--data") + 1]
    assert Path(data) == plain["cwd"] / "data.csv" and s["data_text"] == "x,y\n1,2\n"
    # the user saw the command's output, then the run's end, before the prompt came back
    assert "train.py: done" in r.stdout
    err = r.stderr.splitlines()
    (start,) = [
        i for i, ln in enumerate(err) if ln.startswith(f"wattsup: run {run.info.run_id}: python train.py")
    ]
    (end,) = [i for i, ln in enumerate(err) if ln.startswith("wattsup: FINISHED in ")]
    assert start < end and "exit code 0" in err[end] and "CA-QC" in r.stderr


@pytest.mark.slow
def test_a_failing_entry_point_ends_failed_and_mlflow_run_exits_with_its_code(
    plain, tracking_db, client, experiment
):
    r = mlflow_run(
        plain["project"],
        *("--env-manager", "local", "--experiment-name", experiment, "--run-name", "bad"),
        *("-P", "exit_code=3", "-P", "data=data.csv"),
        cwd=plain["cwd"],
        env={"MLFLOW_TRACKING_URI": tracking_db, "PLAIN_SEEN": str(plain["seen"])},
    )
    assert r.returncode == 3, r.stderr
    (run,) = runs_of(client, experiment)
    assert run.info.status == "FAILED" and run.data.tags["wattsup.exit_code"] == "3"
    assert run.info.run_name == "bad" and run.data.tags["mlflow.project.backend"] == "wattsup"
    assert run.data.metrics["rmse"] == 1.5 and run.data.metrics["energy_kwh"] > 0
    assert "wattsup: FAILED in " in r.stderr and "exit code 3" in r.stderr
    assert "train.py: done" in r.stdout and "Traceback" not in r.stderr


@pytest.mark.slow
def test_refusals_are_one_line_and_leave_no_running_run(plain, tracking_db, client, experiment, tmp_path):
    env = {"MLFLOW_TRACKING_URI": tracking_db, "PLAIN_SEEN": str(plain["seen"])}
    common = ("--experiment-name", experiment, "-P", "data=data.csv")

    def refused(*args, project=plain["project"], env_extra=None):
        r = mlflow_run(project, *common, *args, cwd=plain["cwd"], env={**env, **(env_extra or {})})
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr
        (line,) = [ln for ln in r.stderr.splitlines() if "wattsup backend" in ln]
        return line

    line = refused("--env-manager", "local", "--backend-config", '{"regoin": "CA-QC"}')
    assert "unknown key 'regoin'" in line
    line = refused("--env-manager", "uv", env_extra={"PATH": f"{BIN}:/usr/bin:/bin"})
    assert "needs uv" in line and "--env-manager local" in line
    conda = plain_project(tmp_path / "conda")
    (conda / "conda.yaml").write_text("name: c\ndependencies: [python=3.11]\n")  # MLflow picks conda for it
    line = refused(project=conda, env_extra={"PATH": f"{BIN}:/usr/bin:/bin", "MLFLOW_CONDA_HOME": ""})
    assert "needs conda" in line and "MLflow's default for this project (conda)" in line
    assert runs_of(client, experiment) == []  # refused before a run existed
    # preparing fails after the run was created (a `path` parameter MLflow cannot download here):
    # the run ends FAILED, never RUNNING
    r = mlflow_run(
        plain["project"],
        *("--env-manager", "local", "--experiment-name", experiment, "-P", "data=gs://no-such-bucket/d.csv"),
        cwd=plain["cwd"],
        env=env,
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    (line,) = [ln for ln in r.stderr.splitlines() if "could not be prepared" in ln]
    (run,) = runs_of(client, experiment)
    assert run.info.status == "FAILED" and run.info.run_id in line


@pytest.mark.slow
def test_the_python_api_waits_and_raises_like_the_local_backend(plain, tracking_db, client):
    # in a child process: the measured command makes its caller a subreaper, not to be done to pytest
    script = f"""
import mlflow
from mlflow.exceptions import ExecutionException
mlflow.set_tracking_uri({tracking_db!r})
try:
    mlflow.projects.run({str(plain["project"])!r}, backend="wattsup", env_manager="local", experiment_name="api",
                        parameters={{"data": "data.csv", "exit_code": 4}})
except ExecutionException as exc:
    print("raised:", exc)
"""
    e = dict(os.environ, PLAIN_SEEN=str(plain["seen"]), PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    r = subprocess.run(
        [sys.executable, "-c", script], cwd=plain["cwd"], env=e, capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    run_id = r.stdout.split("raised: Run (ID '")[1].split("'")[0]  # waited, then raised as for local
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["wattsup.exit_code"] == "4"


@pytest.mark.slow
def test_our_segmentation_project_is_measured_once(tmp_path, tracking_db, client, experiment):
    """projects/segmentation measures itself (track()); under the backend it joins the backend's
    measurement as a stage: one set of totals, one power series, its own tags and Dice kept."""
    r = mlflow_run(
        REPO / "projects" / "segmentation",
        *("-e", "classical", "--env-manager", "local", "--experiment-name", experiment),
        *("--backend-config", '{"region": "FRA"}'),
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": tracking_db},
        timeout=600,
    )
    assert r.returncode == 0, r.stderr
    (run,) = runs_of(client, experiment)
    rid, m, tags = run.info.run_id, run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    for key in ("energy_kwh", "cpu_time_s", "carbon_g", "overhead_cpu_s", "tracker_cpu_s"):
        assert len(client.get_metric_history(rid, key)) == 1, key  # one measurement wrote it, once
    steps = [p.step for p in client.get_metric_history(rid, "system/wattsup_power_w")]
    assert steps and len(steps) == len(set(steps))  # one sampler's series, not two interleaved
    # the project's own measurement is a stage of ours, never more than the whole
    assert 0 < m["stage/python/energy_kwh"] <= m["energy_kwh"]
    assert m["stage/python.segmentation/energy_kwh"] <= m["stage/python/energy_kwh"]
    assert tags["wattsup.pipeline"] == "gmm-classical" and tags["wattsup.dataset"].startswith("mni152")
    assert tags["wattsup.command"].startswith("python -m mlflow_wattsup.projects.segmentation classical")
    assert run.data.params["wattsup.region"] == "FRA" and 0 < m["dice_mean"] <= 1
    # the stage was priced like the run: the backend's region reached the project as WATTSUP_REGION
    ratio = m["carbon_g"] / m["energy_kwh"]
    assert m["stage/python/carbon_g"] / m["stage/python/energy_kwh"] == pytest.approx(ratio, rel=1e-6)
