"""Layer 4: the one object that writes to MLflow.

Every metric, param and tag we log goes through :class:`MlflowSink`, which queues them and writes
with ``log_batch`` (on sqlite, 10,000 single ``log_metric`` calls take minutes, one batch under two
seconds), chunked to MLflow's limits (1,000 metrics, 100 params/tags, 1,000 entities per call).

Outages never block or fail the tracked work:

* A writer thread flushes the queue every ``flush_interval_s``. A write that fails (server down,
  database locked) leaves the queue as it was, *in order*; the queue is appended to a spool file
  (JSON Lines, mode 0600, in the user cache dir) and retried with exponential backoff. While
  offline, every new value goes to the spool file at once, so a crash loses nothing.
* Against an HTTP server, our calls fail fast (one attempt, ``http_timeout_s``) instead of
  MLflow's default of 7 retries over about four minutes: our own backoff and spool take over.
* The run itself may be created late: a sink can start with ``create=`` instead of a run id
  (the server was down when the job started); the run is created at the first successful write,
  and the spool file records it so a replay never creates it twice.
* The terminal status (``terminate()``) is queued like any value and replayed in order.

Replays are idempotent: MLflow drops a metric value identical in key, step, timestamp and value to
one it has, params already present with the same value are skipped, tags are overwritten with the
same value. ``wattsup flush`` replays spool files left by a process that died.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from mlflow_wattsup.tracking.tracker import Sample

SPOOL_DIR_ENV = "WATTSUP_SPOOL_DIR"
HTTP_TIMEOUT_S = 15


def spool_dir() -> Path:
    """Where spool files live: ``$WATTSUP_SPOOL_DIR``, else the user cache dir."""
    env = os.environ.get(SPOOL_DIR_ENV)
    if env:
        return Path(env)
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("mlflow-wattsup")) / "spool"
    except ImportError:  # pragma: no cover
        return Path.home() / ".cache" / "mlflow-wattsup" / "spool"


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- the store, called so that failures are quick -----------------------------------------------


class Store:
    """The few tracking-store calls the sink makes. Against a REST server they go through
    MLflow's own HTTP helper (its authentication, TLS settings and error checks) with no retries
    and a short timeout; other stores through ``MlflowClient``."""

    def __init__(self, client: MlflowClient, http_timeout_s: float = HTTP_TIMEOUT_S):
        self.client = client
        self.uri = client.tracking_uri
        self._rest = None
        try:
            from mlflow.store.tracking.rest_store import RestStore
            from mlflow.utils.rest_utils import http_request, verify_rest_response

            store = client._tracking_client.store
            if isinstance(store, RestStore):

                def call(method: str, endpoint: str, body: dict) -> dict:
                    kw = {"json": body} if method == "POST" else {"params": body}
                    resp = http_request(
                        store.get_host_creds(),
                        endpoint,
                        method,
                        max_retries=0,
                        timeout=int(http_timeout_s),
                        **kw,
                    )
                    verify_rest_response(resp, endpoint)
                    return resp.json() if resp.text else {}

                self._rest = call
        except Exception:  # an MLflow without these helpers: the client's own calls
            self._rest = None

    def reachable(self) -> bool:
        """A quick check (REST: one request, no retries); other stores are assumed reachable."""
        if self._rest is None:
            return True
        try:
            self._rest("GET", "/api/2.0/mlflow/experiments/get-by-name", {"experiment_name": "Default"})
        except Exception as exc:
            return not unreachable(exc)
        return True

    def log_batch(self, run_id: str, metrics: list[Metric], params: list[Param], tags: list[RunTag]) -> None:
        if self._rest is None:
            self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags, synchronous=True)
            return
        self._rest(
            "POST",
            "/api/2.0/mlflow/runs/log-batch",
            {
                "run_id": run_id,
                "metrics": [
                    {"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}
                    for m in metrics
                ],
                "params": [{"key": p.key, "value": p.value} for p in params],
                "tags": [{"key": t.key, "value": t.value} for t in tags],
            },
        )

    def params(self, run_id: str) -> dict[str, str]:
        if self._rest is None:
            return dict(self.client.get_run(run_id).data.params)
        data = self._rest("GET", "/api/2.0/mlflow/runs/get", {"run_id": run_id})
        return {p["key"]: p.get("value", "") for p in data.get("run", {}).get("data", {}).get("params", [])}

    def terminate(self, run_id: str, status: str, end_time_ms: int) -> None:
        if self._rest is None:
            self.client.set_terminated(run_id, status, end_time=end_time_ms)
            return
        self._rest(
            "POST",
            "/api/2.0/mlflow/runs/update",
            {"run_id": run_id, "status": status, "end_time": end_time_ms},
        )

    def create_run(self, create: dict) -> str:
        """Create the run described by ``create`` (experiment id or name, run name, tags, start)."""
        from mlflow_wattsup.mlflow_layer.recording import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG

        exp_id = create.get("experiment_id")
        tags = dict(create.get("tags") or {})
        if create.get("run_name"):
            tags["mlflow.runName"] = create["run_name"]
        if self._rest is None:
            if exp_id is None:
                from mlflow_wattsup.mlflow_layer.recording import ensure_experiment

                exp_id = ensure_experiment(self.client, create.get("experiment_name"))
            return self.client.create_run(
                str(exp_id), start_time=create.get("start_time"), tags=tags, run_name=create.get("run_name")
            ).info.run_id
        if exp_id is None:
            name = create.get("experiment_name") or "Default"
            try:
                exp_id = self._rest(
                    "GET", "/api/2.0/mlflow/experiments/get-by-name", {"experiment_name": name}
                )["experiment"]["experiment_id"]
            except Exception as exc:
                if "RESOURCE_DOES_NOT_EXIST" not in str(exc):
                    raise
                try:
                    exp_id = self._rest(
                        "POST",
                        "/api/2.0/mlflow/experiments/create",
                        {"name": name, "tags": [{"key": EXPERIMENT_KIND_TAG, "value": EXPERIMENT_KIND}]},
                    )["experiment_id"]
                except Exception as exc2:  # created meanwhile by another job
                    if "RESOURCE_ALREADY_EXISTS" not in str(exc2):
                        raise
                    exp_id = self._rest(
                        "GET", "/api/2.0/mlflow/experiments/get-by-name", {"experiment_name": name}
                    )["experiment"]["experiment_id"]
        body = {
            "experiment_id": str(exp_id),
            "start_time": create.get("start_time") or _now_ms(),
            "tags": [{"key": k, "value": str(v)} for k, v in tags.items()],
        }
        if create.get("run_name"):
            body["run_name"] = create["run_name"]
        return self._rest("POST", "/api/2.0/mlflow/runs/create", body)["run"]["info"]["run_id"]


@contextlib.contextmanager
def quick_http(timeout_s: int = 5):
    """MLflow's own HTTP calls in the block: one attempt, short timeout (process-wide while it
    lasts; used only around calls that must not hang when the server is down)."""
    keys = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update(keys)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def unreachable(exc: BaseException) -> bool:
    """Whether an exception means the tracking store could not be reached (vs a real error)."""
    text = f"{type(exc).__name__}: {exc}"
    needles = (
        "Connection refused",
        "Max retries exceeded",
        "Failed to establish",
        "timed out",
        "Timeout",
        "ConnectionError",
        "Name or service not known",
        "Temporary failure",
        "database is locked",
        "unable to open database",
        "Connection aborted",
        "RemoteDisconnected",
    )
    return any(n in text for n in needles)


# -- the sink -------------------------------------------------------------------------------------


class MlflowSink:
    """Queue and batch-write metrics, params, tags and the terminal status of one run.

    ``run_id``: the run; or None with ``create={"experiment_id" | "experiment_name", "run_name",
    "tags", "start_time"}`` to create it at the first successful write. ``flush_interval_s``: how
    often the writer thread writes (0: only on ``flush()``/``close()``). ``echo``: where one-line
    notices about outages go (None for silence).
    """

    def __init__(
        self,
        run_id: str | None,
        client: MlflowClient | None = None,
        *,
        create: dict | None = None,
        flush_interval_s: float = 10.0,
        max_backoff_s: float = 60.0,
        spool: bool = True,
        echo: Any = sys.stderr,
        http_timeout_s: float = HTTP_TIMEOUT_S,
    ):
        if run_id is None and create is None:
            raise ValueError("give a run_id or what to create")
        self.client = client or MlflowClient()
        self.store = Store(self.client, http_timeout_s)
        self.tracking_uri = self.store.uri
        self._run_id = run_id
        self._create = dict(create) if create else None
        if self._create is not None:
            self._create.setdefault("start_time", _now_ms())
        self.flush_interval_s = flush_interval_s
        self.max_backoff_s = max_backoff_s
        self._echo = echo
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._queue: list[tuple[str, Any]] = []  # ("metric"|"param"|"tag"|"status", entity) in order
        name = run_id or f"new-{uuid.uuid4().hex}"
        self._spool_path = spool_dir() / f"{name}.jsonl" if spool else None
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
        ts = timestamp_ms if timestamp_ms is not None else _now_ms()
        with self._lock:
            for k, v in metrics.items():
                if v is None:
                    continue
                v = float(v)
                if math.isnan(v) or math.isinf(v):
                    continue  # never log NaN/inf: N/A is the absence of the key
                self._queue.append(("metric", Metric(k, v, ts, int(step))))
        self._queued()

    def log_sample(self, s: Sample) -> None:
        """Queue one tracker sample as the power time series (step = elapsed seconds)."""
        self.log_metrics(
            {
                "power_w": s.power_w,
                "power_cpu_w": s.power_cpu_w,
                "power_gpu_w": s.power_gpu_w,
                "power_ram_w": s.power_ram_w,
            },
            step=s.step,
            timestamp_ms=s.timestamp_ms,
        )

    def log_params(self, params: Mapping[str, Any]) -> None:
        with self._lock:
            for k, v in params.items():
                if v is not None:
                    self._queue.append(("param", Param(k, str(v)[:MAX_PARAM_VAL_LENGTH])))
        self._queued()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        with self._lock:
            for k, v in tags.items():
                if v is not None:
                    self._queue.append(("tag", RunTag(k, str(v)[:MAX_TAG_VAL_LENGTH])))
        self._queued()

    def terminate(self, status: str, end_time_ms: int | None = None) -> None:
        """Queue the run's terminal status (FINISHED, FAILED, KILLED); written after everything
        queued before it."""
        with self._lock:
            self._queue.append(("status", (status, end_time_ms or _now_ms())))
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
            self.client.log_text(self._run_id, text, artifact_file)
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
                if self._failures:
                    self._on_recovery()
            self._clear_spool()
            return True

    def _ensure_run(self) -> None:
        if self._run_id is not None:
            return
        self._run_id = self.store.create_run(self._create)
        if self._spool_path is not None and self._spool_path.exists():
            _append_lines(self._spool_path, [{"k": "created", "run_id": self._run_id}])
        if self._echo is not None and self._failures:
            print(
                f"wattsup: created run {self._run_id} now that {self.tracking_uri} answers", file=self._echo
            )

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
            where = f"; spooling to {self._spool_path}" if self._spool_path else ""
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
        if self._spool_path is None:
            return
        with self._lock:
            new = self._queue[self._spooled :]
            self._spooled = len(self._queue)
        if not new:
            return
        try:
            header = {"run_id": self._run_id, "tracking_uri": self.tracking_uri}
            if self._create is not None:
                header["create"] = self._create
            append_spool(self._spool_path, header, new)
        except OSError as exc:
            if self._echo is not None:
                print(f"wattsup: cannot write spool {self._spool_path}: {exc}", file=self._echo)

    def _clear_spool(self) -> None:
        if self._spool_path is not None and self._spool_path.exists():
            try:
                self._spool_path.unlink()
            except OSError:
                pass

    def close(self, timeout_s: float = 30.0, unreachable_s: float = 3.0) -> bool:
        """Stop the writer and write what is queued: retry up to ``timeout_s`` while the store
        answers with errors (a locked database), but only ``unreachable_s`` when it cannot be
        reached at all (the values are safe in the spool file, and waiting would hold up the job).

        Returns True if everything reached the store; otherwise the rest is in the spool file
        and a notice says how to replay it.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        start = time.monotonic()
        deadline = start + timeout_s
        delay = 0.5
        while not self.flush():
            if self._last_exc is not None and unreachable(self._last_exc):
                deadline = min(deadline, start + unreachable_s)
            if time.monotonic() + delay > deadline:
                self._spool_pending()
                if self._echo is not None:
                    print(
                        f"wattsup: {self.pending} values could not reach {self.tracking_uri}; kept in "
                        f"{self._spool_path}. Replay with: wattsup flush",
                        file=self._echo,
                    )
                return False
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
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


