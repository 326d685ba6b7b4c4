"""Shared by several tests (moved out of test_projects.py so that no test module imports another)."""

import os
import sys
from pathlib import Path

BIN = Path(sys.executable).parent


def mlflow_run(project, *params, entry=None, cwd, env=None, timeout=600):
    import subprocess

    cmd = [str(BIN / "mlflow"), "run", str(project), "--env-manager", "local"]
    if entry:
        cmd += ["-e", entry]
    for p in params:
        cmd += ["-P", p]
    e = dict(os.environ)
    e.update(env or {})
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"  # `python` in the MLproject commands is ours
    return subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout)


def runs_in(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no experiment {experiment}"
    return client.search_runs([exp.experiment_id])


def our_lines(stderr, prog):
    return [ln for ln in stderr.splitlines() if ln.startswith(f"{prog}:")]


def install_stub(source: Path, target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"#!{sys.executable}\n" + source.read_text())
    target.chmod(0o755)
    return target
