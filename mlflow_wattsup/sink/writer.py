"""The one object that writes to MLflow: a queue, a writer thread, and the spool behind them.

Every metric, param and tag we log goes through :class:`MlflowSink`, which queues them and writes
with ``log_batch`` (on sqlite, 10,000 single ``log_metric`` calls take minutes, one batch under two
seconds), chunked to MLflow's limits (1,000 metrics, 100 params/tags, 1,000 entities per call).

Outages never block or fail the tracked work:

* A writer thread flushes the queue every ``flush_interval_s``. A write that fails (server down,
  database locked) leaves the queue as it was, *in order*; the queue is appended to a spool file
  (:mod:`.spool`) and retried with a short backoff (at most ``max_backoff_s``, 8 s by default,
  so a server that restarts during a job is found again within seconds). While offline, every
  new value goes to the spool file at once, so a crash loses nothing.
* Every store call goes through :class:`.transport.Store`, which fails fast against an HTTP
  server (one attempt, ``http_timeout_s``): our own backoff and spool take over.
* Closing waits for a store that went away during the job (a server restarting: by default up to
  ``close_wait_s`` = 60 s, env ``WATTSUP_CLOSE_WAIT_S``) and only briefly for one that never
  answered; what is left stays in the spool and the next ``wattsup`` command replays it.
* The run itself may be created late: a sink can start with ``create=`` instead of a run id
  (the server was down when the job started); the run is created at the first successful write,
  and the spool file records it so a replay never creates it twice.
* The terminal status (``terminate()``) is queued like any value and replayed in order.

Replays are idempotent: MLflow drops a metric value identical in key, step, timestamp and value to
one it has, params already present with the same value are skipped, tags are overwritten with the
same value.
"""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.utils.validation import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from mlflow_wattsup.sink.spool import SpoolFile, entity_json, spool_dir
from mlflow_wattsup.sink.transport import Store, now_ms, unreachable

CLOSE_WAIT_ENV = "WATTSUP_CLOSE_WAIT_S"
CLOSE_WAIT_S = 60.0


def close_wait_s() -> float:
    """How long closing waits for a store that answered earlier in the job (``$WATTSUP_CLOSE_WAIT_S``)."""
    try:
        return max(0.0, float(os.environ.get(CLOSE_WAIT_ENV, CLOSE_WAIT_S)))
    except ValueError:
        return CLOSE_WAIT_S


# -- the sink -------------------------------------------------------------------------------------


