"""The SLURM job wrapper (backends/job.py) against a real ``mlflow server``: a study's task and a
measured task, neither importing MLflow (nor pandas, numpy, matplotlib). Starts a server, so it
is marked ``integration``; no SLURM needed (the wrapper reads the manifest and runs the task)."""

import subprocess
import sys

import pytest
from support.import_probe import probe_env, read_probe

from mlflow_wattsup.backends.common import Task
from mlflow_wattsup.sink import keys

pytestmark = pytest.mark.integration


def _run_job(server, client, tmp_path, experiment, measure, command="exit 3"):
    exp = client.create_experiment(experiment)
    run_id = client.create_run(exp).info.run_id
    client.update_run(run_id, status="SCHEDULED")
    task = Task(run_id, command, str(tmp_path), server.uri, exp, measure=measure)
    manifest = tmp_path / "tasks.jsonl"
    manifest.write_text(task.to_json() + "\n")
    env, out = probe_env(tmp_path)
    env.update(WATTSUP_SPOOL_DIR=str(tmp_path / "spool"), SLURM_JOB_ID="4242")
    env.pop("MLFLOW_TRACKING_URI", None)
    r = subprocess.run(
        [sys.executable, "-m", "mlflow_wattsup.backends.job", str(manifest), "0"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 3, r.stderr
    [probe] = [p for p in read_probe(out) if p["argv"][0].endswith("job.py")]
    return probe, client.get_run(run_id), r.stderr


def test_a_study_task_sets_its_run_without_mlflow(server, mlflow_client, tmp_path, experiment):
    probe, run, err = _run_job(server, mlflow_client, tmp_path, experiment, measure=None)
    assert probe["mlflow"] == [] and probe["heavy"] == [], probe
    assert run.info.status == "FAILED" and run.data.tags[keys.EXIT_CODE] == "3"
    assert run.data.tags[keys.SLURM_JOB_ID] == "4242" and run.info.end_time


def test_a_measured_task_imports_no_mlflow(server, mlflow_client, tmp_path, experiment):
    probe, run, err = _run_job(server, mlflow_client, tmp_path, experiment, measure={"carbon_intensity": 100})
    assert probe["mlflow"] == [], f"MLflow imported: {probe['mlflow'][:10]}"
    assert probe["heavy"] == [], probe["heavy"]
    assert run.info.status == "FAILED" and run.data.tags[keys.EXIT_CODE] == "3"
    assert "energy_kwh" in run.data.metrics and keys.OVERHEAD_CPU_S in run.data.metrics
    assert run.data.tags.get("mlflow.note.content")
