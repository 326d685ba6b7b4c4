"""A pruning sweep through the real `projects/segmentation` (deepbet's pretrained brain extraction
and the FastSurferCNN-style tissue network) over the offline template cohort (Colin27, MNI152), on
the CPU: 3 levels x 2 subjects x 2 pipelines, one child killed and the study resumed, the report
table, the long Dice table, the forecast checked against values computed here from the children's
metrics."""

import csv
import io
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.contract import documented, undocumented
from support.helpers import WATTSUP, wattsup
from support.paths import REPO
from support.projects import BIN

from mlflow_wattsup.study import templates

pytestmark = pytest.mark.slow


LEVELS = ("0", "0.25", "0.5")
T975_DF1 = 12.706204736174707  # Student t, 97.5 % quantile, 1 degree of freedom (2 subjects)


@pytest.fixture
def cohort(tmp_path):
    pytest.importorskip("deepbet")
    if not templates.COLIN_T1.exists():
        pytest.skip("Debian's mricron-data (Colin27) is not installed")
    tsv, notes = templates.write(tmp_path / "cohort")
    assert not notes, notes
    return tsv


@pytest.fixture
def model_uri(tracking_uri, experiment, tmp_path):
    """A small FastSurferCNN-style tissue model (8 filters, one epoch at 2 mm): infer's input."""
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow_wattsup.projects.segmentation",
            "train",
            "--epochs",
            "1",
            "--filters",
            "8",
            "--device",
            "cpu",
        ],
        env={**os.environ, "MLFLOW_EXPERIMENT_NAME": experiment + "-train"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return next(ln.split()[-1] for ln in r.stdout.splitlines() if ln.startswith("model: "))


def study_args(tsv, model_uri, experiment, workdir):
    return [
        "study",
        str(tsv),
        "-p",
        f"bet={REPO / 'projects' / 'segmentation'}#brain_extraction",
        "-p",
        f"infer={REPO / 'projects' / 'segmentation'}#infer",
        "-P",
        f"infer.model_uri={model_uri}",
        "--sweep",
        "prune=" + ",".join(LEVELS),
        "--max-jobs",
        "1",
        "--forecast",
        "40000",
        "--forecast-carbon-intensity",
        "30",
        "--forecast-pue",
        "1.2",
        "--experiment",
        experiment,
        "--workdir",
        str(workdir),
        "--name",
        "prune-sweep",
    ]


def children(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], "tags.`wattsup.study.role` = 'child'", max_results=1000)


def kill_when_running(client, experiment, proc, pipeline, subject, level):
    """SIGKILL the process group of one child as soon as its run is RUNNING (as an OOM killer
    would); returns its run id."""
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline and proc.poll() is None:
        exp = client.get_experiment_by_name(experiment)
        for run in children(client, experiment) if exp else []:
            t = run.data.tags
            if (t["wattsup.pipeline"], t["wattsup.subject"], t.get("wattsup.sweep.prune")) != (
                pipeline,
                subject,
                level,
            ) or run.info.status != "RUNNING":
                continue
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    env = Path(f"/proc/{pid}/environ").read_bytes()
                except OSError:
                    continue
                if f"MLFLOW_RUN_ID={run.info.run_id}".encode() in env.split(b"\0"):
                    os.killpg(os.getpgid(int(pid)), signal.SIGKILL)
                    return run.info.run_id
        time.sleep(0.2)
    err = proc.stderr.read()[-3000:] if proc.poll() is not None else "timed out"
    raise AssertionError(f"child {pipeline}/{subject}/{level} never ran: {err}")


def by_hand(values, n):
    """N x mean +- t x sd x sqrt(N + N^2/n), lower bound at 0: the forecast of the total of N subjects."""
    k = len(values)
    mean = sum(values) / k
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (k - 1))
    half = T975_DF1 * sd * math.sqrt(n + n * n / k)
    return n * mean, max(0.0, n * mean - half), n * mean + half