class MlflowSink:
    """Queue and batch-write metrics, params, tags and the terminal status of one run.

    ``run_id``: the run; or None with ``create={"experiment_id" | "experiment_name", "run_name",
    "tags", "start_time"}`` to create it at the first successful write. ``store``: the tracking
    store it writes to (the run's one connection). ``flush_interval_s``: how often the writer
    thread writes (0: only on ``flush()``/``close()``). ``echo``: where one-line notices about
    outages go (None for silence). ``store_answered``: the store answered earlier in this job.
    """

    def __init__(
        self,
        run_id: str | None,
        store: Store,
        *,
        create: dict | None = None,
        flush_interval_s: float = 10.0,
        max_backoff_s: float = 8.0,
        spool: bool = True,
        echo: Any = sys.stderr,
        store_answered: bool = False,
    ):
        if run_id is None and create is None:
            raise ValueError("give a run_id or what to create")
        self.store = store
        self._run_id = run_id
        self._create = dict(create) if create else None
        if self._create is not None:
            self._create.setdefault("start_time", now_ms())
        self.flush_interval_s = flush_interval_s
        self.max_backoff_s = max_backoff_s
        self._echo = echo
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._queue: list[tuple[str, Any]] = []  # ("metric"|"param"|"tag"|"status", entity) in order
        self._spool = SpoolFile(spool_dir(), run_id) if spool else None
        self._answered = store_answered  # the store answered during this job (so it may come back)
        self._spooled = 0  # queued entities already appended to the spool file
        self._known_params: dict[str, str] | None = None
        self._failures = 0
        self._next_try = 0.0
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
        self._queue_texts("param", Param, params, MAX_PARAM_VAL_LENGTH)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        self._queue_texts("tag", RunTag, tags, MAX_TAG_VAL_LENGTH)

    def _queue_texts(self, kind: str, entity: type, values: Mapping[str, Any], max_chars: int) -> None:
        """Queue params or tags: each value as text cut to what the store takes; None skipped."""
        with self._lock:
            for k, v in values.items():
                if v is not None:
                    self._queue.append((kind, entity(k, str(v)[:max_chars])))
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
            if self._echo is not None:
                print(
                    f"wattsup: could not upload {artifact_file} ({type(exc).__name__}); {where}",
                    file=self._echo,
                )
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

    def flush(self) -> bool:
        """Write everything queued, in order. Returns True when the queue is empty afterwards."""
        with self._write_lock:
            while True:
                with self._lock:
                    batch = _take_batch(self._queue)
                if not batch:
                    break
                try:
                    self._ensure_run()
                    self._write(batch)
                except Exception as exc:  # any store or transport failure
                    self._on_failure(exc)
                    return False
                with self._lock:
                    del self._queue[: len(batch)]
                    self._spooled = max(0, self._spooled - len(batch))
                    self.written += len(batch)
                self._answered = True
                if self._failures:
                    self._on_recovery()
            self._clear_spool()
            return True

    def _ensure_run(self) -> None:
        if self._run_id is not None:
            return
        self._run_id = self.store.create_run(self._create)
        if self._spool is not None and self._spool.exists():
            self._spool.append({}, [{"k": "created", "run_id": self._run_id}])
        if self._echo is not None and self._failures:
            print(f"wattsup: created run {self._run_id} now that {self.store.uri} answers", file=self._echo)

    def _write(self, batch: list[tuple[str, Any]]) -> None:
        if batch[0][0] == "status":
            status, end_ms = batch[0][1]
            self.store.terminate(self._run_id, status, end_ms)
            return
        metrics = [e for kind, e in batch if kind == "metric"]
        params = [e for kind, e in batch if kind == "param"]
        tags = [e for kind, e in batch if kind == "tag"]
        if params:
            params = self._new_params(params)
        if metrics or params or tags:
            self.store.log_batch(self._run_id, metrics, params, tags)

    def _new_params(self, params: list[Param]) -> list[Param]:
        """Drop params the run already has: same value (a replay) or a different value (MLflow
        forbids changing a param; we keep the first and say so)."""
        if self._known_params is None:
            self._known_params = self.store.params(self._run_id)
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
        delay = min(self.max_backoff_s, 2.0 ** min(self._failures, 10))
        self._next_try = time.monotonic() + delay
        self._spool_pending()
        if self._failures == 1 and self._echo is not None:
            where = f"; spooling to {self._spool.path}" if self._spool is not None else ""
            print(
                f"wattsup: tracking store unreachable ({self.last_error}){where}, retrying", file=self._echo
            )

    def _on_recovery(self) -> None:
        if self._echo is not None:
            print(
                f"wattsup: tracking store back after {self._failures} failed write(s); replayed",
                file=self._echo,
            )
        self._failures = 0
        self._next_try = 0.0

    # -- spool --------------------------------------------------------------------------------

    def _spool_pending(self) -> None:
        """Append queued entities not yet in the spool file, so a crash loses nothing."""
        if self._spool is None:
            return
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
            if self._echo is not None:
                print(f"wattsup: cannot write spool {self._spool.path}: {exc}", file=self._echo)

    def _clear_spool(self) -> None:
        if self._spool is not None:
            self._spool.remove()

    def close(self, timeout_s: float = 30.0, unreachable_s: float = 3.0, wait_s: float | None = None) -> bool:
        """Stop the writer and write what is queued.

        While the store answers with errors (a locked database) retry up to ``timeout_s``. When it
        cannot be reached at all: if it took writes earlier in this job (it went away, e.g. a
        server restarting) wait up to ``wait_s`` (default :func:`close_wait_s`, 60 s) for it to
        answer again, saying so once; if it never answered, give up after ``unreachable_s``. What
        is left stays in the spool file (and the next ``wattsup`` command replays it).

        Returns True if everything reached the store.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        start = time.monotonic()
        deadline = start + timeout_s
        wait_s = close_wait_s() if wait_s is None else wait_s
        said = False
        delay = 0.5
        while not self.flush():
            if self._last_exc is not None and unreachable(self._last_exc):
                deadline = start + (max(wait_s, unreachable_s) if self._answered else unreachable_s)
                if self._answered and not said and wait_s > unreachable_s and self._echo is not None:
                    said = True
                    print(
                        f"wattsup: waiting up to {wait_s:.0f} s for {self.store.uri} to answer again "
                        f"(everything is safe in {self._spool.path if self._spool else 'memory'})",
                        file=self._echo,
                    )
            if time.monotonic() + delay > deadline:
                self._spool_pending()
                if self._spool is not None:
                    self._spool.close()  # unlocked: the next wattsup command (or wattsup flush) replays it
                if self._echo is not None:
                    where = (
                        f"kept in {self._spool.path}" if self._spool is not None else "not kept (no spool)"
                    )
                    print(
                        f"wattsup: {self.pending} values could not reach {self.store.uri}; {where}. "
                        "The next wattsup command replays them (or now: wattsup flush)",
                        file=self._echo,
                    )
                return False
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
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
