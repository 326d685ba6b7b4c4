"""Byte-identical output over random inputs: the comparison report (markdown, CSV, HTML; long and
wide; with and without what-if carbon), run and parent descriptions, the agreement tables, the
printed run summary and the number formats, over seeded random run sets (groups, bases measured /
estimated / partly estimated / imported, missing values, NaN, infinities, tiny and huge numbers,
characters that need escaping).

``golden/outputs.json.gz`` holds what the code wrote when the test was added; a refactor of the
formatters or renderers must leave every output as it was. Only a deliberate change of output
rewrites it: ``WATTSUP_GOLDEN_WRITE=1 pytest tests/report/test_golden.py`` (and say in the commit
what changed and why)."""

import gzip
import json
import os
import random
from pathlib import Path
from types import SimpleNamespace

import pytest

from mlflow_wattsup.analysis.agreement_stats import compare, cross_subject
from mlflow_wattsup.analysis.carbon import CarbonConfig, CarbonIntensity
from mlflow_wattsup.meters.units import Energy
from mlflow_wattsup.report import (
    RunRow,
    agreement_table,
    build,
    numbers,
    parent_note,
    render,
    run_note,
    what_if,
)
from mlflow_wattsup.report.artifacts import report_html
from mlflow_wattsup.report.fetch import run_row
from mlflow_wattsup.report.render import cell_number
from mlflow_wattsup.run import recording
from mlflow_wattsup.tracking.tracker import Sources, Totals

GOLDEN = Path(__file__).parent / "golden" / "outputs.json.gz"
SETS = 60

# -- what renders what (the one place to change when a renderer moves) --------------------------


def report_text(table, fmt, layout):
    return render(table, fmt, layout)


def agreement_text(table, fmt):
    return agreement_table.render(table, fmt)


def comparison_csv(comparison):
    return agreement_table.comparison_csv(comparison)


NUMBER_FORMATS = {
    # a user-facing role -> the function that formats it
    "description": numbers.fmt,
    "count": lambda x: numbers.fmt(x, big=True),
    "energy_kwh": numbers.energy_kwh,
    "seconds": numbers.seconds,
    "table_cell": lambda x: cell_number(x),
    "table_cell_big": lambda x: cell_number(x, True),
    "hms": numbers.clock,
}

# -- random inputs ----------------------------------------------------------------------------------

PIPELINES = ["fastsurfer", "freesurfer", "a|b <x>", "fast&surfer", "gmm-classical", ""]
DEVICES = ["cpu", "gpu", "tpu-v4", "cuda"]
SOURCES_CPU = ["rapl", "estimate", "rapl+estimate", "import-eit", "import-codecarbon", "import", "", "odd"]
SOURCES_GPU = ["none", "nvml-energy", "nvml-power", "estimate", "import-eit"]
SOURCES_RAM = ["rapl", "estimate", "none", "import-eit"]
GROUPINGS = [
    ("pipeline", "device"),
    ("pipeline",),
    ("device",),
    ("pipeline", "device", "subject"),
    ("dataset",),
    ("wattsup.pipeline", "device"),
]


def number(rng: random.Random, kind: str = "any", special: bool = True) -> float:
    """A random value of ``kind`` (magnitudes); ``special``: sometimes NaN or infinite."""
    roll = rng.random() if special else rng.uniform(0.06, 1)
    if roll < 0.04:
        return float("nan")
    if roll < 0.06:
        return rng.choice([float("inf"), -float("inf")])
    if roll < 0.10:
        return 0.0
    if roll < 0.14:
        return -(rng.uniform(0, 10) ** rng.randint(-3, 3))
    mag = {"any": (-12, 16), "small": (-9, 1), "big": (3, 16), "unit": (-1, 0)}[kind]
    return rng.uniform(1, 10) * 10.0 ** rng.randint(*mag)


