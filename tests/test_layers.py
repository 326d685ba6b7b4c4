"""The architecture of DEVELOPERS.md, enforced: each layer imports only from the layers above it,
and nothing below the MLflow layer imports MLflow."""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "mlflow_wattsup"
#: the package's folders are its layers (DEVELOPERS.md); a module anywhere else fails
LAYERS = {"meters": 1, "analysis": 2, "tracking": 3, "mlflow_layer": 4}
TOP_LEVEL = {"mlflow_wattsup", "mlflow_wattsup.__main__"}  # the package itself and `python -m`
HEAVY_BELOW_4 = ("mlflow", "matplotlib", "pandas")


def layer_of(module: str) -> int:
    parts = module.split(".")
    if module in TOP_LEVEL:
        return 4 if module.endswith("__main__") else 0
    assert len(parts) > 1 and parts[1] in LAYERS, f"{module} is in no layer's folder ({', '.join(LAYERS)})"
    return LAYERS[parts[1]]


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
            assert imp.split(".")[1] not in __import__("mlflow_wattsup")._MOVED, (
                f"{name} imports {imp} by its old path"
            )
            assert layer_of(imp) <= mine, f"{name} (layer {mine}) imports {imp} (layer {layer_of(imp)})"
        elif mine < 4:
            assert imp.split(".")[0] not in HEAVY_BELOW_4, f"{name} (layer {mine}) imports {imp}"


def test_meters_import_without_mlflow():
    import subprocess
    import sys

    code = (
        "import sys, mlflow_wattsup.meters.rapl, mlflow_wattsup.meters.nvml, mlflow_wattsup.meters.proctree, "
        "mlflow_wattsup.meters.estimator, mlflow_wattsup.tracking.tracker, mlflow_wattsup.analysis.carbon; "
        "assert 'mlflow' not in sys.modules, 'mlflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_module_sits_in_a_layer_folder():
    strays = [name for name, _ in modules() if name not in TOP_LEVEL and name.split(".")[1] not in LAYERS]
    assert not strays, f"modules outside the layer folders: {strays}"


def test_old_module_paths_still_import():
    import mlflow_wattsup.dice as old
    import mlflow_wattsup.report as report
    from mlflow_wattsup.models.fastsurfer_cnn import FastSurferCNN

    import mlflow_wattsup.analysis.dice as new

    assert old is new and old.__spec__.name == "mlflow_wattsup.analysis.dice"
    assert report.__name__ == "mlflow_wattsup.mlflow_layer.report"
    assert FastSurferCNN.__module__ == "mlflow_wattsup.analysis.models.fastsurfer_cnn"
