"""Shared by several tests (moved out of test_study.py so that no test module imports another)."""

import sys
from pathlib import Path

STUB_SCRIPT = """\
import os, sys, time, pathlib
sid, name, burn_s = sys.argv[1], sys.argv[2], float(sys.argv[3])
ctrl = pathlib.Path(os.environ["STUB_CONTROL"])
(ctrl / f"ran-{name}-{sid}-{os.environ['MLFLOW_RUN_ID']}").write_text(os.environ.get("CUDA_VISIBLE_DEVICES", "-"))
if (ctrl / f"fail-{name}-{sid}").exists():
    sys.exit(3)
if (ctrl / f"hang-{name}-{sid}").exists():
    (ctrl / f"hanging-{name}-{sid}").write_text(str(os.getpid()))
    time.sleep(600)
end = time.process_time() + burn_s
while time.process_time() < end:
    sum(range(10000))
"""


def stub_project(root: Path) -> Path:
    """An MLflow Project with entry points `seg` (plain) and `tracked` (under `wattsup run`, so it
    logs energy); both take t1, sid, device, name, burn_s."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "stub_pipeline.py").write_text(STUB_SCRIPT)
    py = sys.executable
    params = "".join(
        f"      {k}: {v}\n"
        for k, v in (
            ("t1", "{type: string}"),
            ("sid", "{type: string}"),
            ("device", "{type: string, default: cpu}"),
            ("name", "{type: string, default: x}"),
            ("burn_s", "{type: float, default: 0}"),
        )
    )
    run = f"{py} stub_pipeline.py {{sid}} {{name}} {{burn_s}}"
    (root / "MLproject").write_text(
        "name: stub\nentry_points:\n"
        f'  seg:\n    parameters:\n{params}    command: "{run}"\n'
        f'  tracked:\n    parameters:\n{params}    command: "{py} -m mlflow_wattsup run --quiet -- {run}"\n'
    )
    return root


def cohort(root: Path, n: int = 2) -> Path:
    """A TSV cohort of n subjects with tiny T1 files (the stub never reads them)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["subject\tt1\treference"]
    for i in range(1, n + 1):
        (root / f"s{i}_T1.nii.gz").write_bytes(b"t1")
        lines.append(f"s{i}\ts{i}_T1.nii.gz\tn/a")
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    return root / "participants.tsv"


def ran(ctrl: Path) -> list[str]:
    return sorted("-".join(p.name.split("-")[1:3]) for p in ctrl.glob("ran-*"))
