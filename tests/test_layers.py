"""The architecture of DEVELOPERS.md, enforced: each layer imports only from the layers above it,
and nothing below the MLflow layer imports MLflow."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mlflow_wattsup"
LAYER_2 = {"carbon", "flops", "dice", "labels", "models", "pipelines", "importers"}
HEAVY_BELOW_4 = ("mlflow", "matplotlib", "pandas")


def layer_of(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top == "meters":
        return 1
    if top in LAYER_2:
        return 2
    if top == "tracker":
        return 3
    return 4


def modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        name = ".".join(rel.parts).removesuffix(".__init__")
        yield name, path


def imports_of(name: str, path: Path):
    tree = ast.parse(path.read_text())
    pkg = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:
                    for a in node.names:
                        yield f"{target}.{a.name}"
                    continue
                yield target
            else:
                yield node.module


@pytest.mark.parametrize("name, path", list(modules()), ids=lambda x: str(x))
def test_layering(name, path):
    mine = layer_of(name)
    for imp in imports_of(name, path):
        if imp.startswith("mlflow_wattsup"):
            if imp == "mlflow_wattsup":
                continue  # the package itself (version)
            assert layer_of(imp) <= mine, f"{name} (layer {mine}) imports {imp} (layer {layer_of(imp)})"
        elif mine < 4:
            assert not imp.split(".")[0] in HEAVY_BELOW_4, f"{name} (layer {mine}) imports {imp}"


def test_meters_import_without_mlflow():
    import subprocess
    import sys

    code = ("import sys, mlflow_wattsup.meters.rapl, mlflow_wattsup.meters.nvml, mlflow_wattsup.meters.proctree, "
            "mlflow_wattsup.meters.estimator, mlflow_wattsup.tracker, mlflow_wattsup.carbon; "
            "assert 'mlflow' not in sys.modules, 'mlflow imported'")  # fmt: skip
    subprocess.run([sys.executable, "-c", code], check=True)
