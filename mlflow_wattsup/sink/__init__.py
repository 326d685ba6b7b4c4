"""Everything we write to MLflow goes through here.

- :mod:`.transport` - the tracking-store calls (fail fast; the only place runs and experiments
  are created)
- :mod:`.writer` - :class:`MlflowSink`, the queue and writer thread of one run
- :mod:`.spool` - spool files: what could not be delivered yet (importing it does not import MLflow)
- :mod:`.replay` - sending spool files to the store once it answers
- :mod:`.keys` - every metric, param and tag name we log
"""

import importlib

_EXPORTS = {
    "MlflowSink": "writer",
    "Store": "transport",
    "unreachable": "transport",
    "replay_spools": "replay",
    "spool_dir": "spool",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):  # lazy, so that `sink.spool` stays cheap to import
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
