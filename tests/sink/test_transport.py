"""The store's reads: the one ``search_runs`` pager and the experiment lookup by name, against a
real sqlite tracking store."""

import pytest

from mlflow_wattsup.sink.transport import Store


def test_search_runs_reads_every_page_in_order(client, experiment):
    exp = client.create_experiment(experiment)
    made = [client.create_run(exp, start_time=1000 + i, tags={"k": str(i % 2)}).info.run_id for i in range(7)]
    store = Store(client)
    oldest_first = store.search_runs([exp], order_by=["attributes.start_time ASC"], page_size=2)
    assert [r.info.run_id for r in oldest_first] == made  # 4 pages of 2, none lost or repeated
    odd = store.search_runs(iter([exp]), "tags.k = '1'", page_size=2)  # any iterable of ids
    assert sorted(r.info.run_id for r in odd) == sorted(made[1::2])
    first = store.search_runs([exp], order_by=["attributes.start_time DESC"], max_results=3, page_size=2)
    assert [r.info.run_id for r in first] == made[::-1][:3]


def test_experiment_lookup_by_name(client, experiment):
    store = Store(client)
    assert store.find_experiment(experiment) is None
    exp = client.create_experiment(experiment)
    assert store.find_experiment(experiment) == exp
    assert store.experiment_ids([experiment, "Default"]) == [exp, "0"]
    with pytest.raises(ValueError, match=f"no experiment named 'nope-{experiment}' at sqlite:"):
        store.experiment_ids([experiment, f"nope-{experiment}"])


def test_a_local_store_takes_what_the_writer_passes(client, experiment, tracking_uri):
    """sqlite through MlflowClient: rest.Metric, objects with key/value and (key, value) pairs are
    turned into MLflow's entities there, and only there."""
    from mlflow_wattsup.sink.rest import Metric

    class Tag:
        def __init__(self, key, value):
            self.key, self.value = key, value

    store = Store(tracking_uri=tracking_uri)
    assert not store.is_rest and store.requests == 0
    run_id = store.create_run({"experiment_name": experiment, "tags": {"a": "1"}})
    assert store.params(run_id) == {}
    store.log_batch(run_id, [Metric("m", 2.0, 1000, 3)], [("p", "1"), Tag("q", "2")], [Tag("t", "x")])
    store.terminate(run_id, "FINISHED", 5000)
    run = client.get_run(run_id)
    assert run.data.params == {"p": "1", "q": "2"} and run.data.tags["t"] == "x"
    [m] = client.get_metric_history(run_id, "m")
    assert (m.value, m.timestamp, m.step) == (2.0, 1000, 3)
    assert run.info.status == "FINISHED" and store.experiment_of(run_id) == run.info.experiment_id
    view = store.get_run(run_id)
    assert view.data.params == run.data.params
