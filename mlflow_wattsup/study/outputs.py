"""What a study writes beside its cost table (issue 21): the sweep table (when it sweeps), the long
per-label Dice table (``study/dice.csv``, ``study/dice.parquet``), the forecast
(``study/forecast.csv`` and the report's last section) and the sweep's Pareto plot
(``study/sweep_pareto.png``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_wattsup.analysis.forecast import DEFAULT_LEVEL, INTERVAL_NAME, ForecastError, default_counts
from mlflow_wattsup.report import dice_table
from mlflow_wattsup.report import forecast as fc
from mlflow_wattsup.report import sweep as sweep_table
from mlflow_wattsup.report.model import RunRow
from mlflow_wattsup.report.whatif import WhatIf


@dataclass
class Extras:
    """The study's settings for these outputs."""

    sweep_names: list[str] = field(default_factory=list)
    forecast: list[int] = field(default_factory=list)  # N given with --forecast (the defaults are added)
    concurrency: int | None = None  # children at once (local max jobs, SLURM max_parallel)
    what_if: WhatIf | None = None
    level: float = DEFAULT_LEVEL


def rows_of(runs: Sequence) -> list[RunRow]:
    """RunRows (all metrics, tags, params) of MLflow ``Run`` objects."""
    return [RunRow(r.info.run_id, dict(r.data.metrics), dict(r.data.tags), dict(r.data.params)) for r in runs]


def write(
    out: Path,
    children: Sequence,
    subjects: int,
    extras: Extras,
    report_md: str,
    tracking_uri: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[str, str]:
    """Write the outputs for the FINISHED ``children`` (MLflow ``Run`` objects) into ``out``;
    returns (the report's markdown: the sweep table in place of the cost table when the study
    sweeps, the forecast section appended; the forecast tag's value)."""
    rows = rows_of(children)
    names = extras.sweep_names
    if names:
        rep = sweep_table.build(sweep_table.sweep_rows(rows, names), names)
        if rep.groups:
            report_md = sweep_table.markdown(rep)
            (out / "report.md").write_text(report_md + "\n", encoding="utf-8")
            (out / "report.csv").write_text(sweep_table.csv_text(rep), encoding="utf-8")
        try:
            from mlflow_wattsup.report.plots import sweep_pareto

            sweep_pareto(rows, out / "sweep_pareto.png", names)
        except ValueError:  # no run with both a cost and Dice
            pass
    header, table = dice_table.from_runs(children, tracking_uri)
    if table:
        for name in ("dice.csv", "dice.parquet"):
            try:
                dice_table.write(out / name, header, table)
            except ImportError as exc:  # parquet without pyarrow: the CSV is there
                log(f"study: {name} not written ({exc})")
    try:
        counts = default_counts(subjects, extras.forecast)
    except ForecastError as exc:
        log(f"study: no forecast ({exc})")
        return report_md, ""
    group_by = ("pipeline", *names, "device")
    grouped = sweep_table.sweep_rows(rows, names)
    frows = fc.forecast(grouped, group_by, counts, extras.concurrency, extras.what_if, extras.level)
    if not frows:
        return report_md, ""
    (out / "forecast.csv").write_text(
        fc.to_csv(frows, group_by, extras.concurrency, extras.what_if, extras.level), encoding="utf-8"
    )
    section = fc.markdown(frows, group_by, extras.concurrency, extras.what_if, extras.level)
    report_md = (report_md.rstrip("\n") + "\n\n" + section) if report_md else section
    (out / "report.md").write_text(report_md + "\n", encoding="utf-8")
    tag = f"{', '.join(f'{n:,}' for n in counts)} subjects; {extras.level:.0%} {INTERVAL_NAME}"
    if extras.what_if:
        tag += f"; what-if {extras.what_if.label}"
    return report_md, tag


__all__ = ["Extras", "rows_of", "write"]
