"""The README and docs/ hold together: every relative link and anchor resolves, every module path
and repository path they name exists, the MLproject commands call modules that exist, and the two
set-up commands sit under the markers `.ci/run` reads."""

import ast
import re
from pathlib import Path

import pytest
from support.paths import REPO

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md"))]
MLPROJECTS = sorted(p for p in [REPO / "MLproject", *(REPO / "projects").glob("*/MLproject")] if p.is_file())
PKG = REPO / "mlflow_wattsup"

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^\s*(```|~~~)")
INLINE_CODE = re.compile(r"`[^`]*`")
MODULE_REF = re.compile(r"\bmlflow_wattsup(?:\.[A-Za-z_]\w*)+(?::[A-Za-z_]\w*)?")
REPO_PATH = re.compile(r"`((?:mlflow_wattsup|tests|benchmarks|scripts|projects|docs|\.ci)/[\w./-]*)`")


def prose_lines(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    out, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append(line)
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (``_`` and ``-`` kept),
    spaces to ``-``."""
    text = heading.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in prose_lines(page.read_text()):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    found = []
    for line in prose_lines(page.read_text()):
        found += LINK.findall(INLINE_CODE.sub("", line))
    return found


def test_the_manual_pages_exist():
    docs = {p.name for p in PAGES if p.parent.name == "docs"}
    needed = {"README.md", "metrics.md", "pipelines.md", "studies.md", "distributed.md", "ui.md"}
    assert needed | {"configuration.md", "architecture.md"} <= docs


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_and_anchors_resolve(page):
    bad = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no file {dest}")
        elif anchor and (dest.suffix != ".md" or anchor not in anchors(dest)):
            bad.append(f"{target}: no heading #{anchor} in {dest.relative_to(REPO)}")
    assert not bad, f"{page.relative_to(REPO)}:\n" + "\n".join(bad)


def test_images_are_small():
    for page in PAGES:
        for target in links(page):
            if target.endswith((".png", ".jpg", ".svg", ".gif")) and "://" not in target:
                image = (page.parent / target).resolve()
                assert image.stat().st_size < 300_000, f"{target} in {page.name}: keep images under 300 KB"


def top_level_names(module: Path) -> set[str]:
    tree = ast.parse(module.read_text())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    if "__all__" in names:  # lazy attributes (the package's __getattr__) are listed there
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
                names.update(ast.literal_eval(node.value))
    return names


def module_file(parts: list[str]) -> Path | None:
    base = REPO.joinpath(*parts)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def resolves(ref: str) -> bool:
    """``a.b.c`` (a module, or a module's top-level name) or ``a.b:name``."""
    dotted, _, attr = ref.partition(":")
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        module = module_file(parts[:i])
        if module is None:
            continue
        rest = parts[i:] + ([attr] if attr else [])
        return not rest or (len(rest) == 1 and rest[0] in top_level_names(module))
    return False


def test_module_paths_named_in_docs_and_mlprojects_exist():
    bad = []
    for page in [*PAGES, *MLPROJECTS]:
        for ref in sorted(set(MODULE_REF.findall(page.read_text()))):
            if not resolves(ref):
                bad.append(f"{page.relative_to(REPO)}: {ref}")
    assert not bad, "module paths that do not exist:\n" + "\n".join(bad)


def test_mlproject_commands_call_existing_modules():
    commands = 0
    for mlproject in MLPROJECTS:
        for module in re.findall(r"python -m ([\w.]+)", mlproject.read_text()):
            commands += 1
            assert module_file(module.split(".")), f"{mlproject.relative_to(REPO)}: no module {module}"
    assert commands >= 7  # the demo, 4 segmentation entry points, fastsurfer, freesurfer


def test_repository_paths_named_in_docs_exist():
    bad = []
    for page in PAGES:
        for path in sorted(set(REPO_PATH.findall(page.read_text()))):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if "." in name and not name.endswith((".py", ".md", ".png")):
                continue  # a file of a pipeline's output (scripts/recon-all.log), not of this repository
            if not (REPO / path).exists():
                bad.append(f"{page.relative_to(REPO)}: {path}")
    assert not bad, "paths that do not exist:\n" + "\n".join(bad)


def block_after(marker: str) -> list[str]:
    """The lines of the fenced block right after ``marker`` (as `.ci/run` reads it)."""
    lines = README.read_text().splitlines()
    assert lines.count(marker) == 1, f"README.md needs exactly one {marker}"
    i = lines.index(marker) + 1
    assert lines[i] == "```bash", f"README.md: {marker} must be followed by a ```bash block"
    end = lines.index("```", i + 1)
    return lines[i + 1 : end]


def test_readme_set_up_commands_under_their_markers():
    main = block_after("<!-- main-command -->")
    test = block_after("<!-- test-command -->")
    assert len(main) == 1 and len(test) == 1, "each set-up command is one line"
    assert "pip install -e '.[demo]'" in main[0]
    assert "mlflow run . --env-manager local --experiment-name wattsup-demo" in main[0]
    assert (
        test[0] == "python3 -m venv .venv && .venv/bin/pip install -e '.[test]' && .venv/bin/python -m pytest"
    )


def test_ci_reads_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert "<!-- test-command -->" in ci and "README.md" in ci


def test_the_checker_catches_a_broken_link_and_a_missing_module(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [bad](#nope) [gone](missing.md)\n```\n[in code](x.md)\n```\n")
    assert links(page) == ["#title", "#nope", "missing.md"]
    assert anchors(page) == {"title"}
    assert slug("Volumes, thickness (`log_agreement`; step 0)") == "volumes-thickness-log_agreement-step-0"
    assert resolves("mlflow_wattsup.projects.demo")
    assert resolves("mlflow_wattsup.track")
    assert not resolves("mlflow_wattsup.no_such_folder.projects.demo")
    assert not resolves("mlflow_wattsup.projects.demo:no_such_name")
