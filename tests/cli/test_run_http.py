"""``wattsup run`` against a real ``mlflow server``: no MLflow (nor pandas, numpy, matplotlib)
imported, a new run and inside a run, everything written through our REST client, in few
requests. Starts a server, so it is marked ``integration``."""

import subprocess
import sys

import pytest
from support.helpers import WATTSUP
from support.import_probe import probe_env, read_probe

from mlflow_wattsup.report.links import VIEW_TAG
from mlflow_wattsup.report.notes import NOTE_TAG, note_owner
from mlflow_wattsup.sink import keys

pytestmark = pytest.mark.integration

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"


def _wattsup_run(server, tmp_path, *args, env=None):
    env, out = probe_env(tmp_path, {**(env or {}), "MLFLOW_TRACKING_URI": server.uri})
    env["WATTSUP_SPOOL_DIR"] = str(tmp_path / "spool")
    before = len(server.requests())
    r = subprocess.run(
        [*WATTSUP, "run", *args, "--", sys.executable, "-c", BURN],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    reports = read_probe(out)
    [ours] = [p for p in reports if "mlflow_wattsup" in " ".join(p["argv"]) or p["argv"][0] == "-m"]
    return ours, server.requests()[before:], r.stderr


def _clean_env():
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT"))}


def test_a_new_run_over_http_imports_no_mlflow(server, mlflow_client, tmp_path, experiment):
    # an experiment an earlier job made (marked, our runs view saved): the usual case of a study's jobs
    mlflow_client.create_experiment(
        experiment, tags={keys.EXPERIMENT_KIND_TAG: keys.EXPERIMENT_KIND, VIEW_TAG: "{}"}
    )
    probe, requests, err = _wattsup_run(server, tmp_path, "--experiment", experiment, env=_clean_env())
    assert probe["mlflow"] == [], f"MLflow imported: {probe['mlflow'][:10]}"
    assert probe["heavy"] == [], f"heavy libraries imported: {probe['heavy']}"
    [run] = mlflow_client.search_runs([mlflow_client.get_experiment_by_name(experiment).experiment_id])
    tags, metrics = run.data.tags, run.data.metrics
    assert run.info.status == "FINISHED"
    assert tags["mlflow.user"] and tags["mlflow.source.type"] == "LOCAL" and tags["mlflow.source.name"]
    assert tags["mlflow.runName"] == "python3" or tags["mlflow.runName"].startswith("python")
    assert tags[keys.CPU_MODEL] and tags[keys.VERSION]  # our plugin's machine tags, without MLflow
    assert note_owner(tags[NOTE_TAG]) == "ours" and "Energy" in tags[NOTE_TAG]
    assert metrics["energy_kwh"] > 0 and 0 < metrics[keys.OVERHEAD_CPU_S]
    # the command's 0.3 CPU-s are its own, not the wrapper's overhead
    assert metrics["cpu_time_s"] >= 0.3
    paths = [(m, p.split("?")[0]) for _, m, p, _ in requests]
    assert paths[0] == ("GET", "/api/2.0/mlflow/experiments/get-by-name")
    assert ("POST", "/api/2.0/mlflow/runs/create") in paths
    assert paths[-1] == ("POST", "/api/2.0/mlflow/runs/update")  # the status, after the description
    # lookup, create, params+tags, read back, the description with overhead_cpu_s, the status
    # (and a batch every 10 s on a slow machine)
    assert len(paths) <= 7, paths
    assert len(paths) - paths.count(("POST", "/api/2.0/mlflow/runs/log-batch")) == 4, paths


def test_inside_a_run_over_http_imports_no_mlflow(server, mlflow_client, tmp_path, experiment):
    exp = mlflow_client.create_experiment(experiment)
    run_id = mlflow_client.create_run(exp).info.run_id
    env = {**_clean_env(), "MLFLOW_RUN_ID": run_id}
    probe, requests, err = _wattsup_run(server, tmp_path, env=env)
    assert probe["mlflow"] == [], f"MLflow imported: {probe['mlflow'][:10]}"
    assert probe["heavy"] == []
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "RUNNING"  # not ours to end
    assert run.data.metrics["energy_kwh"] > 0 and keys.OVERHEAD_CPU_S in run.data.metrics
    assert note_owner(run.data.tags[NOTE_TAG]) == "ours"
    assert not any(p.startswith("/api/2.0/mlflow/runs/update") for _, _, p, _ in requests)
    assert len(requests) <= 5, requests
