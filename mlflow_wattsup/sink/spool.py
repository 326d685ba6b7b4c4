"""Spool files: what could not reach the tracking store, on disk, until it can.

A spool file is JSON Lines (mode 0600, in ``$WATTSUP_SPOOL_DIR`` or the user cache dir): a header
(the run id or the run to create, the tracking URI), then each queued metric, param, tag and
terminal status in order. A live sink holds an exclusive ``flock`` on its file for as long as it
lives, so a replay (``wattsup flush``, or the automatic one at the next ``wattsup`` start) never
touches the file of a job that is still running; a job that died leaves its file unlocked.
Within the process, :attr:`SpoolFile.lock` serialises appends (the writer thread after a failed
write and a thread logging while the store is away append at once). Replays are idempotent (see
:mod:`.writer`). Nothing here imports MLflow: entities read back are :class:`.rest.Metric` and
:class:`KeyValue` (params and tags).
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from mlflow_wattsup.sink.rest import Metric

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


class KeyValue(NamedTuple):
    """One param or tag (the attribute names of MLflow's ``Param`` / ``RunTag``)."""

    key: str
    value: str


def entity_json(kind: str, e: Any) -> dict:
    if kind == "metric":
        return {"k": "metric", "key": e.key, "value": e.value, "timestamp": e.timestamp, "step": e.step}
    if kind == "status":
        return {"k": "status", "value": e[0], "end_time": e[1]}
    return {"k": kind, "key": e.key, "value": e.value}


class SpoolFile:
    """The spool file of one live sink: created on first use, locked while we live.

    Thread-safe: :meth:`append`, :meth:`remove` and :meth:`close` hold :attr:`lock` (re-entrant;
    a caller that must take what to append and append it in one step holds it around both)."""

    def __init__(self, directory: Path, run_id: str | None):
        name = f"{run_id or 'new'}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        self.path = directory / name
        self._fd: int | None = None
        self.lock = threading.RLock()

    def exists(self) -> bool:
        with self.lock:
            return self._fd is not None

    def append(self, header: dict, objs: Iterable[dict]) -> None:
        """Append ``objs`` (JSON objects), the header first if the file is new; flushed and
        fsync'ed, a crash right after loses nothing."""
        lines = [json.dumps(o) + "\n" for o in objs]
        with self.lock:
            if self._fd is None:
                self._create()
                lines.insert(0, json.dumps({"wattsup_spool": 1, **header}) + "\n")
            data = "".join(lines).encode()
            while data:
                n = os.write(self._fd, data)
                data = data[n:]
            os.fsync(self._fd)

    def _create(self) -> None:
        # Created under a temporary name and locked before it gets its real one, so a replay
        # (which only looks at *.jsonl) can never see it unlocked.
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(tmp, self.path)
        self._fd = fd

    def remove(self) -> None:
        """Delete the file (everything in it reached the store) and release it."""
        with self.lock:
            if self._fd is None:
                return
            try:
                self.path.unlink()
            except OSError:
                pass
            self.close()

    def close(self) -> None:
        """Release the file (kept on disk for a later replay)."""
        with self.lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


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
                    m = Metric(obj["key"], float(obj["value"]), int(obj["timestamp"]), int(obj["step"]))
                    entities.append(("metric", m))
                elif kind in ("param", "tag"):
                    entities.append((kind, KeyValue(str(obj["key"]), str(obj["value"]))))
                elif kind == "status":
                    entities.append(("status", (str(obj["value"]), int(obj["end_time"]))))
                elif kind == "created":
                    header["run_id"] = obj["run_id"]
                else:
                    bad += 1
            except (ValueError, KeyError, TypeError, AttributeError):
                bad += 1
    return header, entities, bad


def lock_if_free(path: Path) -> int | None:
    """An fd holding ``path``'s lock, or None if a live job holds it (or it vanished)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def leftover_spools(directory: Path | None = None) -> list[Path]:
    """Spool files in ``directory`` that no live job holds (cheap: a listing and a lock try each)."""
    directory = directory or spool_dir()
    out = []
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        fd = lock_if_free(path)
        if fd is not None:
            os.close(fd)
            out.append(path)
    return out
