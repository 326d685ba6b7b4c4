"""Layer 4: the one object that writes to MLflow.

Every metric, param and tag we log goes through :class:`MlflowSink`, which queues them and writes
with ``MlflowClient.log_batch`` (on sqlite, 10,000 single ``log_metric`` calls take minutes, one
batch under two seconds), chunked to MLflow's limits (1,000 metrics, 100 params/tags, 1,000
entities per call).

A writer thread flushes the queue every ``flush_interval_s``; ``flush()`` writes now. If a write
fails (tracking server down, database locked), the batch stays queued *in order*, is appended to a
spool file (JSON Lines, mode 0600, one file per run under the user cache dir) and is retried with
exponential backoff; the tracked work is never blocked or failed by logging trouble. Replays are
idempotent: MLflow drops a metric value identical in key, step, timestamp and value to one it
already has, and params/tags already present with the same value are skipped.
``wattsup flush`` replays spool files left by a process that died.
"""

from __future__ import annotations

import json
import math
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient
from mlflow.utils.validation import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from .tracker import Sample

SERIES_KEYS = {
    "power_w": "power_w",
    "power_cpu_w": "power_cpu_w",
    "power_gpu_w": "power_gpu_w",
    "power_ram_w": "power_ram_w",
}
SPOOL_DIR_ENV = "WATTSUP_SPOOL_DIR"


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


