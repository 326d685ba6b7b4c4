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