def run_set(rng: random.Random) -> list[RunRow]:
    rows = []
    for i in range(rng.choice([0, 1, 2, 3, 5, 8, 13])):
        tags = {}
        if rng.random() < 0.9:
            tags["wattsup.pipeline"] = rng.choice(PIPELINES)
        if rng.random() < 0.85:
            tags["wattsup.device"] = rng.choice(DEVICES)
        if rng.random() < 0.5:
            tags["wattsup.subject"] = f"sub-{rng.randint(1, 3):02d}"
        if rng.random() < 0.9:
            tags["wattsup.source.cpu"] = rng.choice(SOURCES_CPU)
        if rng.random() < 0.8:
            tags["wattsup.source.gpu"] = rng.choice(SOURCES_GPU)
        if rng.random() < 0.8:
            tags["wattsup.source.ram"] = rng.choice(SOURCES_RAM)
        metrics = {}
        for key, kind in (
            ("energy_kwh", "small"),
            ("duration_s", "any"),
            ("carbon_g", "any"),
            ("dice_mean", "unit"),
            ("params", "big"),
            ("flops", "big"),
            ("train_flops_estimate", "big"),
        ):
            if rng.random() < 0.7:
                metrics[key] = number(rng, kind)
        params = {}
        if rng.random() < 0.7:
            params["wattsup.carbon_intensity_g_per_kwh"] = rng.choice(["100", "475", "30.5", "12"])
        if rng.random() < 0.5:
            params["wattsup.pue"] = rng.choice(["1", "1.2", "1.58"])
        rows.append(RunRow(f"run{i:02d}", metrics, tags, params))
    return rows


def what_ifs(rng: random.Random, rows):
    choice = rng.choice(["intensity", "region", "both"])
    if choice == "intensity":
        return what_if(rows, carbon_intensity=rng.choice([30, 475.5, 0.1]))
    if choice == "region":
        return what_if(rows, region=rng.choice(["FRA", "CA-QC", "DEU"]))
    return what_if(rows, carbon_intensity="123.4", pue=rng.choice(["1.1", "2"]))


def safe(fn, *args) -> str:
    """``fn(*args)``, or ``!<exception type>`` where it raises: today a group of two or more runs
    with a NaN or infinite value raises in ``statistics.stdev``, and a description with a NaN or
    infinite duration in ``fmt_seconds``; the golden file records that too."""
    try:
        return fn(*args)
    except Exception as exc:
        return f"!{type(exc).__name__}"


def report_cases():
    for s in range(SETS):
        rng = random.Random(s)
        rows = run_set(rng)
        group_by = rng.choice(GROUPINGS)
        unit = rng.choice(["s", "min", "h"])
        wi = what_ifs(rng, rows)
        for with_wi in (False, True):
            table = build(rows, group_by, unit, wi if with_wi else None)
            carbon = "whatif" if with_wi else "logged"
            for fmt in ("markdown", "csv", "html"):
                for layout in ("long", "wide"):
                    yield f"report/{s:02d}/{fmt}/{layout}/{carbon}", safe(report_text, table, fmt, layout)
            yield (
                f"report/{s:02d}/compact/{carbon}",
                safe(lambda t: "\n".join(parent_note.compact_table(t)), table),
            )
            for layout in ("long", "wide"):
                yield (
                    f"report/{s:02d}/page/{layout}/{carbon}",
                    safe(report_html, table, f"runs {s} <&>", layout),
                )


RUN_METRICS = [
    ("energy_cpu_kwh", "small"),
    ("energy_gpu_kwh", "small"),
    ("energy_ram_kwh", "small"),
    ("machine_energy_kwh", "small"),
    ("carbon_g", "any"),
    ("power_mean_w", "any"),
    ("duration_s", "any"),
    ("cpu_time_s", "any"),
    ("dice_mean", "unit"),
    ("dice_labels_n", "big"),
    ("dice_aseg_mean", "unit"),
    ("params", "big"),
    ("flops", "big"),
    ("train_flops_estimate", "big"),
    ("predicted_energy_kwh", "small"),
]