def test_pruning_sweep_resume_report_dice_table_and_forecast(cohort, model_uri, client, experiment, tmp_path):
    workdir = tmp_path / "work"
    args = study_args(cohort, model_uri, experiment, workdir)
    # `python` in the MLproject commands is this environment's (as in an activated venv)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(
        [*WATTSUP, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    killed = kill_when_running(client, experiment, proc, "bet", "mni152", "0.5")
    out, err = proc.communicate(timeout=900)
    assert proc.returncode == 1, err[-3000:]
    assert "11 finished, 1 failed, 0 killed of 12" in err
    first = {r.info.run_id: r for r in children(client, experiment)}
    assert len(first) == 12 and first[killed].info.status == "FAILED"
    assert first[killed].data.tags["wattsup.exit_code"] == "137"

    # resumed: only the killed child runs again
    r = wattsup(*args, timeout=900, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "12 finished, 0 failed, 0 killed of 12 (11 skipped, 1 submitted)" in r.stderr
    runs = children(client, experiment)
    assert len(runs) == 13
    again = [x for x in runs if x.info.run_id not in first]
    assert [(x.data.tags["wattsup.pipeline"], x.data.tags["wattsup.subject"]) for x in again] == [
        ("bet", "mni152")
    ]
    assert (
        again[0].data.tags["wattsup.sweep.prune"] == "0.5"
        and again[0].data.tags["wattsup.study.attempt"] == "2"
    )
    latest = [x for x in runs if x.info.run_id != killed]
    assert {x.info.status for x in latest} == {"FINISHED"}

    # what pruning changes: nonzero MACs and params fall with the level, dense MACs stay; Dice per level
    cell = {
        (
            x.data.tags["wattsup.pipeline"],
            x.data.tags["wattsup.subject"],
            x.data.tags["wattsup.sweep.prune"],
        ): x
        for x in latest
    }
    assert len(cell) == 12
    for pipeline, subject in [
        ("bet", "colin27"),
        ("bet", "mni152"),
        ("infer", "colin27"),
        ("infer", "mni152"),
    ]:
        m = [cell[(pipeline, subject, v)].data.metrics for v in LEVELS]
        assert m[0]["macs"] == m[1]["macs"] == m[2]["macs"] > 1e9
        assert m[0]["macs_nonzero"] > m[1]["macs_nonzero"] > m[2]["macs_nonzero"]
        assert m[0]["params"] == m[2]["params"] and m[0]["params_nonzero"] > m[2]["params_nonzero"]
        for level, metrics in zip(LEVELS, m, strict=True):
            assert metrics["sparsity"] == pytest.approx(float(level), abs=0.02)
            assert metrics["macs_nonzero"] / metrics["macs"] == pytest.approx(1 - float(level), abs=0.02)
            assert cell[(pipeline, subject, level)].data.params["prune"] == level
        if pipeline == "bet":
            assert [x["dice/brain"] for x in m] == [pytest.approx(m[0]["dice/brain"], abs=0.05)] * 3
            assert m[0]["dice/brain"] > 0.9
        else:
            assert {"dice/CSF", "dice/GM", "dice/WM"} <= set(m[0])
    for x in latest:
        t = x.data.tags
        if t["wattsup.sweep.prune"] != "0":
            assert t["wattsup.prune"].startswith(
                f"L1 unstructured {float(t['wattsup.sweep.prune']):g} per conv"
            )
        assert undocumented(set(x.data.metrics) | set(t), documented()) == []

    # the report: one row per pipeline, level and device
    (parent,) = client.search_runs(
        [client.get_experiment_by_name(experiment).experiment_id], "tags.`wattsup.study.role` = 'parent'"
    )
    assert parent.info.status == "FINISHED"
    assert parent.data.params["wattsup.study.sweep.bet.prune"] == "0,0.25,0.5"
    report = (workdir / "report" / "report.md").read_text()
    assert report.startswith("| Pipeline | Prune | Device | Energy basis | N | Runtime (s) |")
    lines = [ln for ln in report.splitlines() if ln.startswith("| bet |") or ln.startswith("| infer |")]
    assert [ln.split(" | ")[:3] for ln in lines][:6] == [["| bet", v, "cpu"] for v in LEVELS] + [
        ["| infer", v, "cpu"] for v in LEVELS
    ]
    assert "## Forecast (not a measurement)" in report and "## Forecast (not a measurement)" in r.stdout
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/forecast.csv", "study/dice.csv", "study/dice.parquet", "study/sweep_pareto.png"} <= arts

    # the long Dice table: one row per child and label, its swept value and FreeSurfer-style names
    import pandas as pd

    table = pd.read_parquet(workdir / "report" / "dice.parquet")
    assert list(table.columns) == [
        "run_id",
        "study",
        "subject",
        "pipeline",
        "prune",
        "device",
        "prefix",
        "label",
        "name",
        "dice",
    ]
    assert len(table) == 6 * 1 + 6 * 3  # deepbet: brain; tissue: CSF, GM, WM
    for row in table.itertuples():
        x = next(c for c in latest if c.info.run_id == row.run_id)
        assert row.dice == x.data.metrics[f"dice/{row.name}"]
        assert (row.subject, row.pipeline, row.prune) == (
            x.data.tags["wattsup.subject"],
            x.data.tags["wattsup.pipeline"],
            x.data.tags["wattsup.sweep.prune"],
        )
    assert set(zip(table.label, table.name, strict=True)) == {(1, "brain"), (1, "CSF"), (2, "GM"), (3, "WM")}
    # read back from the experiment's runs by `wattsup report`
    back = tmp_path / "back.csv"
    r = wattsup(
        "report", experiment, "--dice-table", str(back), "--filter", "tags.`wattsup.study` = 'prune-sweep'"
    )
    assert r.returncode == 0, r.stderr
    got = list(csv.DictReader(io.StringIO(back.read_text())))
    assert len(got) == 24 and {g["run_id"] for g in got} == set(table.run_id)

    # the forecast: N x mean +- t sd sqrt(N + N^2/n) from the two subjects of each group
    rows = list(csv.DictReader(io.StringIO((workdir / "report" / "forecast.csv").read_text())))
    assert {int(x["subjects"]) for x in rows} == {20, 200, 2000, 40000}
    assert len(rows) == 6 * 4
    for row in rows:
        pair = [cell[(row["pipeline"], s, row["prune"])].data.metrics for s in ("colin27", "mni152")]
        n = int(row["subjects"])
        assert row["energy_basis"] == "estimated" and row["pilot_subjects"] == "2"
        for column, values, factor in (
            ("hours", [p["duration_s"] for p in pair], 1 / 3600),
            ("hours_parallel", [p["duration_s"] for p in pair], 1 / 3600),  # --max-jobs 1
            ("energy_kwh", [p["energy_kwh"] for p in pair], 1.0),
            ("co2_g", [p["carbon_g"] for p in pair], 1.0),
            ("co2_g_whatif", [p["energy_kwh"] * 30 * 1.2 for p in pair], 1.0),
        ):
            total, low, high = by_hand(values, n)
            assert float(row[column]) == pytest.approx(total * factor, rel=1e-9)
            assert float(row[column + "_low"]) == pytest.approx(low * factor, rel=1e-9, abs=1e-12)
            assert float(row[column + "_high"]) == pytest.approx(high * factor, rel=1e-9)
    assert parent.data.tags["wattsup.study.forecast"].startswith(
        "20, 200, 2,000, 40,000 subjects; 95% prediction"
    )
    assert undocumented(set(parent.data.params) | set(parent.data.tags), documented()) == []
