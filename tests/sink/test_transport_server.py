"""The store over HTTP (sink/transport.py backed by sink/rest.py) against a real ``mlflow
server``: every call the sink, the lifecycle and the report code make, read back through
MLflow's own client, with no ``MlflowClient`` made by the store. Starts a server, so it is marked
``integration``."""

import time

import pytest

from mlflow_wattsup.report.links import VIEW_TAG, ensure_runs_view
from mlflow_wattsup.report.notes import NOTE_TAG, note_owner, write_note
from mlflow_wattsup.sink import keys
from mlflow_wattsup.sink.rest import Metric
from mlflow_wattsup.sink.transport import Store, unreachable

pytestmark = pytest.mark.integration


class Tag:  # any object with key/value, as the writer may pass
    def __init__(self, key, value):
        self.key, self.value = key, value


def test_a_run_through_the_store_without_mlflow_client(server, mlflow_client, experiment):
    store = Store(tracking_uri=server.uri)
    assert store.is_rest and store._client is None
    start = int(time.time() * 1000) - 2000
    run_id = store.create_run(
        {"experiment_name": experiment, "run_name": "r1", "tags": {"a": "1"}, "start_time": start}
    )
    exp = mlflow_client.get_experiment_by_name(experiment)
    assert exp.tags[keys.EXPERIMENT_KIND_TAG] == keys.EXPERIMENT_KIND
    n = store.requests
    assert store.params(run_id) == {}  # a run we created: nothing to read back
    assert store.requests == n
    store.log_batch(
        run_id,
        [Metric("power_w", 3.0, start, 0), Metric("power_w", 4.0, start + 1000, 1)],
        [("p", "1"), Tag("q", "2")],
        [Tag("t", "x"), ("u", "y")],
    )
    ensure_runs_view(store, exp.experiment_id)
    assert write_note(store, run_id, "**hello**")
    store.terminate(run_id, "FINISHED", start + 5000)
    run = mlflow_client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.end_time == start + 5000
    assert run.data.params == {"p": "1", "q": "2"}
    assert run.data.tags["t"] == "x" and run.data.tags["u"] == "y" and run.data.tags["a"] == "1"
    assert run.data.tags["mlflow.runName"] == "r1" and note_owner(run.data.tags[NOTE_TAG]) == "ours"
    assert [m.value for m in mlflow_client.get_metric_history(run_id, "power_w")] == [3.0, 4.0]
    assert VIEW_TAG in mlflow_client.get_experiment(exp.experiment_id).tags
    assert store._client is None  # no MlflowClient was needed for any of it

    # the same run read back through the store, shaped like MLflow's
    view = store.get_run(run_id)
    assert view.info.run_id == run_id and view.info.experiment_id == exp.experiment_id
    assert view.info.status == "FINISHED" and view.data.metrics == {"power_w": 4.0}
    assert view.data.params == run.data.params and view.data.tags == run.data.tags
    assert store.experiment_of(run_id) == exp.experiment_id
    [found] = store.search_runs([exp.experiment_id], "tags.t = 'x'")
    assert found.info.run_id == run_id and found.data.tags["u"] == "y"


def test_the_run_given_is_read_once(server, mlflow_client, experiment):
    exp = mlflow_client.create_experiment(experiment)
    run_id = mlflow_client.create_run(exp).info.run_id
    mlflow_client.log_param(run_id, "mine", "7")
    store = Store(tracking_uri=server.uri)
    store.run_exists(run_id)
    n = store.requests
    assert store.params(run_id) == {"mine": "7"}  # from the read run_exists made
    assert store.requests == n
    with pytest.raises(ValueError, match="run 0123 not found at http"):
        store.run_exists("0123")


def test_text_artifacts_and_dataset_inputs(server, mlflow_client, experiment, tmp_path):
    store = Store(tracking_uri=server.uri)
    run_id = store.create_run({"experiment_name": experiment})
    store.log_text(run_id, "a,b\n1,2\n", "wattsup/table.csv")
    got = mlflow_client.download_artifacts(run_id, "wattsup/table.csv", str(tmp_path))
    assert open(got).read() == "a,b\n1,2\n"
    store.log_inputs(
        run_id,
        [
            {
                "name": "T1",
                "digest": "abc123",
                "source_type": "local",
                "source": '{"uri": "/data/T1.mgz"}',
                "tags": {"mlflow.data.context": "input"},
            }
        ],
    )
    [inp] = mlflow_client.get_run(run_id).inputs.dataset_inputs
    assert inp.dataset.name == "T1" and inp.dataset.digest == "abc123"
    assert {t.key: t.value for t in inp.tags} == {"mlflow.data.context": "input"}
    assert store._client is None


def test_a_down_server_is_unreachable_quickly(tmp_path):
    from support.server import free_port

    store = Store(tracking_uri=f"http://127.0.0.1:{free_port()}", http_timeout_s=2)
    assert not store.reachable()
    with pytest.raises(Exception) as err:
        store.create_run({"experiment_name": "x"})
    assert unreachable(err.value)