def run_values(rng: random.Random, special: bool = True):
    metrics = {}
    if rng.random() < 0.93:
        metrics["energy_kwh"] = number(rng, "small", special)
    for key, kind in RUN_METRICS:
        if rng.random() < 0.5:
            metrics[key] = number(rng, kind, special)
    for st in rng.sample(["load", "seg|ment", "recon-all/autorecon1", "post"], rng.randint(0, 4)):
        # never NaN: stages are sorted by energy, and NaN makes that order the set's (hash seed)
        metrics[f"stage/{st}/energy_kwh"] = number(rng, "small", special=False)
        if rng.random() < 0.7:
            metrics[f"stage/{st}/duration_s"] = number(rng, "any", special)
    params = {}
    options = {
        "wattsup.carbon_intensity_g_per_kwh": ["475", "30", "12.5"],
        "wattsup.region": ["none", "", "CA-QC", "FRA|x"],
        "wattsup.pue": ["1", "1.2"],
        "wattsup.estimate.cpu_w_per_thread": ["4", "12.5"],
        "wattsup.estimate.cpu_basis": ["default", "codecarbon: Xeon", ""],
        "wattsup.estimate.cpu_tdp_w": ["65", "250"],
        "wattsup.estimate.ram_w_per_gb": ["0.3725"],
    }
    for k, values in options.items():
        if rng.random() < 0.6:
            params[k] = rng.choice(values)
    tags = {}
    options = {
        "wattsup.source.cpu": SOURCES_CPU,
        "wattsup.source.gpu": SOURCES_GPU,
        "wattsup.source.ram": SOURCES_RAM,
        "wattsup.source.carbon_intensity": ["world-average (codecarbon)", "region <FRA>", ""],
        "wattsup.source.pue": ["default", "user"],
        "wattsup.import.tool": ["eit 0.1.9", "codecarbon|2"],
        "wattsup.pipeline": PIPELINES,
        "wattsup.device": DEVICES,
        "wattsup.status": ["FINISHED", "FAILED", "KILLED", ""],
        "wattsup.flops_backend": ["fvcore", "thop"],
        "wattsup.model_cost": ["n/a: no neural network"],
        "wattsup.planned_epochs": ["30", "?"],
        "wattsup.dice.names": ["FreeSurferColorLUT", "a|b"],
        "wattsup.warning.cpu": ["RAPL vanished at 12 s", "x\ny <b>"],
        "wattsup.warning.dice": ["no reference"],
    }
    for k, values in options.items():
        if rng.random() < 0.5:
            tags[k] = rng.choice(values)
    return metrics, params, tags


def run_note_text(*args) -> str:
    return run_note.run_markdown(*args) or "(none)"


def parent_note_text(*args) -> str:
    return parent_note.parent_markdown(*args) or "(none)"


def description_cases():
    for s in range(SETS):
        rng = random.Random(1000 + s)
        for i in range(3):
            m, p, t = run_values(rng)
            yield f"run/{s:02d}/{i}", safe(run_note_text, m, p, t, rng.choice([None, "9.9"]))
        kids = []
        for i in range(rng.choice([0, 1, 2, 4, 7, 25])):
            m, p, t = run_values(rng, special=s % 2 == 0)
            name = rng.choice([None, f"child {i}", "a|b"])
            kids.append(
                SimpleNamespace(
                    info=SimpleNamespace(run_id=f"{s:02d}{i:030d}", run_name=name),
                    data=SimpleNamespace(metrics=m, params=p, tags=t),
                )
            )
        rows = [r for r in map(run_row, kids) if "energy_kwh" in r.metrics]
        unit, title = rng.choice(["s", "h"]), rng.choice([None, "study x", "a|b <c>"])
        table = build(rows, runtime_unit=unit)
        yield f"parent/{s:02d}", safe(parent_note_text, str(s), kids, table, title)


def agreement_cases():
    for s in range(SETS):
        rng = random.Random(2000 + s)
        names = ["Left-Hippocampus", "ctx-lh-insula", "3rd-Ventricle", "a|b <c>", "WM-hypo"]
        values = {}
        for subj in range(rng.choice([0, 1, 2, 3, 5, 9])):
            per = {}
            for pipe in ("fastsurfer", "free|surfer"):
                if rng.random() < 0.85:
                    per[pipe] = {
                        "volume": {
                            n: rng.choice([0.0, number(rng, "big")]) for n in names if rng.random() < 0.8
                        },
                        "thickness": {n: number(rng, "unit") * 5 for n in names if rng.random() < 0.6},
                    }
            values[f"sub-{subj:02d}"] = per
        table = cross_subject(values, "fastsurfer", "free|surfer")
        if rng.random() < 0.5:
            table.extra_notes = ["run x skipped <why>"]
        for fmt in ("markdown", "html", "csv"):
            yield f"agreement/{s:02d}/{fmt}", agreement_text(table, fmt)
        run = {n: number(rng) for n in names if rng.random() < 0.8}
        ref = {n: rng.choice([0.0, number(rng)]) for n in names if rng.random() < 0.8}
        for n in names[:2]:
            if n in run and n in ref and rng.random() < 0.3:
                run[n] = ref[n] = 0.0
        yield f"comparison/{s:02d}", comparison_csv(compare(run, ref, rng.choice(["volume", "thickness"])))


def joules(rng: random.Random) -> float:
    return abs(number(rng, "big", special=False)) if rng.random() < 0.9 else 0.0


