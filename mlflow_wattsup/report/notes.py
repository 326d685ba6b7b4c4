"""A run's description as MLflow keeps it (the ``mlflow.note.content`` tag, markdown), written so
that a user's is never overwritten.

Ours ends with a hidden marker, ``<!-- wattsup:auto <digest> -->`` (MLflow's renderer drops HTML
comments), where the digest is over the text before it: a note without the marker, or whose text
no longer matches it, is the user's and is left alone. Ours is rewritten freely (e.g. once more
metrics are in). What goes in it: :mod:`.run_note` (one run), :mod:`.parent_note` (a parent and
its child runs).
"""

from __future__ import annotations

import hashlib
import re
import sys
from collections.abc import Callable, Mapping

NOTE_TAG = "mlflow.note.content"
MARKER = re.compile(r"\n?<!-- wattsup:auto ([0-9a-f]{16}) -->\s*$")
#: MLflow refuses tag values over 8000 characters; leave room for multi-byte characters
NOTE_MAX_CHARS = 7000


def md(text: object) -> str:
    """Text safe inside a markdown table cell or list item."""
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


def footer(version: str | None, source: str) -> str:
    """The note's last line: who wrote it from what, and that a user may edit it."""
    by = f"mlflow-wattsup {version}" if version else "mlflow-wattsup"
    return (
        f"_Written by {by} from {source}. Energy is IT energy; carbon applies PUE. "
        "Edit this text freely: a description you change is never overwritten._"
    )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def mark(text: str) -> str:
    """``text`` with our hidden marker appended."""
    text = text.rstrip("\n") + "\n"
    return f"{text}\n<!-- wattsup:auto {_digest(text)} -->\n"


def note_owner(note: str | None) -> str:
    """``none`` (no description), ``ours`` (written by us, unchanged since) or ``user``."""
    if not note or not note.strip():
        return "none"
    found = MARKER.search(note)
    if found and _digest(note[: found.start()].rstrip("\n") + "\n") == found.group(1):
        return "ours"
    return "user"


def note_value(text: str, tags: Mapping[str, str]) -> str | None:
    """The ``mlflow.note.content`` value that writes ``text`` as the description of a run with
    ``tags`` (cut to what MLflow takes, our marker added); None when a user wrote the run's
    description (it is kept)."""
    if note_owner(tags.get(NOTE_TAG)) == "user":
        return None
    if len(text) > NOTE_MAX_CHARS:
        text = text[: NOTE_MAX_CHARS - 80].rsplit("\n", 1)[0] + "\n\n_(cut here: see the run's artifacts)_\n"
    return mark(text)


def write_note(client, run_id: str, text: str, tags: Mapping[str, str] | None = None) -> bool:
    """Set the run's description to ``text`` unless a user wrote one; True if written.
    ``client``: an ``MlflowClient`` or a :class:`~mlflow_wattsup.sink.transport.Store` (any
    object with ``get_run`` and ``set_tag``)."""
    if tags is None:
        tags = client.get_run(run_id).data.tags
    value = note_value(text, tags)
    if value is None:
        return False
    client.set_tag(run_id, NOTE_TAG, value)
    return True


def describe_or_warn(
    describe: Callable[..., bool], client, run_id: str | None, *args, prog: str = "wattsup"
) -> bool:
    """``describe(client, run_id, *args)`` (:func:`.run_note.describe_run`,
    :func:`.parent_note.describe_parent`) that never raises: the run's measurements are already
    logged, so a description that cannot be written is one line on stderr. True if written."""
    if not run_id:
        return False
    try:
        return describe(client, run_id, *args)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"{prog}: run {run_id}: description not written ({type(exc).__name__}: {first})", file=sys.stderr
        )
        return False
