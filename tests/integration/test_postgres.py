"""PostgreSQL as the tracking database: a private cluster (support.postgres) behind a real
``mlflow server``, as a lab runs it for studies."""

import sys

import pytest
from support.helpers import wattsup
from support.postgres import Postgres, mlflow_on_postgres, unavailable


@pytest.fixture(scope="module")
def pg_server(tmp_path_factory):
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    with mlflow_on_postgres(tmp_path_factory.mktemp("pg-server")) as (pg, srv):
        yield pg, srv


def test_private_cluster_starts_answers_and_stops_by_pid():
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    pg = Postgres()
    pg.start()
    pid, root = pg.pid, pg.root
    try:
        uri = pg.create_database("probe")
        assert uri == f"postgresql://{pg.user}@127.0.0.1:{pg.port}/probe"
        assert pg.psql("probe", "select 6 * 7") == "42"
    finally:
        pg.stop()
    assert not __import__("pathlib").Path(f"/proc/{pid}").exists() or (
        open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
    ), "the postmaster still runs"
    assert not root.exists()


def test_measured_run_lands_finished_with_its_metrics(pg_server, experiment, tmp_path):
    from mlflow.tracking import MlflowClient

    pg, srv = pg_server
    r = wattsup(
        "run",
        "--experiment",
        experiment,
        "--quiet",
        "--interval",
        "0.5",
        "--",
        sys.executable,
        "-c",
        "import time; t = time.process_time()\nwhile time.process_time() - t < 1.5: pass",
        env={"MLFLOW_TRACKING_URI": srv.uri, "WATTSUP_SPOOL_DIR": str(tmp_path / "spool")},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    client = MlflowClient(srv.uri)
    exp = client.get_experiment_by_name(experiment)
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    m = run.data.metrics
    assert m["cpu_time_s"] == pytest.approx(1.5, abs=0.4)
    assert m["duration_s"] >= 1.5 and m["energy_kwh"] > 0 and "carbon_g" in m
    steps = [p.step for p in client.get_metric_history(run.info.run_id, "system/wattsup_power_w")]
    assert steps and len(steps) == len(set(steps))
    assert run.data.tags["wattsup.source.cpu"] in ("rapl", "estimate")
    # it is in PostgreSQL, not in a file next to the server
    n = pg.psql(
        "mlflow", f"select count(*) from runs where run_uuid = '{run.info.run_id}' and status = 'FINISHED'"
    )
    assert n == "1"
    assert not list((tmp_path / "spool").glob("*.jsonl"))
