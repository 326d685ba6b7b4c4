"""Replaying spool files: what earlier jobs (or this one, after an outage) could not deliver, sent
to the tracking store through a :class:`~.writer.MlflowSink`. ``wattsup flush`` and every
``wattsup`` command (in the background) use it.

A spool file holding a run still to create carries that creation's token: the replay looks the run
up first and adopts it when the job's own attempt reached the server after all (it timed out, or
the job died right after), so a replay never makes a second run. All files of one replay share one
request budget (:class:`.backoff.TokenBucket`, ``$WATTSUP_MAX_REQUESTS_PER_MIN``)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow_wattsup.sink.spool import leftover_spools, lock_if_free, read_spool, spool_dir

if TYPE_CHECKING:
    from mlflow_wattsup.sink.transport import Store


def store_for(uri: str | None) -> Store:
    """The store a spool file's values go to."""
    from mlflow_wattsup.sink.transport import Store

    return Store(tracking_uri=uri)


def replay_spools(
    directory: Path | None = None,
    tracking_uri: str | None = None,
    echo: Any = sys.stderr,
    stores: Callable[[str | None], Store] = store_for,
) -> tuple[int, int]:
    """Replay every spool file in ``directory`` that no live job holds; returns (files replayed,
    files left). Files of live jobs are skipped silently (their job replays them). ``stores``
    gives the store of a tracking URI (one per URI and replay)."""
    from mlflow_wattsup.sink.backoff import BURST, RATE_PER_MIN, TokenBucket, rate_from_env
    from mlflow_wattsup.sink.writer import MlflowSink

    try:
        rate = rate_from_env()
    except ValueError as exc:
        rate = RATE_PER_MIN
        print(f"wattsup: {exc}; using {rate:g}", file=echo)
    limiter = TokenBucket(rate, BURST)
    opened: dict[str | None, Store] = {}
    directory = directory or spool_dir()
    done = left = 0
    for path in sorted(directory.glob("*.jsonl")) if directory.is_dir() else []:
        fd = lock_if_free(path)
        if fd is None:
            continue
        try:
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
            if uri not in opened:
                opened[uri] = stores(uri)
            sink = MlflowSink(
                header.get("run_id"),
                opened[uri],
                create=header.get("create"),
                flush_interval_s=0,
                spool=False,
                echo=None,
                limiter=limiter,
            )
            sink.enqueue(entities)
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
        finally:
            os.close(fd)
    return done, left


def replay_leftovers_in_background(echo: Any = sys.stderr) -> Callable[[float], None] | None:
    """Start replaying spool files left by earlier jobs of this user (said on ``echo``), in a
    background thread so the caller's own work is not delayed. Returns a ``wait(timeout_s)`` to
    call before the process exits, or None when there is nothing to replay."""
    directory = spool_dir()
    files = leftover_spools(directory)
    if not files:
        return None
    print(f"wattsup: replaying {len(files)} spool file(s) left by earlier runs in {directory}", file=echo)
    thread = threading.Thread(target=replay_spools, args=(directory, None, echo), daemon=True)
    thread.start()

    def wait(timeout_s: float) -> None:
        thread.join(timeout_s)

    return wait