# -- spool files ------------------------------------------------------------------------------


def _entity_json(kind: str, e: Any) -> dict:
    if kind == "metric":
        return {"k": "metric", "key": e.key, "value": e.value, "timestamp": e.timestamp, "step": e.step}
    if kind == "status":
        return {"k": "status", "value": e[0], "end_time": e[1]}
    return {"k": kind, "key": e.key, "value": e.value}


def _append_lines(path: Path, objs: Iterable[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        for obj in objs:
            f.write(json.dumps(obj) + "\n")
        f.flush()
        os.fsync(f.fileno())


def append_spool(path: Path, header: dict, entities: Iterable[tuple[str, Any]]) -> None:
    lines = [] if path.exists() and path.stat().st_size > 0 else [{"wattsup_spool": 1, **header}]
    _append_lines(path, lines + [_entity_json(kind, e) for kind, e in entities])


def read_spool(path: Path) -> tuple[dict, list[tuple[str, Any]], int]:
    """(header, entities, bad lines) of a spool file; a torn last line is counted as bad. A
    ``created`` line (the deferred run was made) sets the header's ``run_id``."""
    header: dict = {}
    entities: list[tuple[str, Any]] = []
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            try:
                obj = json.loads(line)
                kind = obj.get("k")
                if i == 0 and "wattsup_spool" in obj:
                    header = obj
                elif kind == "metric":
                    entities.append(
                        (
                            "metric",
                            Metric(obj["key"], float(obj["value"]), int(obj["timestamp"]), int(obj["step"])),
                        )
                    )
                elif kind in ("param", "tag"):
                    cls = Param if kind == "param" else RunTag
                    entities.append((kind, cls(obj["key"], str(obj["value"]))))
                elif kind == "status":
                    entities.append(("status", (str(obj["value"]), int(obj["end_time"]))))
                elif kind == "created":
                    header["run_id"] = obj["run_id"]
                else:
                    bad += 1
            except (ValueError, KeyError, TypeError, AttributeError):
                bad += 1
    return header, entities, bad


def replay_spools(
    directory: Path | None = None, tracking_uri: str | None = None, echo: Any = sys.stderr
) -> tuple[int, int]:
    """Replay every spool file in ``directory``; returns (files replayed, files left)."""
    directory = directory or spool_dir()
    done = left = 0
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        try:
            header, entities, bad = read_spool(path)
        except OSError as exc:
            print(f"wattsup: cannot read {path}: {exc}", file=echo)
            left += 1
            continue
        if not header or not (header.get("run_id") or header.get("create")):
            print(f"wattsup: {path} is not a wattsup spool file; left in place", file=echo)
            left += 1
            continue
        uri = tracking_uri or header.get("tracking_uri")
        sink = MlflowSink(
            header.get("run_id"),
            MlflowClient(tracking_uri=uri),
            create=header.get("create"),
            flush_interval_s=0,
            spool=False,
            echo=None,
        )
        sink._queue = list(entities)
        if sink.flush():
            path.unlink()
            done += 1
            msg = f"wattsup: replayed {len(entities)} values to run {sink.run_id} at {uri}"
            if bad:
                msg += f" ({bad} unreadable line(s) skipped)"
            print(msg, file=echo)
        else:
            left += 1
            print(f"wattsup: {uri} still unreachable ({sink.last_error}); {path} kept", file=echo)
    return done, left
