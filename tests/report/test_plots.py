import time

import pytest
from support.helpers import wattsup

from mlflow_wattsup.report import RunRow, plots

PNG = b"\x89PNG\r\n\x1a\n"


def rows():
    out = []
    for i, (pipe, dev, e, d, dice, est) in enumerate(
        [
            ("freesurfer", "cpu", 0.02, 20000, 0.85, False),
            ("freesurfer", "cpu", 0.025, 24000, 0.86, False),
            ("fastsurfer", "gpu", 0.001, 60, 0.84, False),
            ("fastsurfer", "cpu", 0.006, 3600, 0.84, True),
        ]
    ):
        tags = {
            "wattsup.pipeline": pipe,
            "wattsup.device": dev,
            "wattsup.source.cpu": "estimate" if est else "rapl",
            "wattsup.source.ram": "rapl",
        }
        out.append(
            RunRow(str(i), {"energy_kwh": e, "duration_s": d, "dice_mean": dice, "carbon_g": e * 50}, tags)
        )
    return out


def test_pareto_front():
    pts = [(1.0, 0.80), (2.0, 0.85), (3.0, 0.84), (0.5, 0.70), (2.0, 0.83)]
    assert plots._pareto(pts) == [(0.5, 0.70), (1.0, 0.80), (2.0, 0.85)]


def test_scatter_and_pareto_png(tmp_path):
    a = plots.energy_vs_runtime(rows(), tmp_path / "scatter.png")
    b = plots.cost_vs_dice(rows(), tmp_path / "pareto.png", cost="carbon")
    for p in (a, b):
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 10_000
    with pytest.raises(ValueError, match="no run"):
        plots.cost_vs_dice([RunRow("x", {"energy_kwh": 1.0})], tmp_path / "x.png")


@pytest.mark.slow
def test_trace_and_stages_from_a_real_run_logged_as_artifacts(client, experiment, tracking_uri, tmp_path):
    import mlflow_wattsup

    with mlflow_wattsup.track("traced", experiment=experiment, interval_s=0.5) as t:
        for name in ("load", "compute", "save"):
            with t.stage(name):
                start = time.process_time()
                while time.process_time() - start < 0.8:
                    pass
    rid = t.run_id
    m = client.get_run(rid).data.metrics
    assert (
        m["stage/load/start_s"]
        < m["stage/compute/start_s"]
        < m["stage/save/start_s"]
        <= m["stage/save/end_s"]
    )
    r = wattsup("plot", "trace", "--run-id", rid, "-o", str(tmp_path / "trace.png"))
    assert r.returncode == 0, r.stderr
    r = wattsup("plot", "stages", "--run-id", rid, "-o", str(tmp_path / "stages.png"))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "trace.png").read_bytes()[:8] == PNG
    arts = {a.path for a in client.list_artifacts(rid, "wattsup/plots")}
    assert arts == {"wattsup/plots/trace.png", "wattsup/plots/stages.png"}
    r = wattsup("plot", "scatter", "--experiment", experiment, "-o", str(tmp_path / "s.png"))
    assert r.returncode == 0, r.stderr
    bad = wattsup("plot", "trace")
    assert bad.returncode == 2 and "needs --run-id" in bad.stderr
