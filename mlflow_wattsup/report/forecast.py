"""A study's forecast: what N subjects would cost, per pipeline, device and swept value, from the
study's own finished children (one per subject and group) - hours (serial, and at the study's
concurrency), kWh and CO2eq, each with the interval of :mod:`mlflow_wattsup.analysis.forecast`
(a prediction interval for the total of N new subjects), and the carbon again at another
intensity/PUE (what-if). A forecast, never a measurement: the markdown says so in its title.

Pure: no MLflow, no pandas.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mlflow_wattsup.analysis.forecast import DEFAULT_LEVEL, INTERVAL_NAME, Interval, scale, total_interval
from mlflow_wattsup.report.aggregate import group
from mlflow_wattsup.report.model import Column, RunRow
from mlflow_wattsup.report.numbers import fmt
from mlflow_wattsup.report.render import ESTIMATE_MARK
from mlflow_wattsup.report.table import csv_text
from mlflow_wattsup.report.table import markdown as markdown_table
from mlflow_wattsup.report.whatif import WhatIf
from mlflow_wattsup.sink import keys

_COLS = [
    Column("runtime", "", (keys.DURATION_S,)),
    Column("energy", "", (keys.ENERGY_KWH,)),
    Column("carbon", "", (keys.CARBON_G,)),
]


@dataclass(frozen=True)
class ForecastRow:
    group: tuple[str, ...]  # group values, then the energy basis
    subjects: int  # N
    pilot: int  # subjects of the study the forecast is made from
    hours: Interval | None  # serial: the children's wall times added up
    hours_parallel: Interval | None  # at ``concurrency`` children at once
    energy_kwh: Interval | None
    co2_g: Interval | None  # at the intensity and PUE each child logged
    co2_g_whatif: Interval | None  # at the what-if's intensity and PUE


def _interval(values: list[float], n: int, level: float) -> Interval | None:
    return total_interval(values, n, level) if values else None


def forecast(
    runs: Sequence[RunRow],
    group_by: Sequence[str],
    counts: Sequence[int],
    concurrency: int | None = None,
    what_if: WhatIf | None = None,
    level: float = DEFAULT_LEVEL,
) -> list[ForecastRow]:
    """One row per group (``group_by`` values + energy basis, as the report groups) and N in
    ``counts``. ``concurrency``: children the study ran at once (None: unknown, no parallel hours)."""
    buckets, _ = group(runs, group_by, _COLS)
    out = []
    for g in sorted(buckets):
        rs = buckets[g]
        seconds = [r.metrics[keys.DURATION_S] for r in rs if keys.DURATION_S in r.metrics]
        energy = [r.metrics[keys.ENERGY_KWH] for r in rs if keys.ENERGY_KWH in r.metrics]
        carbon = [r.metrics[keys.CARBON_G] for r in rs if keys.CARBON_G in r.metrics]
        for n in counts:
            hours = _interval(seconds, n, level)
            hours = None if hours is None else scale(hours, 1 / 3600)
            parallel = None
            if hours is not None and concurrency:
                parallel = scale(hours, 1 / min(concurrency, n))
            e = _interval(energy, n, level)
            whatif = None
            if e is not None and what_if is not None:
                whatif = scale(e, what_if.carbon_g(1.0))  # carbon is energy x intensity x PUE
            out.append(ForecastRow(g, n, len(rs), hours, parallel, e, _interval(carbon, n, level), whatif))
    return out


#: below this many subjects per group the report warns that the pilot is too small to trust the sd
SMALL_PILOT = 5
QUANTITIES = ("hours", "hours_parallel", "energy_kwh", "co2_g", "co2_g_whatif")


def to_csv(
    rows: Sequence[ForecastRow],
    group_by: Sequence[str],
    concurrency: int | None = None,
    what_if: WhatIf | None = None,
    level: float = DEFAULT_LEVEL,
) -> str:
    """``study/forecast.csv``: the group columns, ``energy_basis``, ``subjects``,
    ``pilot_subjects``, then per quantity (hours, hours_parallel, energy_kwh, co2_g, co2_g_whatif)
    its total and ``_low``/``_high`` bounds (empty: one pilot subject, no spread), ``concurrency``,
    ``interval``, ``whatif``, ``lower_clipped`` (a bound below 0 set to 0)."""
    head = [*group_by, "energy_basis", "subjects", "pilot_subjects"]
    for q in QUANTITIES:
        head += [q, f"{q}_low", f"{q}_high"]
    head += ["concurrency", "interval", "whatif", "lower_clipped"]
    out = []
    interval = f"{level:.0%} {INTERVAL_NAME}"
    for r in rows:
        line: list = [*r.group, r.subjects, r.pilot]
        clipped = []
        for q in QUANTITIES:
            iv: Interval | None = getattr(r, q)
            if iv is None:
                line += ["", "", ""]
                continue
            line += [
                repr(iv.total),
                "" if iv.low is None else repr(iv.low),
                "" if iv.high is None else repr(iv.high),
            ]
            if iv.clipped:
                clipped.append(q)
        line += [concurrency or "", interval, what_if.label if what_if else "", ",".join(clipped)]
        out.append(line)
    return csv_text(head, out, newline="\n")


def _co2(g: float | None) -> tuple[float | None, str]:
    """The unit that keeps a CO2eq mass readable: g, kg or t."""
    if g is not None and g >= 1e6:
        return 1e-6, "t"
    if g is not None and g >= 1e3:
        return 1e-3, "kg"
    return 1.0, "g"


def _cell(iv: Interval | None, unit: str = "") -> str:
    if iv is None:
        return "N/A"
    text = fmt(iv.total, na="N/A") + (f" {unit}" if unit else "")
    if iv.low is None or iv.high is None:
        return text + " (no spread: 1 subject)"
    return f"{text} [{fmt(iv.low, na='N/A')}, {fmt(iv.high, na='N/A')}]"


def _co2_cell(iv: Interval | None) -> str:
    if iv is None:
        return "N/A"
    factor, unit = _co2(iv.total)
    return _cell(scale(iv, factor), unit)


def markdown(
    rows: Sequence[ForecastRow],
    group_by: Sequence[str],
    concurrency: int | None = None,
    what_if: WhatIf | None = None,
    level: float = DEFAULT_LEVEL,
) -> str:
    """The report's forecast section (a heading, the table, what the interval is and assumes)."""
    if not rows:
        return ""
    parallel = bool(concurrency and concurrency > 1)
    head = [*(k.capitalize() for k in group_by), "Energy basis", "Subjects", "Hours (serial)"]
    if parallel:
        head.append(f"Hours ({concurrency} at once)")
    head += ["Energy (kWh)", "CO2eq (as logged)"]
    if what_if:
        head.append("CO2eq (what-if)")
    body = []
    for r in rows:
        basis = r.group[-1] if r.group[-1] == "measured" else f"{r.group[-1]} {ESTIMATE_MARK}"
        cells = [*r.group[:-1], basis, f"{r.subjects:,}", _cell(r.hours)]
        if parallel:
            cells.append(_cell(r.hours_parallel))
        cells += [_cell(r.energy_kwh), _co2_cell(r.co2_g)]
        if what_if:
            cells.append(_co2_cell(r.co2_g_whatif))
        body.append(cells)
    lines = markdown_table(head, body)
    pilots = sorted({r.pilot for r in rows})
    notes = [
        f"A **forecast, not a measurement**: each group's total for N subjects from its {'/'.join(map(str, pilots))} "
        f"finished subject(s) in this study, `[low, high]` the {level:.0%} {INTERVAL_NAME}: "
        "N x mean +- t x sd x sqrt(N + N^2/n). At cohort scale it is about N times the uncertainty of the "
        "pilot's mean: a larger pilot narrows it, more subjects to process do not. Lower bounds below 0 are "
        "shown as 0.",
        "Assumes the new subjects are like the pilot's (scanner, resolution, pipeline version) and run on "
        "the same machine under the same contention; hours (serial) add up the children's wall times as "
        "measured here"
        + (
            f", hours ({concurrency} at once) divide them by the {concurrency} children the study ran at "
            "once (perfect packing, no queueing)."
            if parallel
            else "."
        ),
    ]
    if min(pilots) < SMALL_PILOT:
        notes.append(
            f"With fewer than {SMALL_PILOT} subjects per group the sd itself is poorly known: t widens the "
            "interval for that, but two subjects that happen to agree still give a narrow one. Before "
            "budgeting a cohort, run a pilot of 10-20 subjects."
        )
    if what_if:
        notes.append(f"CO2eq (what-if): the forecast energy at {what_if.label}.")
    if any(r.group[-1] != "measured" for r in rows):
        notes.append(
            f"{ESTIMATE_MARK} the energy of these groups was estimated (or imported), not measured: so is "
            "their forecast."
        )
    return "\n".join(["## Forecast (not a measurement)", "", *lines, "", *notes]) + "\n"
