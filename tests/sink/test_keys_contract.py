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
