"""No pickle from elsewhere is ever loaded with plain pickle: the only unpickling in the package is
the restricted one, and torch checkpoints are read with weights_only."""

import ast

from support.paths import REPO

PKG = REPO / "mlflow_wattsup"


def calls(tree):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            base = node.func.value
            yield (base.id if isinstance(base, ast.Name) else ""), node.func.attr, node


def test_no_plain_unpickling():
    for path in PKG.rglob("*.py"):
        if path.name == "safe_pickle.py":
            continue
        tree = ast.parse(path.read_text())
        for base, attr, node in calls(tree):
            assert not (base in ("pickle", "cloudpickle", "dill", "joblib") and attr in ("load", "loads")), (
                f"{path.name}:{node.lineno} unpickles with {base}.{attr}"
            )
            if base == "torch" and attr == "load":
                kw = {k.arg: k.value for k in node.keywords}
                assert "weights_only" in kw and getattr(kw["weights_only"], "value", None) is True, (
                    f"{path.name}:{node.lineno} torch.load without weights_only=True"
                )


def test_models_are_logged_as_pt2_not_pickle():
    src = (PKG / "projects" / "segmentation.py").read_text()
    assert 'serialization_format="pt2"' in src
