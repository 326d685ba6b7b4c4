"""The start-of-run notes (how energy will be obtained, carbon fallbacks), said one way
by every entry path. Cheap to import."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("mlflow_wattsup")
_said: set[str] = set()


def say(notes: Sequence[str | None], echo: Any = sys.stderr, once: bool = False) -> None:
    """Print start-of-run notes as ``wattsup: <note>`` (``echo=None``: as warnings of the
    ``mlflow_wattsup`` logger); ``once``: each note once per process (decorated functions)."""
    for note in notes:
        if not note or (once and note in _said):
            continue
        _said.add(note)
        if echo is None:
            log.warning(note)
        else:
            print(f"wattsup: {note}", file=echo)
