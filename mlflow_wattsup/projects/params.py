"""Parameter validation for the project entry points: every bad value is one clear line.

MLflow does not validate ``int``/``float`` params, and resolves ``path`` params against the
directory ``mlflow run`` was started from only if they already exist. Our entry points take
paths as strings and resolve relative ones the same way, against that launch directory (see
:func:`launch_dir`; ``WATTSUP_LAUNCH_DIR`` overrides).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterable
from functools import wraps
from pathlib import Path

EXIT_PARAM = 2
NONE_VALUES = ("", "none", "None", "null")


class ParamError(ValueError):
    """A bad parameter; ``str(exc)`` names it and says what is expected."""


def launch_dir() -> Path:
    """Where the user started ``mlflow run``: relative paths are taken from there.

    Under ``mlflow run`` (``MLFLOW_RUN_ID`` set) the entry point runs in the project directory;
    the launch directory is the working directory of the ``mlflow`` process above us (skipping
    shells that run in the project directory, as with conda). Started directly, it is ours.
    """
    env = os.environ.get("WATTSUP_LAUNCH_DIR")
    if env:
        return Path(env)
    here = Path.cwd().resolve()
    if not os.environ.get("MLFLOW_RUN_ID"):
        return here
    try:
        import psutil

        for proc in psutil.Process().parents()[:6]:
            cwd = Path(proc.cwd()).resolve()
            if cwd == here:
                continue
            if any("mlflow" in part for part in proc.cmdline()):
                return cwd
            break
    except Exception:  # no psutil access to the parent (other user, container): use ours
        pass
    return here


def is_none(value: object) -> bool:
    return value is None or str(value).strip() in NONE_VALUES


def path_param(name: str, value: object, *, must_exist: bool = True, kind: str = "file") -> Path | None:
    """``value`` as an absolute path (relative ones against the launch directory); None if empty."""
    if is_none(value):
        return None
    p = Path(os.path.expanduser(str(value)))
    if not p.is_absolute():
        p = launch_dir() / p
    if must_exist:
        if not p.exists():
            raise ParamError(f"{name}={value}: no such {kind} ({p})")
        if kind == "file" and not p.is_file():
            raise ParamError(f"{name}={value}: is not a file ({p})")
        if kind == "directory" and not p.is_dir():
            raise ParamError(f"{name}={value}: is not a directory ({p})")
    return p


def int_param(name: str, value: object, minimum: int = 1, maximum: int | None = None) -> int:
    try:
        v = int(str(value).strip())
    except ValueError:
        raise ParamError(f"{name}={value!r} is not an integer; use e.g. {name}={minimum}") from None
    if v < minimum or (maximum is not None and v > maximum):
        bound = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        raise ParamError(f"{name}={v} must be {bound}")
    return v


def float_param(name: str, value: object, minimum: float = 0.0) -> float:
    try:
        v = float(str(value).strip())
    except ValueError:
        raise ParamError(f"{name}={value!r} is not a number") from None
    if not v == v or v in (float("inf"), float("-inf")) or v < minimum:
        raise ParamError(f"{name}={value!r} must be a finite number >= {minimum:g}")
    return v


def choice_param(name: str, value: object, choices: Iterable[str]) -> str:
    v = str(value).strip()
    options = list(choices)
    if v not in options:
        raise ParamError(f"{name}={value!r} is not one of {', '.join(options)}")
    return v


def name_param(name: str, value: object) -> str:
    """A subject ID or similar: non-empty, no path separators."""
    v = str(value).strip()
    if not v or not re.fullmatch(r"[A-Za-z0-9._\-]+", v) or v in (".", ".."):
        raise ParamError(f"{name}={value!r} must be a non-empty name of letters, digits, '.', '_', '-'")
    return v


def entry_point(prog: str) -> Callable:
    """Decorate a ``main(argv) -> int``: parameter and input errors become one line and exit 2."""

    def deco(fn: Callable[..., int]) -> Callable[..., int]:
        @wraps(fn)
        def wrapper(argv=None) -> int:
            from mlflow_wattsup.analysis.carbon import CarbonConfigError
            from mlflow_wattsup.analysis.dice import DiceInputError
            from mlflow_wattsup.meters.estimator import EstimatorConfigError

            try:
                return int(fn(argv) or 0)
            except (ParamError, CarbonConfigError, EstimatorConfigError, DiceInputError) as exc:
                if os.environ.get("WATTSUP_DEBUG"):
                    raise
                print(f"{prog}: error: {exc}", file=sys.stderr)
                return EXIT_PARAM

        return wrapper

    return deco
