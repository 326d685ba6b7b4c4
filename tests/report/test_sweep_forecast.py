"""The sweep table, the forecast table and the Dice table files (pure report parts)."""

import csv
import io

import pytest

from mlflow_wattsup.report import dice_table, sweep
from mlflow_wattsup.report import forecast as fc
from mlflow_wattsup.report.model import RunRow
from mlflow_wattsup.report.whatif import WhatIf

EST = {"wattsup.source.cpu": "estimate"}


def run(i, pipeline, level, seconds, kwh, **metrics):
    tags = {"wattsup.pipeline": pipeline, "wattsup.device": "cpu", **EST}
    if level is not None:
        tags["wattsup.sweep.prune"] = level
    m = {"duration_s": seconds, "energy_kwh": kwh, "carbon_g": kwh * 100, **metrics}
    return RunRow(f"r{i}", m, tags)


def test_sweep_table_rows_per_value_in_numeric_order():
    runs = [
        run(1, "bet", "10", 5, 1e-5, macs=4e9, macs_nonzero=0.4e9, sparsity=0.9),
        run(2, "bet", "0.5", 5, 1e-5, macs=4e9, macs_nonzero=2e9, sparsity=0.5),
        run(3, "bet", "0", 6, 1e-5, macs=4e9, macs_nonzero=4e9, sparsity=0.0),
        run(4, "gmm", None, 2, 1e-6),
    ]
    rep = sweep.build(sweep.sweep_rows(runs, ["prune"]), ["prune"])
    assert [g[:3] for g in rep.groups] == [
        ("bet", "0", "cpu"),
        ("bet", "0.5", "cpu"),
        ("bet", "10", "cpu"),
        ("gmm", "-", "cpu"),
    ]
    text = sweep.markdown(rep)
    assert text.startswith("| Pipeline | Prune | Device | Energy basis | N | Runtime (s) |")
    assert (
        "| bet | 0.5 | cpu | estimated † | 1 | 5 (-) |" in text and "| 4 G (-) | 2 G (-) | 0.5 (-) |" in text
    )


def test_forecast_rows_csv_and_markdown():
    runs = [
        run(1, "bet", "0", 3600.0, 0.001),
        run(2, "bet", "0", 7200.0, 0.003),
        run(3, "solo", None, 60.0, 0.5),
    ]
    rows = sweep.sweep_rows(runs, ["prune"])
    wi = WhatIf(30.0, 1.2, "30 g/kWh (given), PUE 1.2")
    out = fc.forecast(rows, ("pipeline", "prune", "device"), [10], concurrency=4, what_if=wi)
    bet, solo = out
    sd_h = 0.5**0.5  # hours 1 and 2: mean 1.5, sd sqrt(0.5)
    half = 12.706204736174707 * sd_h * (10 + 100 / 2) ** 0.5
    assert bet.hours.total == pytest.approx(15.0) and bet.hours.high == pytest.approx(15.0 + half)
    assert bet.hours.low == 0.0 and bet.hours.clipped  # 2 subjects: t = 12.7, the lower bound goes below 0
    assert bet.hours_parallel.total == pytest.approx(15.0 / 4)
    assert bet.co2_g_whatif.total == pytest.approx(10 * 0.002 * 30 * 1.2)
    assert solo.energy_kwh.total == 5.0 and solo.energy_kwh.low is None
    text = fc.to_csv(out, ("pipeline", "prune", "device"), 4, wi)
    rec = list(csv.DictReader(io.StringIO(text)))
    assert rec[0]["hours"] == repr(15.0) and rec[0]["lower_clipped"].startswith("hours,hours_parallel")
    assert rec[1]["energy_kwh_low"] == "" and rec[1]["whatif"] == "30 g/kWh (given), PUE 1.2"
    md = fc.markdown(out, ("pipeline", "prune", "device"), 4, wi)
    assert md.startswith("## Forecast (not a measurement)")
    assert "| Hours (4 at once) |" in md and "(no spread: 1 subject)" in md
    assert "| Hours (1 at once) |" not in fc.markdown(out, ("pipeline", "prune", "device"), 1, wi)
    assert "CO2eq (what-if)" in md and "estimated (or imported), not measured" in md


def test_dice_table_files(tmp_path):
    header = ["run_id", "subject", "prune", "label", "name", "dice"]
    rows = [["r1", "s1", "0.5", 17, "Left-Hippocampus", 0.8125], ["r2", "s2", None, None, "brain", 0.5]]
    dice_table.write(tmp_path / "t.csv", header, rows)
    assert (tmp_path / "t.csv").read_text().splitlines()[2] == "r2,s2,,,brain,0.5"
    pd = pytest.importorskip("pandas")
    dice_table.write(tmp_path / "t.parquet", header, rows)
    df = pd.read_parquet(tmp_path / "t.parquet")
    assert str(df["label"].dtype) == "Int64" and df["dice"].tolist() == [0.8125, 0.5]
    assert df["prune"].isna().tolist() == [False, True]
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        dice_table.write(tmp_path / "t.xlsx", header, rows)
