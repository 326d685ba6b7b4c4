"""Read pickles from other tools without executing their code.

A pickle names classes (``GLOBAL module name``) that plain ``pickle.load`` imports and calls: a
malicious or merely foreign file (experiment-impact-tracker's ``info.pkl`` holds shapely shapes
and pkg_resources objects) runs code or fails. :func:`load` rebuilds only plain values -
``dict``, ``list``, ``tuple``, ``set``, ``str``, numbers, ``bytes`` (also protocol 2's
latin-1 ``_codecs.encode`` form), ``datetime``/``date``/``timedelta``/``timezone`` - and turns
every other class into an inert :class:`Opaque` record of its name and arguments. No module is
imported, no foreign ``__reduce__``/``__setstate__`` runs.
"""

from __future__ import annotations

import datetime as _dt
import io
import pickle
from typing import Any

_SAFE = {
    ("datetime", "datetime"): _dt.datetime,
    ("datetime", "date"): _dt.date,
    ("datetime", "time"): _dt.time,
    ("datetime", "timedelta"): _dt.timedelta,
    ("datetime", "timezone"): _dt.timezone,
    ("collections", "OrderedDict"): dict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "list"): list,
    ("builtins", "dict"): dict,
    ("builtins", "tuple"): tuple,
    ("__builtin__", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
}


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it to store bytes (latin-1 text only)."""
    if encoding.lower().replace("-", "") not in ("latin1", "iso88591"):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with {encoding!r}")
    return text.encode("latin1")


class UnsafePickleError(ValueError):
    """The file is not a readable pickle; ``str(exc)`` is one line."""


class Opaque:
    """Stand-in for an object of a class we do not load: ``cls_name``, ``args``, ``state``."""

    cls_name = "?"

    def __init__(self, *args, **kwargs):
        self.args = args
        self.kwargs = kwargs
        self.state: Any = None

    def __setstate__(self, state):  # BUILD
        self.state = state

    def __setitem__(self, key, value):  # SETITEM(S) on a dict subclass
        if not isinstance(self.state, dict):
            self.state = {}
        self.state[key] = value

    def append(self, value):  # APPEND(S) on a list subclass
        if not isinstance(self.state, list):
            self.state = []
        self.state.append(value)

    def extend(self, values):
        for v in values:
            self.append(v)

    def __repr__(self):
        return f"<Opaque {self.cls_name}>"


def _opaque_class(module: str, name: str) -> type:
    return type(name, (Opaque,), {"cls_name": f"{module}.{name}"})


def _reconstructor(cls, base, state=None):
    """copyreg._reconstructor, restricted to our stand-ins and plain bases."""
    if isinstance(cls, type) and issubclass(cls, Opaque):
        return cls()
    if cls in (dict, list, set, tuple, object):
        return cls() if cls is not object else Opaque()
    raise pickle.UnpicklingError(f"refusing to reconstruct {cls!r}")


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _SAFE:
            return _SAFE[(module, name)]
        if (module, name) == ("_codecs", "encode"):
            return _latin1_encode
        if (module, name) == ("copyreg", "_reconstructor") or (module, name) == (
            "copy_reg",
            "_reconstructor",
        ):
            return _reconstructor
        if (module, name) in (("builtins", "object"), ("__builtin__", "object")):
            return object
        return _opaque_class(module, name)

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not supported")


def load(data: bytes | io.BufferedIOBase, what: str = "pickle") -> Any:
    """Unpickle ``data`` (bytes or a binary file) with the restrictions above."""
    f = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else data
    try:
        return _Unpickler(f).load()
    except Exception as exc:  # truncated, corrupt, or refused
        detail = " ".join(str(exc).splitlines())  # it may quote the data, line breaks included
        raise UnsafePickleError(f"{what}: not a readable pickle ({type(exc).__name__}: {detail})") from None
