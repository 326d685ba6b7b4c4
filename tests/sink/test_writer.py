"""The sink when the store misbehaves the way a shared server does under load (issue 20): a run
creation that times out after the server made the run, an overloaded server, a slow one, a job
whose store never answered. Against a real sqlite tracking store, made to fail by a wrapper."""

import ast
import io
import threading
import time

import pytest
from support.paths import REPO

from mlflow_wattsup.sink import keys
from mlflow_wattsup.sink.backoff import TokenBucket
from mlflow_wattsup.sink.replay import replay_spools
from mlflow_wattsup.sink.rest import Overloaded
from mlflow_wattsup.sink.spool import SpoolFile, leftover_spools, read_spool
from mlflow_wattsup.sink.transport import Store
from mlflow_wattsup.sink.writer import MlflowSink, overloaded, timed_out, with_create_token


class Flaky(Store):
    """A real store whose calls fail as told: ``fail[name]`` is a list of exceptions raised by
    the next calls of that method (after the call went through, for ``create_run`` with
    ``after=True``: the server made the run, the answer was lost)."""

    def __init__(self, client, after_create=False):
        super().__init__(client)
        self.fail: dict[str, list[Exception]] = {}
        self.after_create = after_create
        self.calls: list[str] = []

    def _maybe_fail(self, name):
        self.calls.append(name)
        if self.fail.get(name):
            raise self.fail[name].pop(0)

    def create_run(self, create):
        if self.after_create and self.fail.get("create_run"):
            self.calls.append("create_run")
            super().create_run(create)  # the server made it ...
            raise self.fail["create_run"].pop(0)  # ... and the answer never came
        self._maybe_fail("create_run")
        return super().create_run(create)

    def log_batch(self, run_id, metrics, params, tags):
        self._maybe_fail("log_batch")
        super().log_batch(run_id, metrics, params, tags)

    def terminate(self, run_id, status, end_time_ms):
        self._maybe_fail("terminate")
        super().terminate(run_id, status, end_time_ms)


def _runs(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id]) if exp else []


def _timeout():
    return TimeoutError("HTTPConnectionPool(host='127.0.0.1', port=5000): Read timed out. (read timeout=15)")


# -- idempotent run creation -------------------------------------------------------------------


def test_a_creation_that_timed_out_after_the_server_made_the_run_is_adopted(client, experiment):
    store = Flaky(client, after_create=True)
    store.fail["create_run"] = [_timeout()]
    sink = MlflowSink(
        None,
        store,
        create={"experiment_name": experiment, "run_name": "job", "tags": {}},
        flush_interval_s=0,
        echo=None,
        create_settle_s=0,
    )
    sink.log_metrics({"power_w": 3.0}, step=0)
    assert not sink.flush()  # the creation timed out
    sink.log_metrics({"power_w": 4.0}, step=1)
    sink.terminate("FINISHED")
    assert sink.close(wait_s=5)
    [run] = _runs(client, experiment)  # one run, not one per attempt
    assert run.info.run_id == sink.run_id and run.info.status == "FINISHED"
    assert run.data.tags[keys.CREATE_TOKEN] == sink._create["tags"][keys.CREATE_TOKEN]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "power_w")] == [0, 1]
    assert store.calls.count("create_run") == 1


def test_a_creation_that_timed_out_is_not_looked_up_before_the_server_could_finish_it(client, experiment):
    store = Flaky(client, after_create=True)
    store.fail["create_run"] = [_timeout()]
    sink = MlflowSink(
        None,
        store,
        create={"experiment_name": experiment},
        flush_interval_s=0,
        echo=None,
        create_settle_s=3600,
    )
    sink.log_metrics({"power_w": 3.0})
    assert not sink.flush()
    requests = sink.requests
    assert not sink.flush()  # still settling: no look-up, no second creation
    assert sink.requests == requests and store.calls.count("create_run") == 1
    sink._settle_until = 0.0  # the settle time is over
    assert sink.flush()
    assert len(_runs(client, experiment)) == 1
    sink.close()


