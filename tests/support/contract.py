"""Shared by several tests (moved out of test_contract.py so that no test module imports another)."""

import re

from support.paths import REPO

DOC = REPO / "docs" / "metrics.md"


def pattern(key):
    parts = re.split(r"(<[a-z_]+>)", key)
    return re.compile("".join(r"[^/]+" if p.startswith("<") else re.escape(p) for p in parts) + "$")


def documented():
    """Backticked keys in the first column of the tables; <placeholders> match one segment."""
    keys = set()
    for line in DOC.read_text().splitlines():
        if line.startswith("| `"):
            keys.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return keys


def undocumented(keys, doc):
    pats = [pattern(k) for k in doc]
    return sorted(k for k in keys if not k.startswith("mlflow.") and not any(p.match(k) for p in pats))
