"""The one object that writes to MLflow: a queue, a writer thread, and the spool behind them.

Every metric, param and tag we log goes through :class:`MlflowSink`, which queues them and writes
with ``log_batch`` (on sqlite, 10,000 single ``log_metric`` calls take minutes, one batch under two
seconds), chunked to MLflow's limits (1,000 metrics, 100 params/tags, 1,000 entities per call).
Nothing here imports MLflow: metrics are :class:`.rest.Metric`, params and tags
:class:`.spool.KeyValue`; the limits are :mod:`.rest`'s.

Outages never block or fail the tracked work, and hundreds of jobs sharing one server do not
storm it when it comes back:

* A writer thread flushes the queue every ``flush_interval_s``. A write that fails (server down,
  overloaded, database locked) leaves the queue as it was, *in order*; the queue is appended to a
  spool file (:mod:`.spool`) and retried after a jittered exponential back-off
  (:func:`.backoff.backoff_delay_s`: uniform in ``[0, min(max_backoff_s, 0.5 s * 2**n)]``, 8 s at
  most by default, never less than a server's ``Retry-After``), so a server that restarts during
  a job is found again within seconds and the jobs that saw the outage come back spread out,
  not all at once. While offline, every new value goes to the spool file at once, so a crash
  loses nothing.
* A server that answers 429/503 (or MLflow's 400 for an exhausted database connection pool) is
  overloaded, not gone: one line says so (``tracking server overloaded (HTTP 503), retrying in N
  s; values kept in SPOOL``), distinct from the line for an unreachable store.
* Every store request of a sink takes a token of a :class:`.backoff.TokenBucket`
  (``$WATTSUP_MAX_REQUESTS_PER_MIN``, 120 a minute, 30 at once): steady logging never meets it; a
  long replay is paced by it.
* Every store call goes through :class:`.transport.Store`, which fails fast against an HTTP
  server (one attempt, ``http_timeout_s``): our own back-off and spool take over.
* Closing waits for a store that took writes, answered with an error or was slow earlier in the
  job (a server restarting or overloaded: by default up to ``close_wait_s`` = 60 s, env
  ``WATTSUP_CLOSE_WAIT_S``) and only briefly for one that never answered; what is left stays in
  the spool and the next ``wattsup`` command replays it.
* The run itself may be created late: a sink can start with ``create=`` instead of a run id
  (the server was down when the job started); the run is created at the first successful write,
  and the spool file records it so a replay never creates it twice. A creation carries a token
  (tag ``wattsup.create_token``, in the spool file with the rest of the creation): a creation
  that failed in a way that may have reached the server (a timeout), or one read back from a
  spool, is looked up by its token first and the run found is adopted; after a timeout the look-up
  waits ``create_settle_s`` (45 s) for the server to finish what it may still be doing.
* The terminal status (``terminate()``) is queued like any value and replayed in order.

Replays are idempotent: MLflow drops a metric value identical in key, step, timestamp and value to
one it has, params already present with the same value are skipped, tags are overwritten with the
same value.
"""

from __future__ import annotations

import math
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from mlflow_wattsup.sink import keys
from mlflow_wattsup.sink.backoff import (
    BURST,
    CAP_S,
    RATE_PER_MIN,
    TokenBucket,
    backoff_delay_s,
    rate_from_env,
)
from mlflow_wattsup.sink.rest import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
    Metric,
    Overloaded,
)
from mlflow_wattsup.sink.spool import KeyValue, SpoolFile, entity_json, spool_dir
from mlflow_wattsup.sink.transport import now_ms, unreachable

if TYPE_CHECKING:
    from mlflow_wattsup.sink.transport import Store

CLOSE_WAIT_ENV = "WATTSUP_CLOSE_WAIT_S"
CLOSE_WAIT_S = 60.0
#: after a run creation timed out, how long to let the server finish it before looking it up (an
#: MLflow server waits up to 30 s for a database connection before it answers)
CREATE_SETTLE_S = 45.0


def close_wait_s() -> float:
    """How long closing waits for a store that answered earlier in the job (``$WATTSUP_CLOSE_WAIT_S``)."""
    try:
        return max(0.0, float(os.environ.get(CLOSE_WAIT_ENV, CLOSE_WAIT_S)))
    except ValueError:
        return CLOSE_WAIT_S


_STATUS_IN_TEXT = re.compile(r"(?:code|HTTP|status)\W{0,3}(429|503)\b|\b(429|503) error response")