def test_a_refused_creation_is_simply_sent_again(client, experiment):
    store = Flaky(client)
    store.fail["create_run"] = [ConnectionRefusedError("[Errno 111] Connection refused")]
    sink = MlflowSink(None, store, create={"experiment_name": experiment}, flush_interval_s=0, echo=None)
    sink.log_metrics({"power_w": 3.0})
    assert not sink.flush()
    assert sink.flush()  # no settle wait and no look-up: the server never had it
    assert sink.requests == 3  # create (refused), create, log-batch
    assert len(_runs(client, experiment)) == 1
    sink.close()


def test_replaying_a_spool_whose_creation_reached_the_server_adopts_that_run(client, experiment, tmp_path):
    """The job's creation timed out and the job died before it knew: its spool holds the creation
    (with its token) and the values; the replay finds the run instead of making a second."""
    store = Flaky(client)
    create = with_create_token({"experiment_name": experiment, "run_name": "job", "tags": {}})
    made = store.create_run(create)
    spool = tmp_path / "spool"
    f = SpoolFile(spool, None)
    f.append(
        {"run_id": None, "tracking_uri": store.uri, "create": create},
        [
            {"k": "metric", "key": "power_w", "value": 2.5, "timestamp": 1000, "step": 0},
            {"k": "status", "value": "FINISHED", "end_time": 2000},
        ],
    )
    f.close()
    assert replay_spools(spool, echo=io.StringIO(), stores=lambda uri: store) == (1, 0)
    [run] = _runs(client, experiment)
    assert run.info.run_id == made and run.info.status == "FINISHED"
    assert run.data.metrics["power_w"] == 2.5
    assert not leftover_spools(spool)


def test_a_token_given_by_the_caller_is_kept_and_looked_up_first(client, experiment):
    """Who sends a creation itself before handing it to a sink (the job's start) adds the token
    first: the sink then finds that run should the first attempt have reached the server."""
    store = Flaky(client)
    create = with_create_token({"experiment_name": experiment, "tags": {"a": "b"}})
    assert with_create_token(create) == create  # kept
    made = store.create_run(create)  # its answer "timed out" at the caller
    sink = MlflowSink(None, store, create=create, flush_interval_s=0, echo=None)
    sink.log_metrics({"power_w": 1.0})
    assert sink.close()
    assert sink.run_id == made and len(_runs(client, experiment)) == 1
    assert "create_run" not in store.calls[1:]


def test_a_callers_timed_out_creation_is_given_time_before_it_is_looked_up(client, experiment):
    store = Flaky(client)
    create = with_create_token({"experiment_name": experiment})
    made = store.create_run(create)  # the caller's attempt: made, but the caller saw a timeout
    sink = MlflowSink(
        None,
        store,
        create=create,
        flush_interval_s=0,
        echo=None,
        create_settle_s=3600,
        create_timed_out_at=time.monotonic(),
    )
    sink.log_metrics({"power_w": 1.0})
    assert not sink.flush() and sink.requests == 0  # not yet: the server may still be at it
    sink._settle_until = 0.0
    assert sink.flush() and sink.run_id == made
    assert len(_runs(client, experiment)) == 1
    sink.close()


# -- back-off and the overloaded server --------------------------------------------------------


def test_an_overloaded_server_gets_its_own_notice_and_its_retry_after(client, experiment):
    run_id = client.create_run(client.create_experiment(experiment)).info.run_id
    store = Flaky(client)
    store.fail["log_batch"] = [
        Overloaded("runs/log-batch: HTTP 503 Service Unavailable", status=503, retry_after_s=5.0),
        Overloaded("runs/log-batch: HTTP 503 Service Unavailable", status=503, retry_after_s=5.0),
    ]
    echo = io.StringIO()
    sink = MlflowSink(run_id, store, flush_interval_s=0, echo=echo)
    sink.log_metrics({"power_w": 1.0})
    assert not sink.flush()
    assert 5.0 <= sink.retry_in_s <= 20.0  # the server's Retry-After is a floor
    assert not sink.flush()
    lines = echo.getvalue().splitlines()
    assert len(lines) == 1, lines  # said once
    assert lines[0].startswith("wattsup: tracking server overloaded (HTTP 503), retrying in ")
    assert f"values kept in {sink._spool.path}" in lines[0]
    assert read_spool(sink._spool.path)[1][0][1].key == "power_w"
    assert sink.flush() and client.get_run(run_id).data.metrics["power_w"] == 1.0
    assert "tracking store back" in echo.getvalue()
    sink.close()


