"""benchmarks/gpu_check.py before a GPU machine runs it: its CPU-only skip path (what CI and every
machine without an NVIDIA GPU take), and its GPU path end to end against a simulated NVML with torch
work on the CPU standing in for the GPU's (tests/support/fakes/simgpu: every process of the check
reads the same simulated driver). Whether a figure agrees on real hardware is the lent machine's
to say; here: every check runs, the deterministic relations hold, the core checks never import
MLflow, and the exit code follows the verdicts."""

import json
import os
import subprocess
import sys

import pytest
from support.paths import REPO, TESTS

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SIM = TESTS / "support" / "fakes" / "simgpu"


def run(tmp_path, *args, sim=True, block_mlflow=True, timeout=600):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SIM), str(TESTS), str(REPO)]))
    env["WATTSUP_SIM_GPU_STATE"] = str(tmp_path / "simgpu.json")
    env["WATTSUP_SPOOL_DIR"] = str(tmp_path / "spool")
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.pop("WATTSUP_SIM_GPU_ROOT", None)
    if block_mlflow:
        env["WATTSUP_TEST_BLOCK_IMPORTS"] = "mlflow"
    cmd = [sys.executable, str(SCRIPT), *args]
    if not sim:
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout), []
    out = tmp_path / "rows.json"
    cmd += ["--device", "cpu", "--quick", "--json", str(out)]
    cmd += ["--cuda-oracle", sys.executable, str(SIM / "cuda_oracle.py")]
    # the simulated GPU follows the CPU use of this test's own process tree (the check and its workers)
    env["WATTSUP_SIM_GPU_ROOT"] = str(os.getpid())
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    rows = json.loads(out.read_text()) if out.exists() else []
    return p, rows


def by_check(rows):
    return {r["check"]: r for r in rows}


@pytest.mark.skipif(
    os.path.exists("/dev/nvidiactl"), reason="this machine has an NVIDIA GPU: the skip path is not its path"
)
def test_without_an_nvidia_gpu_it_says_skipped_and_exits_0(tmp_path):
    p, _ = run(tmp_path, sim=False)
    assert p.returncode == 0, p.stderr
    assert "skipped: no NVIDIA GPU" in p.stdout
    assert "Traceback" not in p.stderr


@pytest.mark.slow
def test_gpu_path_end_to_end_on_a_simulated_gpu_without_mlflow(tmp_path):
    p, rows = run(tmp_path)  # `import mlflow` fails in every process, as on the lent machine
    assert rows, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    checks = by_check(rows)
    # every core check ran (none skipped for time or crashed), the MLflow parts were skipped, said so
    expected = [
        "counter vs power integral, idle",
        "counter vs power integral, load 50 % duty",
        "counter vs power integral, full load",
        "power sampled every 0.5 s, full load",
        "track() core: tracker in this process: GPU energy vs counter",
        "track() core: tracker in this process: share attributed to the run",
        "wattsup run core: runner, child process: GPU energy vs counter",
        "two processes on one GPU: full load",
        "two processes on one GPU: 30 % load",
        "two processes on one GPU: sum of shares",
        "FastSurferVINN (random weights): time per slice",
        "FastSurferVINN (random weights): energy per slice",
    ]
    for name in expected:
        assert name in checks, (name, sorted(checks))
        assert not checks[name]["verdict"].startswith("skipped"), checks[name]
    mlflow_row = checks["MLflow parts (wattsup run, track(), mlflow run)"]
    assert mlflow_row["verdict"].startswith("skipped: MLflow not importable")
    # what holds whatever the scheduling: the tracker reads the same counter the check reads
    for name in (
        "track() core: tracker in this process: GPU energy vs counter",
        "FastSurferVINN (random weights): energy per slice",
    ):
        assert abs(checks[name]["diff_pct"]) <= 5.0, checks[name]
    assert checks["two processes on one GPU: sum of shares"]["verdict"] == "ok"
    visible = [r for r in rows if r["check"].startswith("CUDA_VISIBLE_DEVICES")]
    assert len(visible) == 6 and all(r["verdict"] == "ok" for r in visible), visible
    assert {r["figure"] for r in visible} == {"metered 0 GPU(s)", "metered 1 GPU(s)", "metered 2 GPU(s)"}
    # a table, and an exit code that follows the verdicts
    assert "counter vs power integral, full load" in p.stdout
    fails = [r for r in rows if r["verdict"] == "FAIL"]
    assert p.returncode == (1 if fails else 0), (fails, p.stdout)


@pytest.mark.slow
def test_mlflow_parts_on_a_simulated_gpu(tmp_path):
    p, rows = run(tmp_path, "--checks", "mlflow", block_mlflow=False)
    assert rows, p.stdout + p.stderr
    checks = by_check(rows)
    for name in ("wattsup run: GPU energy vs counter", "track(): GPU energy vs counter"):
        assert name in checks, (name, p.stdout, p.stderr)
        assert checks[name]["figure"].endswith("(nvml-energy)"), checks[name]
        # the run's window is the command's life, the counter's a little less: its start-up and exit
        # are CPU work, which the simulation counts as GPU work (a real GPU idles then: < 1 %)
        assert abs(checks[name]["diff_pct"]) <= 25.0, checks[name]
    seg = checks["mlflow run projects/segmentation -e train"]
    assert seg["verdict"] == "ok", (seg, p.stdout[-2000:], p.stderr[-2000:])
    fails = [r for r in rows if r["verdict"] == "FAIL"]
    assert p.returncode == (1 if fails else 0), (fails, p.stdout)