def overloaded(exc: BaseException) -> str | None:
    """How the server said it is overloaded (``"HTTP 503"``, ``"HTTP 400: database connection pool
    exhausted"``), or None when ``exc`` is not that. Knows :class:`.rest.Overloaded` and the text
    of MLflow's client errors."""
    if isinstance(exc, Overloaded):
        if exc.status in (429, 503):
            return f"HTTP {exc.status}"
        return f"HTTP {exc.status or 400}: database connection pool exhausted"
    text = f"{type(exc).__name__}: {exc}"
    if "QueuePool limit" in text:
        return "HTTP 400: database connection pool exhausted"
    m = _STATUS_IN_TEXT.search(text)
    return f"HTTP {m.group(1) or m.group(2)}" if m else None


def timed_out(exc: BaseException) -> bool:
    """The request got no answer in time: the server may still carry it out."""
    text = f"{type(exc).__name__}: {exc}"
    return isinstance(exc, TimeoutError) or "timed out" in text or "Timeout" in text


_NOT_DELIVERED = (
    "Connection refused",
    "Failed to establish a new connection",
    "Name or service not known",
    "Temporary failure in name resolution",
    "No route to host",
)


def never_delivered(exc: BaseException) -> bool:
    """The request cannot have been carried out: it never reached the server (refused, unknown
    host), or the server said it is overloaded (nothing done). A timeout, a dropped connection or
    another error may have come after the server did it."""
    text = f"{type(exc).__name__}: {exc}"
    return (
        isinstance(exc, ConnectionRefusedError)
        or any(n in text for n in _NOT_DELIVERED)
        or overloaded(exc) is not None
    )


def with_create_token(create: Mapping[str, Any]) -> dict:
    """``create`` (see :class:`MlflowSink`) with a creation token tag, a new one unless it has one.
    Whoever sends a creation before handing it to a sink adds the token first, so that the sink can
    find the run should that first attempt have reached the server after all."""
    out = dict(create)
    tags = dict(out.get("tags") or {})
    tags.setdefault(keys.CREATE_TOKEN, uuid.uuid4().hex)
    out["tags"] = tags
    return out


# -- the sink -------------------------------------------------------------------------------------