def test_retries_are_jittered_not_a_fixed_schedule(client, experiment):
    """Jobs that saw the same outage must not come back at the same instants."""
    run_id = client.create_run(client.create_experiment(experiment)).info.run_id
    delays = set()
    for _ in range(5):
        store = Flaky(client)
        store.fail["log_batch"] = [ConnectionRefusedError("Connection refused")] * 4
        sink = MlflowSink(run_id, store, flush_interval_s=0, echo=None, spool=False)
        sink.log_metrics({"power_w": 1.0})
        for attempt in range(4):
            assert not sink.flush()
            assert 0.0 <= sink.retry_in_s <= min(8.0, 0.5 * 2**attempt)
            delays.add(round(sink.retry_in_s, 6))
        sink.flush()
    assert len(delays) > 10  # 20 draws of a continuous distribution


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (Overloaded("x", status=429), "HTTP 429"),
        (Overloaded("x", status=400), "HTTP 400: database connection pool exhausted"),
        (
            Exception(
                "BAD_REQUEST: (sqlalchemy.exc.TimeoutError) QueuePool limit of size 5 overflow 10 reached, "
                "connection timed out, timeout 30.00"
            ),
            "HTTP 400: database connection pool exhausted",
        ),
        (
            Exception(
                "API request to endpoint /api/2.0/mlflow/runs/log-batch failed with error code 503 != 200"
            ),
            "HTTP 503",
        ),
        (
            Exception(
                "Max retries exceeded with url: /api/2.0/mlflow/runs/create (too many 503 error responses)"
            ),
            "HTTP 503",
        ),
        (ConnectionRefusedError("Connection refused"), None),
        (Exception("RESOURCE_DOES_NOT_EXIST: Run with id=503 not found"), None),
    ],
)
def test_overloaded_is_told_from_the_error(error, said):
    assert overloaded(error) == said


def test_a_server_killed_while_answering_is_unreachable_not_an_error():
    """Found by the load test: a job starting while the server was killed got this and exited 1."""
    from mlflow_wattsup.sink.transport import unreachable

    assert unreachable(
        Exception(
            "API request to http://127.0.0.1:33493/api/2.0/mlflow/experiments/get-by-name failed with exception "
            "('Connection broken: IncompleteRead(0 bytes read, 442 more expected)', IncompleteRead(0 bytes read, "
            "442 more expected))"
        )
    )


def test_a_timeout_is_told_from_a_refusal():
    assert timed_out(_timeout()) and not timed_out(ConnectionRefusedError("Connection refused"))


# -- closing -----------------------------------------------------------------------------------


def test_closing_waits_for_a_store_that_was_only_slow(client, experiment):
    """A server that never answered in time is there (overloaded): closing waits the full close
    wait for it, not the few seconds it gives a store that was never there."""
    run_id = client.create_run(client.create_experiment(experiment)).info.run_id
    store = Flaky(client)
    store.fail["log_batch"] = [_timeout()] * 3
    sink = MlflowSink(run_id, store, flush_interval_s=0, echo=None, max_backoff_s=0.1)
    sink.log_metrics({"power_w": 1.0})
    sink.terminate("FINISHED")
    assert sink.close(unreachable_s=0.0, wait_s=60)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["power_w"] == 1.0
    assert not list(sink._spool.path.parent.glob("*.jsonl"))


