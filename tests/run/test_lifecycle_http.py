"""The run lifecycle over HTTP (our REST client): a run whose creation was deferred (server down
at the start) is created and described at the end once the server answers. Starts a server, so
it is marked ``integration``."""

import pytest
from support.server import MlflowServer, free_port

from mlflow_wattsup.report.notes import NOTE_TAG, note_owner
from mlflow_wattsup.run.lifecycle import TrackedRun
from mlflow_wattsup.sink import keys

pytestmark = pytest.mark.integration


def test_a_deferred_run_is_created_and_described_when_the_server_answers(tmp_path, experiment, monkeypatch):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("WATTSUP_SPOOL_DIR", str(tmp_path / "spool"))
    srv = MlflowServer(tmp_path / "srv", port=free_port())
    run = TrackedRun(
        tracking_uri=srv.uri, experiment=experiment, run_name="late", echo=None, flush_interval_s=0
    )
    assert run.run_id is None and run.store.is_rest  # deferred: the server is not there yet
    run.sink.log_metrics({"energy_kwh": 0.5, "duration_s": 3.0})
    run.sink.set_tags({keys.SOURCE_PREFIX + "cpu": "estimate"})
    srv.start()
    try:
        logged = []
        run.finish(
            "FINISHED", 0, last=lambda: logged.append(run.sink.log_metrics({keys.OVERHEAD_CPU_S: 0.1}))
        )
        assert run.run_id is not None and logged
        got = MlflowClient(srv.uri).get_run(run.run_id)
        assert got.info.status == "FINISHED" and got.data.tags["mlflow.runName"] == "late"
        assert note_owner(got.data.tags[NOTE_TAG]) == "ours" and "estimated" in got.data.tags[NOTE_TAG]
        assert got.data.metrics[keys.OVERHEAD_CPU_S] == 0.1
        assert not list((tmp_path / "spool").glob("*.jsonl"))
    finally:
        srv.stop()
