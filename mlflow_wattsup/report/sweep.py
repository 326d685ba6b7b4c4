"""A sweep's comparison table: one row per pipeline, swept value(s) and device (and energy basis),
with what the swept parameter changes: runtime, energy, carbon, Dice, and for pruned networks the
dense and nonzero parameters and MACs and the sparsity. Rows, not a column per value: six levels
x two devices stay twelve readable rows of ten columns, where a column per level would be sixty.

Values are ordered numerically where they are numbers (0, 0.25, 0.5, 10 - not 0, 0.25, 10, 0.5).
Pure: no MLflow, no pandas.
"""

from __future__ import annotations

from collections.abc import Sequence

from mlflow_wattsup.report.aggregate import cell, group
from mlflow_wattsup.report.model import Column, Report, RunRow
from mlflow_wattsup.report.render import to_csv, to_markdown
from mlflow_wattsup.sink import keys

#: what a child without a swept parameter (a pipeline the sweep does not apply to) shows
NOT_SWEPT = "-"


def columns() -> list[Column]:
    return [
        Column("runtime", "Runtime (s)", (keys.DURATION_S,)),
        Column("energy", "Energy (Wh)", (keys.ENERGY_KWH,), 1000.0),
        Column("carbon", "Carbon (g)", (keys.CARBON_G,)),
        Column("dice", "Dice", ("dice_mean",)),
        Column("params", "Params", ("params",), big=True),
        Column("params_nonzero", "Params nonzero", (keys.PARAMS_NONZERO,), big=True),
        Column("macs", "MACs", ("macs",), big=True),
        Column("macs_nonzero", "MACs nonzero", (keys.MACS_NONZERO,), big=True),
        Column("sparsity", "Sparsity", (keys.SPARSITY,)),
    ]


def sweep_rows(runs: Sequence[RunRow], names: Sequence[str]) -> list[RunRow]:
    """Copies of ``runs`` whose tags also hold each swept value under its bare name (what the
    table groups on, and its header), ``-`` where the run was not swept on it."""
    out = []
    for r in runs:
        swept = keys.swept_values(r.tags)
        tags = {n: swept.get(n, NOT_SWEPT) for n in names}
        out.append(RunRow(r.run_id, r.metrics, {**tags, **r.tags}, r.params))
    return out


def _order(value: str) -> tuple:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


def build(runs: Sequence[RunRow], names: Sequence[str]) -> Report:
    """The table of ``runs`` (as :func:`sweep_rows` gives them) grouped by pipeline, the swept
    ``names`` and device."""
    group_by = ("pipeline", *names, "device")
    cols = columns()
    buckets, skipped = group(runs, group_by, cols)
    groups = sorted(buckets, key=lambda g: tuple(_order(v) for v in g))
    return Report(
        group_by,
        cols,
        groups,
        {g: {c.key: cell(buckets[g], c) for c in cols} for g in groups},
        {g: len(buckets[g]) for g in groups},
        None,
        skipped,
    )


NOTE = (
    "MACs: the dense count, every weight entry once per output position; MACs nonzero: those whose "
    "weight entry is not 0. Unstructured pruning zeroes weights in place: MACs nonzero fall, the dense "
    "kernels (MACs, runtime, energy) do not. Channel pruning removes channels: MACs, params, runtime fall."
)


def markdown(rep: Report) -> str:
    return to_markdown(rep, "long") + NOTE + "\n"


def csv_text(rep: Report) -> str:
    return to_csv(rep)