class MlflowSink:
    """Queue and batch-write metrics, params and tags for one run.

    ``flush_interval_s``: how often the writer thread writes the queue (0 disables the thread:
    writes then happen only on ``flush()``/``close()``). ``echo``: where to print one-line
    notices about outages (default stderr; ``None`` for silence).
    """

    def __init__(
        self,
        run_id: str,
        client: MlflowClient | None = None,
        *,
        flush_interval_s: float = 10.0,
        max_backoff_s: float = 60.0,
        spool: bool = True,
        echo: Any = sys.stderr,
    ):
        self.run_id = run_id
        self.client = client or MlflowClient()
        self.tracking_uri = self.client.tracking_uri
        self.flush_interval_s = flush_interval_s
        self.max_backoff_s = max_backoff_s
        self._echo = echo
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._queue: list[tuple[str, Any]] = []  # ("metric"|"param"|"tag", entity) in order
        self._spool_path = spool_dir() / f"{run_id}.jsonl" if spool else None
        self._spooled = 0  # queued entities already appended to the spool file
        self._known_params: dict[str, str] | None = None
        self._failures = 0
        self._next_try = 0.0
        self.written = 0
        self.last_error: str | None = None
        self.skipped: list[str] = []
        self._stop = threading.Event()
        self._thread = None
        if flush_interval_s > 0:
            self._thread = threading.Thread(target=self._loop, name="wattsup-sink", daemon=True)
            self._thread.start()

    # -- queueing -----------------------------------------------------------------------------

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0, timestamp_ms: int | None = None) -> None:
        ts = timestamp_ms if timestamp_ms is not None else _now_ms()
        with self._lock:
            for k, v in metrics.items():
                if v is None:
                    continue
                v = float(v)
                if math.isnan(v):
                    continue  # never log NaN: N/A is the absence of the key
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
                if v is None:
                    continue
                self._queue.append(("param", Param(k, str(v)[:MAX_PARAM_VAL_LENGTH])))
        self._queued()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        with self._lock:
            for k, v in tags.items():
                if v is None:
                    continue
                self._queue.append(("tag", RunTag(k, str(v)[:MAX_TAG_VAL_LENGTH])))
        self._queued()

    def _queued(self) -> None:
        if self._failures:  # offline: put new values on disk at once, a crash must not lose them
            self._spool_pending()

    def log_text(self, text: str, artifact_file: str) -> bool:
        """Upload a small text artifact now (tables, CSV). On failure the content is kept in the
        spool directory beside the run's spool file and a notice says where; returns success."""
        try:
            self.client.log_text(self.run_id, text, artifact_file)
            return True
        except Exception as exc:
            keep = spool_dir() / f"{self.run_id}-artifacts" / artifact_file
            try:
                keep.parent.mkdir(parents=True, exist_ok=True)
                keep.write_text(text)
                where = f"kept in {keep}"
            except OSError:
                where = "not kept"
            if self._echo is not None:
                print(f"wattsup: could not upload {artifact_file} ({type(exc).__name__}); {where}", file=self._echo)
            return False

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    @property
    def offline(self) -> bool:
        return self._failures > 0

    # -- writing ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self.flush_interval_s if not self._failures else 1.0):
            if time.monotonic() >= self._next_try:
                self.flush(raise_errors=False)

    def flush(self, raise_errors: bool = False) -> bool:
        """Write everything queued, in order. Returns True when the queue is empty afterwards."""
        with self._write_lock:
            while True:
                with self._lock:
                    batch = _take_batch(self._queue)
                if not batch:
                    break
                try:
                    self._write(batch)
                except Exception as exc:  # any store or transport failure
                    self._on_failure(exc)
                    if raise_errors:
                        raise
                    return False
                with self._lock:
                    del self._queue[: len(batch)]
                    self._spooled = max(0, self._spooled - len(batch))
                    self.written += len(batch)
                if self._failures:
                    self._on_recovery()
            self._clear_spool()
            return True

    def _write(self, batch: list[tuple[str, Any]]) -> None:
        metrics = [e for kind, e in batch if kind == "metric"]
        params = [e for kind, e in batch if kind == "param"]
        tags = [e for kind, e in batch if kind == "tag"]
        if params:
            params = self._new_params(params)
        if metrics or params or tags:
            self.client.log_batch(self.run_id, metrics=metrics, params=params, tags=tags, synchronous=True)

    def _new_params(self, params: list[Param]) -> list[Param]:
        """Drop params the run already has: same value (a replay) or a different value (MLflow
        forbids changing a param; we keep the first and say so)."""
        if self._known_params is None:
            self._known_params = dict(self.client.get_run(self.run_id).data.params)
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
        self.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        delay = min(self.max_backoff_s, 2.0 ** min(self._failures, 10))
        self._next_try = time.monotonic() + delay
        self._spool_pending()
        if self._failures == 1 and self._echo is not None:
            where = f"; spooling to {self._spool_path}" if self._spool_path else ""
            print(f"wattsup: tracking store unreachable ({self.last_error}){where}, retrying", file=self._echo)

    def _on_recovery(self) -> None:
        if self._echo is not None:
            print(f"wattsup: tracking store back after {self._failures} failed write(s); replayed", file=self._echo)
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
            append_spool(self._spool_path, self.run_id, self.tracking_uri, new)
        except OSError as exc:
            if self._echo is not None:
                print(f"wattsup: cannot write spool {self._spool_path}: {exc}", file=self._echo)

    def _clear_spool(self) -> None:
        if self._spool_path is not None and self._spool_path.exists():
            try:
                self._spool_path.unlink()
            except OSError:
                pass

    def close(self, timeout_s: float = 30.0) -> bool:
        """Stop the writer and write what is queued, retrying up to ``timeout_s``.

        Returns True if everything reached the store; otherwise the rest is in the spool file
        and a notice says how to replay it.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        delay = 0.5
        while not self.flush():
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
    """The longest prefix of ``queue`` that fits one ``log_batch`` call."""
    n_metrics = n_pt = 0
    out = []
    for kind, e in queue:
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
    return {"k": kind, "key": e.key, "value": e.value}


def append_spool(path: Path, run_id: str, tracking_uri: str, entities: Iterable[tuple[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as f:
        if f.tell() == 0:
            f.write(json.dumps({"run_id": run_id, "tracking_uri": tracking_uri}) + "\n")
        for kind, e in entities:
            f.write(json.dumps(_entity_json(kind, e)) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_spool(path: Path) -> tuple[dict, list[tuple[str, Any]], int]:
    """(header, entities, bad lines) of a spool file; a torn last line is counted as bad."""
    header: dict = {}
    entities: list[tuple[str, Any]] = []
    bad = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            try:
                obj = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if i == 0 and "run_id" in obj:
                header = obj
            elif obj.get("k") == "metric":
                entities.append(("metric", Metric(obj["key"], float(obj["value"]), int(obj["timestamp"]), int(obj["step"]))))
            elif obj.get("k") == "param":
                entities.append(("param", Param(obj["key"], str(obj["value"]))))
            elif obj.get("k") == "tag":
                entities.append(("tag", RunTag(obj["key"], str(obj["value"]))))
            else:
                bad += 1
    return header, entities, bad


def replay_spools(directory: Path | None = None, tracking_uri: str | None = None, echo: Any = sys.stderr) -> tuple[int, int]:
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
        if not header:
            print(f"wattsup: {path} has no header line; not a wattsup spool file, left in place", file=echo)
            left += 1
            continue
        uri = tracking_uri or header.get("tracking_uri")
        sink = MlflowSink(header["run_id"], MlflowClient(tracking_uri=uri), flush_interval_s=0, spool=False, echo=None)
        sink._queue = list(entities)
        if sink.flush():
            path.unlink()
            done += 1
            msg = f"wattsup: replayed {len(entities)} values to run {header['run_id']} at {uri}"
            if bad:
                msg += f" ({bad} unreadable line(s) skipped)"
            print(msg, file=echo)
        else:
            left += 1
            print(f"wattsup: {uri} still unreachable ({sink.last_error}); {path} kept", file=echo)
    return done, left
