"""The architecture (docs/architecture.md), enforced over the package's import graph (every import,
function-local ones included): each folder is a layer (``mlflow_wattsup.LAYERS``, lowest first), a
module imports only from its own folder and the folders below it, nothing below ``sink`` imports
MLflow, and the graph of module imports has no cycle."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import mlflow_wattsup

PKG = Path(mlflow_wattsup.__file__).resolve().parent
LAYERS = {name: i for i, name in enumerate(mlflow_wattsup.LAYERS, 1)}
TOP = {"mlflow_wattsup": 0, "mlflow_wattsup.__main__": len(LAYERS) + 1}  # the package, `python -m`
#: what a layer below ``sink`` must not import (they are MLflow, or heavy enough to matter at start)
HEAVY_BELOW_SINK = ("mlflow", "matplotlib", "pandas")


def layer_of(module: str) -> int:
    if module in TOP:
        return TOP[module]
    parts = module.split(".")
    assert len(parts) > 1 and parts[1] in LAYERS, f"{module} is in no layer's folder ({', '.join(LAYERS)})"
    return LAYERS[parts[1]]


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG.parent).with_suffix("")
        out[".".join(rel.parts).removesuffix(".__init__")] = path
    return out


MODULES = modules()


def imports_of(name: str, path: Path):
    """Every module ``name`` imports, anywhere in its body; ``from pkg import sub`` counts as
    importing the submodule where ``sub`` is one."""
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
            else:
                target = node.module
            subs = [f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in MODULES]
            yield from subs
            if len(subs) < len(node.names):
                yield target


def graph() -> dict[str, set[str]]:
    return {
        name: {imp for imp in imports_of(name, path) if imp in MODULES and imp != name}
        for name, path in MODULES.items()
    }


@pytest.mark.parametrize("name", sorted(MODULES))
def test_layering(name):
    mine = layer_of(name)
    for imp in imports_of(name, MODULES[name]):
        if imp.startswith("mlflow_wattsup.") or imp == "mlflow_wattsup":
            assert imp == "mlflow_wattsup" or imp in MODULES, f"{name} imports {imp}, which does not exist"
            assert layer_of(imp) <= mine, f"{name} (layer {mine}) imports {imp} (layer {layer_of(imp)})"
        elif mine < LAYERS["sink"]:
            assert imp.split(".")[0] not in HEAVY_BELOW_SINK, f"{name} (layer {mine}) imports {imp}"


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of ``g`` that hold more than one module."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while (w := stack.pop()) != v:
                on.discard(w)
                comp.append(w)
            on.discard(v)
            if comp:
                found.append(sorted([v, *comp]))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(graph()) == [], "import cycles (function-local imports included)"


def test_the_cycle_check_sees_cycles():
    """Not vacuous: a circle of three and a self-contained pair are found, a chain is not."""
    g = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"e"}, "e": {"d"}, "f": {"a"}}
    assert sorted(cycles(g)) == [["a", "b", "c"], ["d", "e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_meters_import_without_mlflow():
    code = (
        "import sys, mlflow_wattsup.meters.rapl, mlflow_wattsup.meters.nvml, mlflow_wattsup.meters.proctree, "
        "mlflow_wattsup.meters.estimator, mlflow_wattsup.tracking.tracker, mlflow_wattsup.analysis.carbon; "
        "assert 'mlflow' not in sys.modules, 'mlflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_module_sits_in_a_layer_folder():
    strays = [name for name in MODULES if name not in TOP and name.split(".")[1] not in LAYERS]
    assert not strays, f"modules outside the layer folders: {strays}"
    folders = {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders == set(LAYERS), f"folders {sorted(folders)} vs mlflow_wattsup.LAYERS {sorted(LAYERS)}"


def test_no_layer_prefix_in_docstrings():
    """The folder says the layer; a docstring that says it by hand goes stale."""
    stale = [
        n
        for n, p in MODULES.items()
        if (ast.get_docstring(ast.parse(p.read_text())) or "").startswith("Layer ")
    ]
    assert not stale, stale
