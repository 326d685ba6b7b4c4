"""Group runs into a :class:`~.model.Report`: by the grouping keys plus energy basis (an estimate
is never averaged with a measurement), one :class:`~.model.Cell` per column and group, carbon
optionally recomputed from energy (what-if). Pure: no MLflow, no pandas."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from mlflow_wattsup.report.model import DEFAULT_GROUP_BY, Cell, Column, Report, RunRow
from mlflow_wattsup.report.whatif import WhatIf
from mlflow_wattsup.sink import keys

#: runtime unit -> factor from seconds
RUNTIME_UNITS = {"s": 1.0, "min": 1 / 60, "h": 1 / 3600}


def columns(runtime_unit: str = "h") -> list[Column]:
    """The report's columns: runtime (in ``runtime_unit``), energy (Wh), carbon (g), Dice,
    params, FLOPs."""
    if runtime_unit not in RUNTIME_UNITS:
        raise ValueError(f"runtime unit must be one of {', '.join(RUNTIME_UNITS)}, got {runtime_unit!r}")
    return [
        Column(
            "runtime",
            f"Runtime ({'hrs' if runtime_unit == 'h' else runtime_unit})",
            (keys.DURATION_S,),
            RUNTIME_UNITS[runtime_unit],
        ),
        Column("energy", "Energy (Wh)", (keys.ENERGY_KWH,), 1000.0),
        Column("carbon", "Carbon (g)", (keys.CARBON_G,)),
        Column("dice", "Dice", ("dice_mean",)),
        Column("params", "Params", ("params",), big=True),
        # the run's compute: training runs log 3 x forward x samples, inference the passes counted
        Column("flops", "FLOPs", ("train_flops_estimate", "flops"), big=True),
    ]


#: the metrics the columns read (and what-if carbon's ``energy_kwh``): all a fetch needs to ask for
NEEDED_METRICS = tuple(dict.fromkeys([keys.ENERGY_KWH, *(m for c in columns() for m in c.metrics)]))


def group(
    runs: Iterable[RunRow], group_by: Sequence[str], cols: Sequence[Column]
) -> tuple[dict[tuple[str, ...], list[RunRow]], int]:
    """Runs by (group values..., energy basis), and how many runs had none of the columns."""
    buckets: dict[tuple[str, ...], list[RunRow]] = {}
    skipped = 0
    for r in runs:
        if all(c.value(r) is None for c in cols):
            skipped += 1
            continue
        key = tuple(r.group_value(k) for k in group_by) + (r.basis,)
        buckets.setdefault(key, []).append(r)
    return buckets, skipped


def cell(runs: Sequence[RunRow], col: Column, what_if: WhatIf | None = None) -> Cell:
    """The values of ``col`` over ``runs``; carbon from each run's ``energy_kwh`` with ``what_if``
    (a run without energy then has no value)."""
    if col.key == "carbon" and what_if is not None:
        return Cell(
            tuple(what_if.carbon_g(r.metrics[keys.ENERGY_KWH]) for r in runs if keys.ENERGY_KWH in r.metrics)
        )
    return Cell(tuple(v for r in runs if (v := col.value(r)) is not None))


def build(
    runs: Iterable[RunRow],
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    runtime_unit: str = "h",
    what_if: WhatIf | tuple[float, float, str] | None = None,
) -> Report:
    """Group ``runs``; ``what_if`` (a :class:`~.whatif.WhatIf`, or the tuple
    ``(intensity g/kWh, PUE, label)``) recomputes carbon from energy."""
    if isinstance(what_if, tuple):
        what_if = WhatIf(*what_if)
    cols = columns(runtime_unit)
    buckets, skipped = group(runs, group_by, cols)
    groups = sorted(buckets)
    return Report(
        tuple(group_by),
        cols,
        groups,
        {g: {c.key: cell(buckets[g], c, what_if) for c in cols} for g in groups},
        {g: len(buckets[g]) for g in groups},
        None if what_if is None else what_if.label,
        skipped,
    )