def summary_cases():
    for s in range(SETS):
        rng = random.Random(3000 + s)

        totals = Totals(
            duration_s=abs(rng.choice([0.0, 0.4, 59.9, 3599.5, 86400 * 3 + 7, rng.uniform(0, 1e5)])),
            energy=Energy(joules(rng), joules(rng), joules(rng)),
            machine_energy=Energy(joules(rng), joules(rng), joules(rng)),
            cpu_s=rng.uniform(0, 1e4),
            sources=Sources(rng.choice(SOURCES_CPU), rng.choice(SOURCES_GPU), rng.choice(SOURCES_RAM)),
            samples=rng.randint(0, 100),
            warnings={"cpu": "RAPL vanished"} if rng.random() < 0.3 else {},
        )
        carbon = CarbonConfig(
            CarbonIntensity(rng.choice([475.0, 30.25, 1e-3]), "world-average", rng.choice(["", "FRA"])),
            rng.choice([1.0, 1.58]),
            "default",
        )
        where = ["run abc at sqlite:///x.db", "view: http://127.0.0.1:5000/#/x"]
        yield (
            f"summary/{s:02d}",
            recording.summary_text(where, totals, carbon, rng.choice([0, 1, 137]), "FINISHED"),
        )


def number_cases():
    rng = random.Random(4000)
    xs = [0.0, -0.0, 1.0, -1.0, 0.001, 0.000999, 999.5, 999.4999, 1000.0, 1e3 - 1e-9, 119.99, 120.0, 3600.0]
    xs += [float("nan"), float("inf"), -float("inf"), 1e15, 1e12, 9.995e11, 123456789.0, -2.5e-7]
    xs += [number(rng) for _ in range(300)]
    for role, fn in NUMBER_FORMATS.items():
        out = []
        for x in xs:
            try:
                out.append(fn(x))
            except (ValueError, OverflowError) as exc:
                out.append(f"!{type(exc).__name__}")
        yield f"number/{role}", "\n".join(f"{x!r} -> {y}" for x, y in zip(xs, out, strict=True))
    yield (
        "number/none",
        "\n".join(
            f"{role}: {fn(None)}"
            for role, fn in NUMBER_FORMATS.items()
            if role in ("description", "table_cell")
        ),
    )


def outputs() -> dict[str, str]:
    out = {}
    for gen in (report_cases, description_cases, agreement_cases, summary_cases, number_cases):
        for key, text in gen():
            assert key not in out, key
            out[key] = text
    return out


def test_outputs_are_byte_identical_to_the_golden_file():
    now = outputs()
    if os.environ.get("WATTSUP_GOLDEN_WRITE") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        data = json.dumps(now, indent=0, sort_keys=True, ensure_ascii=False).encode("utf-8")
        GOLDEN.write_bytes(gzip.compress(data, mtime=0))
    golden = json.loads(gzip.decompress(GOLDEN.read_bytes()))
    assert sorted(now) == sorted(golden), "the cases changed: the golden file no longer covers them"
    changed = [k for k in sorted(golden) if now[k] != golden[k]]
    if changed:
        k = changed[0]
        pytest.fail(
            f"{len(changed)} of {len(golden)} outputs changed, e.g. {k}:\n--- golden\n{golden[k]}\n--- now\n{now[k]}"
        )


def test_the_random_sets_cover_what_they_claim():
    """Not vacuous: the inputs do reach the cases the module docstring lists."""
    golden = json.loads(gzip.decompress(GOLDEN.read_bytes()))
    reports = " ".join(v for k, v in golden.items() if k.startswith("report/"))
    for needle in ("estimated †", "imported †", "partly estimated †", "measured", "N/A", "(-)", "recomputed"):
        assert needle in reports, needle
    assert " T (" in reports or " P (" in reports  # huge numbers with suffixes
    assert "inf" in reports and "nan" in reports  # CSV keeps the raw values
    runs = [v for k, v in golden.items() if k.startswith("run/")]
    assert sum(v == "(none)" for v in runs) >= 1 and sum(v != "(none)" for v in runs) >= 100
    assert any("n/a" in v for v in runs) and any("\\|" in v for v in runs)
    parents = [v for k, v in golden.items() if k.startswith("parent/")]
    assert sum(v != "(none)" for v in parents) >= 20 and any(" more" in v for v in parents)
    agreement = [v for k, v in golden.items() if k.startswith("agreement/") and k.endswith("markdown")]
    assert any("| volume" in v for v in agreement) and any("No structure" in v for v in agreement)