def test_a_store_that_never_answered_leaves_a_spool_the_next_command_replays(client, experiment, tmp_path):
    store = Flaky(client)
    store.fail["create_run"] = [ConnectionRefusedError("[Errno 111] Connection refused")] * 100
    echo = io.StringIO()
    sink = MlflowSink(None, store, create={"experiment_name": experiment}, flush_interval_s=0, echo=echo)
    sink.log_metrics({"power_w": 1.0}, step=0)
    sink.log_params({"p": "v"})
    sink.terminate("FINISHED")
    assert not sink.close(unreachable_s=0.2, wait_s=60)
    assert "could not reach" in echo.getvalue() and "wattsup flush" in echo.getvalue()
    [left] = leftover_spools(sink._spool.path.parent)
    store.fail.clear()
    assert replay_spools(left.parent, echo=io.StringIO(), stores=lambda uri: store) == (1, 0)
    [run] = _runs(client, experiment)
    assert run.info.status == "FINISHED" and run.data.params == {"p": "v"}
    assert run.data.metrics["power_w"] == 1.0


# -- the request budget ------------------------------------------------------------------------


def test_requests_are_paced_by_the_token_bucket(client, experiment):
    run_id = client.create_run(client.create_experiment(experiment)).info.run_id
    now = [0.0]
    slept = []

    def sleep(s):
        slept.append(s)
        now[0] += s

    bucket = TokenBucket(rate_per_min=60, burst=2, clock=lambda: now[0], sleep=sleep)
    sink = MlflowSink(run_id, Flaky(client), flush_interval_s=0, echo=None, limiter=bucket)
    for step in range(3):
        sink.log_metrics({"power_w": 1.0}, step=step)
        assert sink.flush()
    assert sink.requests == 3 and slept == [pytest.approx(1.0)]  # the third waited a second
    sink.close()


def test_a_bad_request_budget_is_said_in_one_line_and_the_default_used(client, experiment, monkeypatch):
    monkeypatch.setenv("WATTSUP_MAX_REQUESTS_PER_MIN", "lots")
    run_id = client.create_run(client.create_experiment(experiment)).info.run_id
    echo = io.StringIO()
    sink = MlflowSink(run_id, Flaky(client), flush_interval_s=0, echo=echo)
    assert echo.getvalue().count("\n") == 1 and "WATTSUP_MAX_REQUESTS_PER_MIN='lots'" in echo.getvalue()
    assert sink.limiter.rate_per_s == pytest.approx(2.0)
    sink.close()


# -- spooling from two threads ---------------------------------------------------------------


def test_values_spooled_from_two_threads_are_all_in_the_file_in_queue_order(client, experiment):
    run_id = client.create_run(client.create_experiment(experiment)).info.run_id
    store = Flaky(client)
    store.fail["log_batch"] = [ConnectionRefusedError("Connection refused")] * 10_000
    sink = MlflowSink(run_id, store, flush_interval_s=0, echo=None)
    sink.log_metrics({"power_w": 0.0}, step=0)
    assert not sink.flush()  # offline: from now on every value is spooled at once
    done = threading.Event()

    def writer():
        while not done.is_set():
            sink._spool_pending()

    t = threading.Thread(target=writer)
    t.start()
    for step in range(1, 400):
        sink.log_metrics({"power_w": float(step)}, step=step)
    done.set()
    t.join()
    sink._spool_pending()
    steps = [e.step for kind, e in read_spool(sink._spool.path)[1] if kind == "metric"]
    assert steps == list(range(400))
    sink._spool.close()


# -- no MLflow ---------------------------------------------------------------------------------


def test_writer_spool_and_replay_import_no_mlflow():
    """Over HTTP a job's sink must not import MLflow: only replay's ``store_for`` (the store of a
    URI, until transport opens one without MLflow) may."""
    for name in ("writer", "spool", "replay", "backoff"):
        tree = ast.parse((REPO / "mlflow_wattsup" / "sink" / f"{name}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "store_for":
                node.body = []
        found = [
            n.module if isinstance(n, ast.ImportFrom) else a.name
            for n in ast.walk(tree)
            if isinstance(n, (ast.Import, ast.ImportFrom))
            for a in n.names
            if (n.module if isinstance(n, ast.ImportFrom) else a.name).split(".")[0] == "mlflow"
        ]
        assert not found, f"sink/{name}.py imports {found}"
