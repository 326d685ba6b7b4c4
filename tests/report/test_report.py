import statistics
import subprocess
import sys

import pytest
from support.helpers import wattsup

from mlflow_wattsup.analysis.carbon import carbon_g
from mlflow_wattsup.report import RunRow, build, fetch_runs, report, to_csv, to_html, to_markdown, what_if
from mlflow_wattsup.report.render import cell_text, footnotes, header, wide


def row(pipe, device, energy_kwh, duration_s, basis="rapl", dice=None, extra=None, run_id=None):
    m = {"energy_kwh": energy_kwh, "duration_s": duration_s, "carbon_g": energy_kwh * 100.0}
    if dice is not None:
        m["dice_mean"] = dice
    m.update(extra or {})
    tags = {
        "wattsup.pipeline": pipe,
        "wattsup.device": device,
        "wattsup.source.cpu": basis,
        "wattsup.source.gpu": "none",
        "wattsup.source.ram": "rapl" if basis == "rapl" else "estimate",
    }
    return RunRow(
        run_id or f"{pipe}-{device}-{energy_kwh}",
        m,
        tags,
        {"wattsup.carbon_intensity_g_per_kwh": "100", "wattsup.pue": "1"},
    )


RUNS = [
    row("freesurfer", "cpu", 0.010, 7200),
    row("freesurfer", "cpu", 0.014, 10800),
    row("fastsurfer", "cpu", 0.004, 3600, dice=0.80),
    row("fastsurfer", "gpu", 0.001, 60, dice=0.82, extra={"params": 1.8e6, "flops": 4.7e13}),
    row("fastsurfer", "gpu", 0.002, 90, basis="estimate", dice=0.81),
    RunRow("orchestrator", {}, {"wattsup.pipeline": "demo"}, {}),
]


def test_groups_mean_sd_and_na():
    rep = build(RUNS)
    assert rep.skipped == 1  # a run with no wattsup metric is not a group
    g = ("freesurfer", "cpu", "measured")
    assert rep.n[g] == 2
    energy = rep.cells[g]["energy"]
    assert energy.mean == pytest.approx(12.0) and energy.sd == pytest.approx(statistics.stdev([10.0, 14.0]))
    assert rep.cells[g]["runtime"].mean == pytest.approx(2.5)  # hours
    assert cell_text(rep.cells[g]["dice"]) == "N/A" and cell_text(rep.cells[g]["params"]) == "N/A"
    assert cell_text(rep.cells[("fastsurfer", "gpu", "measured")]["flops"], big=True) == "47 T (-)"


def test_estimates_are_never_averaged_with_measurements():
    rep = build(RUNS)
    assert ("fastsurfer", "gpu", "measured") in rep.groups and (
        "fastsurfer",
        "gpu",
        "estimated",
    ) in rep.groups
    assert rep.n[("fastsurfer", "gpu", "measured")] == 1
    md = to_markdown(rep)
    est_line = next(ln for ln in md.splitlines() if "estimated" in ln and ln.startswith("|"))
    assert "†" in est_line and any(n.startswith("† estimated") for n in md.splitlines())


def test_wide_layout_matches_the_paper_table_shape():
    head, body = wide(build(RUNS))
    assert head[:4] == ["Pipeline", "Energy basis", "Runtime (hrs): CPU", "Runtime (hrs): GPU"]
    assert "Carbon (g): CPU" in head and "Carbon (g): GPU" in head
    fs = next(r for r in body if r[0] == "freesurfer")
    assert fs[head.index("Runtime (hrs): GPU")] == "N/A"
    assert fs[head.index("Energy (Wh): CPU")] == "12 (2.83)"


def test_csv_and_html():
    rep = build(RUNS)
    lines = to_csv(rep).splitlines()
    assert lines[0].startswith("pipeline,device,energy_basis,n,runtime_mean,runtime_sd,runtime_n")
    assert any(ln.startswith("freesurfer,cpu,measured,2,") for ln in lines)
    html = to_html(rep)
    assert (
        html.startswith("<table>")
        and "<td>freesurfer</td>" in html
        and "&lt;" not in html.split("<table>")[0]
    )


def test_what_if_carbon_recomputed_from_energy():
    rep = build(RUNS, what_if=what_if(RUNS, carbon_intensity=30, pue=1.2))
    g = ("freesurfer", "cpu", "measured")
    assert rep.cells[g]["carbon"].mean == pytest.approx(12.0 / 1000 * 30 * 1.2)
    assert "recomputed" in header(rep)[6] and any("recomputed" in n for n in footnotes(rep))
    rq = what_if(RUNS, region="CA-QC")
    assert rq.label.startswith(f"{rq.intensity_g_per_kwh:.4g} g/kWh (CA-QC") and rq.pue == 1.0
    assert what_if(RUNS, pue=1.5).intensity_g_per_kwh == 100.0  # the intensity every run logged
    assert what_if(RUNS) is None  # nothing overridden: each run's logged carbon
    with pytest.raises(ValueError):
        what_if(RUNS, carbon_intensity="abc")
    with pytest.raises(ValueError, match="--pue alone"):
        what_if([*RUNS, RunRow("r", {}, {}, {"wattsup.carbon_intensity_g_per_kwh": "200"})], pue=1.5)


