"""tests/ mirrors the package: a test module never imports another test module (or a conftest);
what tests share is a fixture in a conftest.py or a helper in the ``support`` package."""

import ast

from support.paths import TESTS


def test_no_test_module_imports_another():
    """Even inside a function: an imported test module runs its tests twice and hides a dependency."""
    bad = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                names = [node.module]
            bad += [
                f"{path.relative_to(TESTS)}:{node.lineno}: {n}"
                for n in names
                if n.split(".")[-1].startswith(("test_", "conftest"))
            ]
    assert not bad, "test modules importing test modules:\n" + "\n".join(bad)


def test_tests_mirror_the_package():
    """Every test folder is a package folder, the repository's benchmarks/, support/ or integration/."""
    import mlflow_wattsup

    allowed = set(mlflow_wattsup.LAYERS) | {"support", "integration", "benchmarks", "__pycache__"}
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and not p.name.startswith(".")}
    assert folders <= allowed, sorted(folders - allowed)