class MlflowSink:
    """Queue and batch-write metrics, params, tags and the terminal status of one run.

    ``run_id``: the run; or None with ``create={"experiment_id" | "experiment_name", "run_name",
    "tags", "start_time"}`` to create it at the first successful write (a creation token is added
    to its tags unless it has one: :func:`with_create_token`). ``store``: the tracking store it
    writes to (the run's one connection). ``flush_interval_s``: how often the writer thread writes
    (0: only on ``flush()``/``close()``). ``max_backoff_s``: the longest wait between two tries.
    ``echo``: where one-line notices about outages go (None for silence). ``store_answered``: the
    store answered earlier in this job. ``limiter``: the request budget (default: a
    :class:`.backoff.TokenBucket` of ``$WATTSUP_MAX_REQUESTS_PER_MIN``); a replay shares one
    among its sinks. ``create_settle_s``: see :data:`CREATE_SETTLE_S`. ``create_timed_out_at``:
    when (``time.monotonic()``) the caller sent ``create`` itself, with its token, and got a
    timeout: the sink looks the run up only once the settle time after that is over.
    """

    def __init__(
        self,
        run_id: str | None,
        store: Store,
        *,
        create: dict | None = None,
        flush_interval_s: float = 10.0,
        max_backoff_s: float = CAP_S,
        spool: bool = True,
        echo: Any = sys.stderr,
        store_answered: bool = False,
        limiter: TokenBucket | None = None,
        create_settle_s: float = CREATE_SETTLE_S,
        create_timed_out_at: float | None = None,
    ):
        if run_id is None and create is None:
            raise ValueError("give a run_id or what to create")
        self.store = store
        self._run_id = run_id
        self._create = None
        # a creation that came with a token may have been sent already (by our caller, or by the
        # job whose spool this is): look it up before sending it
        self._create_maybe_sent = False
        if run_id is None and create is not None:
            self._create_maybe_sent = keys.CREATE_TOKEN in (create.get("tags") or {})
            self._create = with_create_token(create)
            self._create.setdefault("start_time", now_ms())
        self.create_settle_s = create_settle_s
        # monotonic: a timed-out creation may still be under way at the server until then
        self._settle_until = 0.0 if create_timed_out_at is None else create_timed_out_at + create_settle_s
        self.flush_interval_s = flush_interval_s
        self.max_backoff_s = max_backoff_s
        self._echo = echo
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._queue: list[tuple[str, Any]] = []  # ("metric"|"param"|"tag"|"status", entity) in order
        self._spool = SpoolFile(spool_dir(), run_id) if spool else None
        self._answered = store_answered  # the store took a write in this job (so it may come back)
        self._present = store_answered  # ... or answered at all, if only with an error, or was slow
        self._spooled = 0  # queued entities already appended to the spool file
        self._known_params: dict[str, str] | None = None
        self._failures = 0
        self._next_try = 0.0
        self._said: set[str] = set()  # notices said during this outage
        if limiter is None:
            try:
                rate = rate_from_env()
            except ValueError as exc:
                rate = RATE_PER_MIN
                self._say(f"{exc}; using {rate:g}")
            limiter = TokenBucket(rate, BURST)
        self.limiter = limiter
        self.requests = 0  # store calls made (each took a token of the limiter)
        self.retry_in_s = 0.0  # the back-off drawn after the last failure
        self.written = 0
        self.writer_cpu_s = 0.0  # CPU seconds of the writer thread (our overhead)
        self.last_error: str | None = None
        self._last_exc: Exception | None = None
        self.skipped: list[str] = []
        self._stop = threading.Event()
        self._thread = None
        if flush_interval_s > 0:
            self._thread = threading.Thread(target=self._loop, name="wattsup-sink", daemon=True)
            self._thread.start()

    @property
    def run_id(self) -> str | None:
        """The run's id (None until a deferred run has been created)."""
        return self._run_id

    def _say(self, line: str) -> None:
        if self._echo is not None:
            print(f"wattsup: {line}", file=self._echo)

    # -- queueing -----------------------------------------------------------------------------

    def log_metrics(
        self, metrics: Mapping[str, float], step: int = 0, timestamp_ms: int | None = None
    ) -> None:
        ts = timestamp_ms if timestamp_ms is not None else now_ms()
        with self._lock:
            for k, v in metrics.items():
                if v is None:
                    continue
                v = float(v)
                if math.isnan(v) or math.isinf(v):
                    continue  # never log NaN/inf: N/A is the absence of the key
                self._queue.append(("metric", Metric(k, v, ts, int(step))))
        self._queued()

    def log_params(self, params: Mapping[str, Any]) -> None:
        self._queue_texts("param", params, MAX_PARAM_VAL_LENGTH)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._queue_texts("tag", tags, MAX_TAG_VAL_LENGTH)

    def _queue_texts(self, kind: str, values: Mapping[str, Any], max_chars: int) -> None:
        """Queue params or tags: each value as text cut to what the store takes; None skipped."""
        with self._lock:
            for k, v in values.items():
                if v is not None:
                    self._queue.append((kind, KeyValue(k, str(v)[:max_chars])))
        self._queued()

    def terminate(self, status: str, end_time_ms: int | None = None) -> None:
        """Queue the run's terminal status (FINISHED, FAILED, KILLED); written after everything
        queued before it."""
        with self._lock:
            self._queue.append(("status", (status, end_time_ms or now_ms())))
        self._queued()

    def enqueue(self, entities: Iterable[tuple[str, Any]]) -> None:
        """Queue already-built entities (``("metric"|"param"|"tag", entity)`` or ``("status",
        (status, end_ms))``), e.g. read back from a spool file."""
        with self._lock:
            self._queue.extend(entities)
        self._queued()

    def _queued(self) -> None:
        if self._failures:  # offline: put new values on disk at once, a crash must not lose them
            self._spool_pending()

    def log_text(self, text: str, artifact_file: str) -> bool:
        """Upload a small text artifact now (tables, CSV). On failure the content is kept in the
        spool directory and a notice says where; returns success."""
        try:
            if self._run_id is None:
                raise RuntimeError("the run does not exist yet (tracking store unreachable)")
            self.store.log_text(self._run_id, text, artifact_file)
            return True
        except Exception as exc:
            keep = spool_dir() / f"{self._run_id or 'new'}-artifacts" / artifact_file
            try:
                keep.parent.mkdir(parents=True, exist_ok=True)
                keep.write_text(text)
                where = f"kept in {keep}"
            except OSError:
                where = "not kept"
            self._say(f"could not upload {artifact_file} ({type(exc).__name__}); {where}")
            return False

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    # -- writing ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_interval_s if not self._failures else 0.5):
            if time.monotonic() >= self._next_try:
                self.flush()
            self.writer_cpu_s = time.thread_time()

    def _call(self, fn: Callable, *args, **kwargs):
        """One store request, within the request budget."""
        self.limiter.wait()
        self.requests += 1
        return fn(*args, **kwargs)

    def flush(self) -> bool:
        """Write everything queued, in order. Returns True when the queue is empty afterwards."""
        with self._write_lock:
            while True:
                with self._lock:
                    batch = _take_batch(self._queue)
                if not batch:
                    break
                try:
                    if not self._ensure_run():
                        self._spool_pending()
                        return False
                    self._write(batch)
                except Exception as exc:  # any store or transport failure
                    self._on_failure(exc)
                    return False
                with self._lock:
                    del self._queue[: len(batch)]
                    self._spooled = max(0, self._spooled - len(batch))
                    self.written += len(batch)
                self._answered = self._present = True
                if self._failures:
                    self._on_recovery()
            self._clear_spool()
            return True

    def _ensure_run(self) -> bool:
        """Make sure the run exists: False while a timed-out creation may still be under way at
        the server (not yet time to look for it)."""
        if self._run_id is not None:
            return True
        if self._create_maybe_sent:
            if time.monotonic() < self._settle_until:
                self._next_try = max(self._next_try, self._settle_until)
                return False
            found = self._find_created()
            if found is not None:
                self._adopt(found, "found the run an earlier attempt created")
                return True
        sent_at = time.monotonic()
        try:
            run_id = self._call(self.store.create_run, self._create)
        except Exception as exc:
            if not never_delivered(exc):
                self._create_maybe_sent = True
                if timed_out(exc):
                    self._settle_until = sent_at + self.create_settle_s
            raise
        self._known_params = {}  # a run we just made has none
        self._adopt(run_id, "created run")
        return True

    def _find_created(self) -> str | None:
        """The run our creation token names, if a creation reached the store."""
        create = self._create
        exp_id = create.get("experiment_id") or self._call(
            self.store.find_experiment, create.get("experiment_name") or "Default"
        )
        if exp_id is None:
            return None
        token = create["tags"][keys.CREATE_TOKEN]
        runs = self._call(
            self.store.search_runs, [str(exp_id)], f"tags.`{keys.CREATE_TOKEN}` = '{token}'", max_results=1
        )
        return runs[0].info.run_id if runs else None

    def _adopt(self, run_id: str, how: str) -> None:
        self._run_id = run_id
        if self._spool is not None and self._spool.exists():
            self._spool.append({}, [{"k": "created", "run_id": run_id}])
        if self._failures:
            self._say(f"{how} {run_id} now that {self.store.uri} answers")

    def _write(self, batch: list[tuple[str, Any]]) -> None:
        if batch[0][0] == "status":
            status, end_ms = batch[0][1]
            self._call(self.store.terminate, self._run_id, status, end_ms)
            return
        metrics = [e for kind, e in batch if kind == "metric"]
        params = [e for kind, e in batch if kind == "param"]
        tags = [e for kind, e in batch if kind == "tag"]
        if params:
            params = self._new_params(params)
        if metrics or params or tags:
            self._call(self.store.log_batch, self._run_id, metrics, params, tags)

    def _new_params(self, params: list) -> list:
        """Drop params the run already has: same value (a replay) or a different value (MLflow
        forbids changing a param; we keep the first and say so)."""
        if self._known_params is None:
            self._known_params = self._call(self.store.params, self._run_id)
        out = []
        for p in params:
            old = self._known_params.get(p.key)
            if old is None:
                out.append(p)
                self._known_params[p.key] = p.value
            elif old != p.value:
                self.skipped.append(f"param {p.key}: run already has {old!r}, not {p.value!r}")
        return out

    def _on_failure(self, exc: Exception) -> None:
        self._failures += 1
        self._last_exc = exc
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        self.last_error = f"{type(exc).__name__}: {first_line[:200]}"
        load = overloaded(exc)
        if load is not None or timed_out(exc) or not unreachable(exc):
            self._present = True  # it is there: it answered (an error), or it was slow
        delay = backoff_delay_s(
            self._failures - 1, cap_s=self.max_backoff_s, retry_after_s=getattr(exc, "retry_after_s", None)
        )
        self.retry_in_s = delay
        self._next_try = max(time.monotonic() + delay, self._settle_until)
        self._spool_pending()
        kept = f"values kept in {self._spool.path}" if self._spool is not None else "values kept in memory"
        if load is not None:
            if "overloaded" not in self._said:
                self._said.add("overloaded")
                self._say(f"tracking server overloaded ({load}), retrying in {delay:.1f} s; {kept}")
        elif "unreachable" not in self._said:
            self._said.add("unreachable")
            where = f"; spooling to {self._spool.path}" if self._spool is not None else ""
            self._say(f"tracking store unreachable ({self.last_error}){where}, retrying")

    def _on_recovery(self) -> None:
        self._say(f"tracking store back after {self._failures} failed write(s); replayed")
        self._failures = 0
        self._next_try = 0.0
        self._said.clear()

    # -- spool --------------------------------------------------------------------------------

    def _spool_pending(self) -> None:
        """Append queued entities not yet in the spool file, so a crash loses nothing. Holds the
        spool file's lock from taking the entities to writing them: two threads spooling at once
        write them in queue order."""
        if self._spool is None:
            return
        with self._spool.lock:
            with self._lock:
                new = self._queue[self._spooled :]
                self._spooled = len(self._queue)
            if not new:
                return
            try:
                header = {"run_id": self._run_id, "tracking_uri": self.store.uri}
                if self._create is not None:
                    header["create"] = self._create
                self._spool.append(header, [entity_json(kind, e) for kind, e in new])
            except OSError as exc:
                with self._lock:  # not on disk: the next spooling tries them again
                    self._spooled = max(0, self._spooled - len(new))
                self._say(f"cannot write spool {self._spool.path}: {exc}")

    def _clear_spool(self) -> None:
        if self._spool is not None:
            with self._spool.lock:
                with self._lock:
                    self._spooled = 0  # whatever is queued now is in memory only, as while online
                self._spool.remove()

    def close(self, timeout_s: float = 30.0, unreachable_s: float = 3.0, wait_s: float | None = None) -> bool:
        """Stop the writer and write what is queued.

        While the store answers with errors (a locked database) retry up to ``timeout_s``. When it
        cannot be reached, or answers that it is overloaded: if it answered at all earlier in this
        job, took writes or was only slow (it went away, e.g. a server restarting; it is
        overloaded) wait up to ``wait_s`` (default :func:`close_wait_s`, 60 s) for it, saying so
        once; if it never answered, give up after ``unreachable_s``. Tries are spaced by the
        jittered back-off. What is left stays in the spool file (and the next ``wattsup`` command
        replays it).

        Returns True if everything reached the store.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        start = time.monotonic()
        deadline = start + timeout_s
        wait_s = close_wait_s() if wait_s is None else wait_s
        said = False
        while not self.flush():
            exc = self._last_exc
            settling = self._run_id is None and time.monotonic() < self._settle_until
            if settling or (exc is not None and (unreachable(exc) or overloaded(exc) is not None)):
                patient = settling or self._answered or self._present
                deadline = start + (max(wait_s, unreachable_s) if patient else unreachable_s)
                if patient and not said and wait_s > unreachable_s:
                    said = True
                    where = self._spool.path if self._spool is not None else "memory"
                    self._say(
                        f"waiting up to {wait_s:.0f} s for {self.store.uri} to answer again "
                        f"(everything is safe in {where})"
                    )
            now = time.monotonic()
            if now >= deadline:
                self._spool_pending()
                if self._spool is not None:
                    self._spool.close()  # unlocked: the next wattsup command (or wattsup flush) replays it
                where = f"kept in {self._spool.path}" if self._spool is not None else "not kept (no spool)"
                self._say(
                    f"{self.pending} values could not reach {self.store.uri}; {where}. "
                    "The next wattsup command replays them (or now: wattsup flush)"
                )
                return False
            time.sleep(min(max(0.05, self._next_try - now), deadline - now))
        if self._spool is not None:
            self._spool.close()
        return True


def _take_batch(queue: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """The longest prefix of ``queue`` that fits one ``log_batch`` call (a status goes alone)."""
    if queue and queue[0][0] == "status":
        return queue[:1]
    n_metrics = n_pt = 0
    out = []
    for kind, e in queue:
        if kind == "status":
            break
        if kind == "metric":
            if n_metrics + 1 > MAX_METRICS_PER_BATCH:
                break
            n_metrics += 1
        else:
            if n_pt + 1 > MAX_PARAMS_TAGS_PER_BATCH:
                break
            n_pt += 1
        if n_metrics + n_pt > MAX_ENTITIES_PER_BATCH:
            break
        out.append((kind, e))
    return out
