import time

import mlflow
import pytest

import mlflow_wattsup
from mlflow_wattsup.sink.keys import RUN_ENV


def burn(seconds):
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass


def runs_of(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def test_block_logs_totals_stages_and_user_metrics(client, experiment):
    with mlflow_wattsup.track("train", experiment=experiment, region="SE3", pue=1.58) as t:
        with t.stage("epoch 1"):
            burn(0.3)
        with t.stage("epoch 2"):
            burn(0.2)
        mlflow.log_metric("loss", 0.1)  # the user's own logging goes to the same run
    [run] = runs_of(client, experiment)
    m, p, tags = run.data.metrics, run.data.params, run.data.tags
    assert run.info.status == "FINISHED" and run.info.run_name == "train"
    assert m["loss"] == 0.1
    assert m["cpu_time_s"] >= 0.5
    assert m["stage/epoch_1/cpu_time_s"] == pytest.approx(0.3, abs=0.05)
    assert m["stage/epoch_2/duration_s"] > 0.15
    assert m["stage/epoch_1/energy_kwh"] + m["stage/epoch_2/energy_kwh"] <= m["energy_kwh"] * 1.0001
    assert p["wattsup.region"] == "SE3" and p["wattsup.pue"] == "1.58"
    assert tags["wattsup.source.carbon_intensity"].startswith("codecarbon nordic")
    assert t.totals.energy_kwh == pytest.approx(m["energy_kwh"])
    assert (
        client.get_experiment_by_name(experiment).tags["mlflow.experimentKind"] == "custom_model_development"
    )


def test_exception_logs_totals_then_reraises(client, experiment):
    with pytest.raises(ZeroDivisionError):
        with mlflow_wattsup.track(experiment=experiment):
            burn(0.1)
            _ = 1 / 0
    [run] = runs_of(client, experiment)
    assert run.info.status == "FAILED"
    assert run.data.metrics["cpu_time_s"] > 0.05 and run.data.tags["wattsup.status"] == "FAILED"


def test_keyboard_interrupt_is_killed(client, experiment):
    with pytest.raises(KeyboardInterrupt):
        with mlflow_wattsup.track(experiment=experiment):
            raise KeyboardInterrupt
    assert runs_of(client, experiment)[0].info.status == "KILLED"


def test_decorator_makes_one_run_per_call(client, experiment):
    @mlflow_wattsup.track(experiment=experiment)
    def step(x):
        burn(0.05)
        return x * 2

    assert step(2) == 4 and step(3) == 6
    runs = runs_of(client, experiment)
    assert len(runs) == 2 and {r.info.run_name for r in runs} == {"step"}


def test_attaches_to_active_run_and_leaves_it_open(client, experiment, monkeypatch):
    monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", "")  # undone at the end: set_experiment sets it
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        with mlflow_wattsup.track():
            burn(0.05)
        assert mlflow.active_run().info.run_id == run.info.run_id
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
    assert "energy_kwh" in client.get_run(run.info.run_id).data.metrics


def test_inside_wattsup_run_logs_a_stage_not_the_totals(client, experiment, monkeypatch):
    exp = client.create_experiment(experiment)
    run_id = client.create_run(exp).info.run_id
    monkeypatch.setenv(RUN_ENV, run_id)  # as wattsup run sets it for its command
    with mlflow_wattsup.track("inner", run_id=run_id) as t:
        with t.stage("fit"):
            burn(0.05)
    m = client.get_run(run_id).data.metrics
    assert "energy_kwh" not in m  # the outer wattsup run owns the totals
    assert "stage/inner/energy_kwh" in m and "stage/inner.fit/energy_kwh" in m


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_server_down_at_start_measures_anyway_and_replays(
    monkeypatch, tmp_path, experiment, client, tracking_uri
):
    """Nothing listens at the tracking URI: the block runs, results are spooled with what is
    needed to create the run later, and `wattsup flush` creates it with every value."""
    from support.helpers import wattsup

    spool = tmp_path / "spool"
    monkeypatch.setenv("WATTSUP_SPOOL_DIR", str(spool))
    down = f"http://127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with mlflow_wattsup.track("offline", experiment=experiment, tracking_uri=down) as t:
        with t.stage("work"):
            burn(0.2)
    assert time.monotonic() - t0 < 60  # fails fast: no MLflow retry storm
    assert t.totals.cpu_s > 0.15 and t.run_id is None
    [path] = list(spool.glob("*.jsonl"))
    assert path.stat().st_mode & 0o777 == 0o600
    r = wattsup("flush", "--spool-dir", str(spool), "--tracking-uri", tracking_uri)
    assert r.returncode == 0, r.stderr
    assert not list(spool.glob("*.jsonl"))
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert run.info.run_name == "offline" and run.info.status == "FINISHED"
    assert run.data.metrics["cpu_time_s"] == pytest.approx(t.totals.cpu_s)
    assert "stage/work/energy_kwh" in run.data.metrics
    again = wattsup("flush", "--spool-dir", str(spool), "--tracking-uri", tracking_uri)
    assert "nothing to replay" in again.stderr
