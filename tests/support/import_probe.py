"""Which modules a Python process imported: a ``sitecustomize`` put on ``PYTHONPATH`` that, at
the process's exit, appends one JSON line per process (pid, argv, the ``mlflow`` modules, and
heavy libraries a short job should not load) to ``$IMPORT_PROBE_OUT``."""

import json
import os
from pathlib import Path

HEAVY = ("pandas", "numpy", "matplotlib", "pyarrow", "sqlalchemy", "git")

_SITECUSTOMIZE = """
import atexit, json, os, sys
def _probe_report():
    mlflow = sorted(m for m in sys.modules if m == "mlflow" or m.startswith("mlflow."))
    heavy = sorted(m for m in {heavy!r} if m in sys.modules)
    with open(os.environ["IMPORT_PROBE_OUT"], "a") as f:
        f.write(json.dumps({{"pid": os.getpid(), "argv": sys.argv, "mlflow": mlflow, "heavy": heavy}}) + "\\n")
if os.environ.get("IMPORT_PROBE_OUT"):
    atexit.register(_probe_report)
"""


def probe_env(tmp: Path, env: dict | None = None) -> tuple[dict, Path]:
    """An environment whose Python processes report their imports, and the report file."""
    d = Path(tmp) / "probe"
    d.mkdir(parents=True, exist_ok=True)
    (d / "sitecustomize.py").write_text(_SITECUSTOMIZE.format(heavy=HEAVY))
    out = d / "imports.jsonl"
    base = dict(os.environ if env is None else env)
    path = [str(d)] + ([base["PYTHONPATH"]] if base.get("PYTHONPATH") else [])
    return {**base, "PYTHONPATH": os.pathsep.join(path), "IMPORT_PROBE_OUT": str(out)}, out


def read_probe(out: Path) -> list[dict]:
    """The reports, one per Python process that exited normally."""
    return [json.loads(line) for line in Path(out).read_text().splitlines()] if Path(out).exists() else []