def test_what_if_uses_the_carbon_formula_and_keeps_the_tuple_form():
    wi = what_if(RUNS, carbon_intensity=30, pue=1.2)
    assert wi.carbon_g(0.012) == carbon_g(0.012, 30, 1.2)
    legacy = build(RUNS, what_if=(wi.intensity_g_per_kwh, wi.pue, wi.label))
    assert legacy == build(RUNS, what_if=wi)  # callers passing (intensity, PUE, label) still work
    # a run without energy has no recomputed carbon, even if it logged carbon
    no_energy = RunRow("c", {"carbon_g": 5.0, "duration_s": 1.0}, {"wattsup.pipeline": "p"})
    rep = build([no_energy], what_if=wi)
    assert cell_text(rep.cells[("p", "n/a", "measured")]["carbon"]) == "N/A"
    assert cell_text(build([no_energy]).cells[("p", "n/a", "measured")]["carbon"]) == "5 (-)"


def test_pure_parts_import_neither_mlflow_nor_pandas():
    code = (
        "import sys\n"
        "import mlflow_wattsup.report as r\n"
        "rows = [r.RunRow('a', {'energy_kwh': 0.001}, {'wattsup.pipeline': 'p'})]\n"
        "r.render(r.build(rows, what_if=r.what_if(rows, carbon_intensity=50)), 'html', 'wide')\n"
        "print(sorted(m for m in ('mlflow', 'pandas', 'matplotlib') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_fetch_fast_path_equals_search_runs(client, experiment, tracking_uri):
    exp = client.create_experiment(experiment)
    for i in range(7):
        rid = client.create_run(exp).info.run_id
        client.log_metric(rid, "energy_kwh", 0.001 * i)
        client.log_metric(rid, "energy_kwh", 0.002 * i, step=1)  # the latest value counts
        client.log_metric(rid, "dice_mean", 0.5)
        client.log_metric(rid, "unrelated", 1.0)
        client.set_tag(rid, "wattsup.pipeline", f"p{i % 2}")
        client.log_param(rid, "wattsup.pue", "1.2")
    client.delete_run(rid)  # deleted runs are not reported
    fast = fetch_runs([experiment], tracking_uri=tracking_uri)
    slow = fetch_runs([experiment], tracking_uri=tracking_uri, fast=False)
    assert len(fast) == 6

    def key(rows):
        return sorted(
            (r.run_id, sorted(r.metrics.items()), sorted(r.tags.items()), sorted(r.params.items()))
            for r in rows
        )

    assert key(fast) == key(slow)
    assert all("unrelated" not in r.metrics for r in fast)


def test_report_from_search_runs_dataframe(client, experiment, tracking_uri):
    import mlflow

    exp = client.create_experiment(experiment)
    rid = client.create_run(exp).info.run_id
    client.log_metric(rid, "energy_kwh", 0.5)
    client.set_tag(rid, "wattsup.pipeline", "x")
    rep = report(mlflow.search_runs([exp]))
    assert rep.n[("x", "n/a", "measured")] == 1


@pytest.mark.slow
def test_cli_report(client, experiment, tracking_uri, tmp_path):
    exp = client.create_experiment(experiment)
    for e in (0.001, 0.003):
        rid = client.create_run(exp).info.run_id
        client.log_metric(rid, "energy_kwh", e)
        client.log_metric(rid, "duration_s", 3600)
        client.set_tag(rid, "wattsup.pipeline", "freesurfer")
        client.set_tag(rid, "wattsup.device", "cpu")
        client.set_tag(rid, "wattsup.source.cpu", "rapl")
        client.set_tag(rid, "wattsup.source.ram", "rapl")
    r = wattsup("report", experiment, "--layout", "wide", "--pue", "2", "--carbon-intensity", "100")
    assert r.returncode == 0, r.stderr
    assert "| freesurfer | measured | 1 (0) | 2 (1.41) | 0.4 (0.283) | N/A |" in r.stdout
    assert "Carbon (g, recomputed): CPU" in r.stdout and "100 g/kWh (given), PUE 2" in r.stdout
    out = tmp_path / "rep.csv"
    assert wattsup("report", experiment, "--format", "csv", "-o", str(out)).returncode == 0
    assert out.read_text().startswith("pipeline,device,energy_basis")
    bad = wattsup("report", "no-such-experiment")
    assert (
        bad.returncode == 2
        and "no experiment named" in bad.stderr
        and len(bad.stderr.strip().splitlines()) == 1
    )
