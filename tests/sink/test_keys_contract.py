"""docs/metrics.md is the public list of keys: everything we log must be on it."""

import re
import sys

from support.contract import documented, undocumented
from support.helpers import only_run, wattsup
from support.paths import REPO


def test_every_logged_key_is_documented(tracking_uri, client, experiment, tmp_path):
    doc = documented()
    assert {"energy_kwh", "carbon_g", "wattsup.source.cpu", "stage/<name>/energy_kwh"} <= doc
    r = wattsup(
        "run",
        "--experiment",
        experiment,
        "--quiet",
        "--tag",
        "user=me",
        "--",
        sys.executable,
        "-c",
        "sum(range(10**6))",
    )
    assert r.returncode == 0, r.stderr
    import numpy as np

    import mlflow_wattsup
    from mlflow_wattsup.analysis.dice import dice

    with mlflow_wattsup.track(experiment=experiment + "-py") as t:
        with t.stage("a"):
            pass
        ep = t.epochs(planned=2)
        with ep.epoch():
            ep.step()
        t.log_dice(
            dice(
                np.array([[[1, 2, 9999]]]),
                np.array([[[1, 2, 3]]]),
                labels=[1, 2, 3, 4],
                merge=[(9999, 9999, 3)],
            )
        )
        t.log_dice(dice(np.array([[[1, 2]]]), np.array([[[1, 2]]])), prefix="dice_aseg")
        torch = __import__("pytest").importorskip("torch")
        t.log_model_cost(torch.nn.Linear(2, 2), (1, 2), samples_seen=10)
    for run in (only_run(client, experiment), only_run(client, experiment + "-py")):
        logged = set(run.data.metrics) | set(run.data.params) | {k for k in run.data.tags if k != "user"}
        assert undocumented(logged, doc) == []


def test_checker_catches_an_undocumented_key():
    assert undocumented({"energy_kwh", "stage/x/energy_kwh", "energy_total_j"}, documented()) == [
        "energy_total_j"
    ]


def test_key_names_are_spelled_only_in_the_keys_module():
    """Every `wattsup.*` tag/param name is owned by sink/keys.py (docs/metrics.md's code
    side): a literal key elsewhere in the package is a second spelling that can drift."""
    import ast

    pkg = REPO / "mlflow_wattsup"
    key_like = re.compile(r"^wattsup\.[a-z_][a-z0-9_.{}]*$")
    found = []
    for path in sorted(pkg.rglob("*.py")):
        if path == pkg / "sink" / "keys.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and key_like.match(node.value):
                found.append(f"{path.relative_to(pkg)}:{node.lineno}: {node.value}")
    assert not found, "key names spelled outside sink/keys.py:\n" + "\n".join(found)


def test_no_module_aliases_a_key_or_builds_one_from_the_prefix():
    """A key under a second name (``TAG_X = keys.X``) or spelled from the bare prefix
    (``keys.PREFIX + "cpu_model"``, ``f"{keys.PREFIX}dice.names"``) is a second spelling too:
    callers use ``keys.X`` or a builder of sink/keys.py."""
    import ast

    def is_keys_attr(node, name=None):
        return (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "keys"
            and (name is None or node.attr == name)
        )

    pkg = REPO / "mlflow_wattsup"
    found = []
    for path in sorted(pkg.rglob("*.py")):
        if path == pkg / "sink" / "keys.py":
            continue
        tree = ast.parse(path.read_text())
        scopes = [tree] + [n for n in ast.walk(tree) if isinstance(n, ast.ClassDef)]
        for scope in scopes:
            for node in scope.body:
                if isinstance(node, ast.Assign) and is_keys_attr(node.value):
                    found.append(f"{path.relative_to(pkg)}:{node.lineno}: alias of keys.{node.value.attr}")
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.BinOp)
                and is_keys_attr(node.left, "PREFIX")
                and isinstance(node.right, ast.Constant)
                and re.match(r"[a-z_]", str(node.right.value))  # a key, not a SQL pattern
            ):
                found.append(f"{path.relative_to(pkg)}:{node.lineno}: keys.PREFIX + {node.right.value!r}")
            if isinstance(node, ast.JoinedStr):
                parts = node.values
                for a, b in zip(parts, parts[1:], strict=False):
                    if isinstance(a, ast.FormattedValue) and is_keys_attr(a.value, "PREFIX"):
                        if isinstance(b, ast.Constant) and re.match(r"[a-z_]", str(b.value)):
                            found.append(
                                f"{path.relative_to(pkg)}:{node.lineno}: f'{{keys.PREFIX}}{b.value}'"
                            )
    assert not found, "keys aliased or spelled outside sink/keys.py:\n" + "\n".join(found)
