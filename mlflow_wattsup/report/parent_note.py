"""A parent run's description: the comparison table of its child runs (grouped as ``wattsup
report`` groups them), their total, links to each and to MLflow's compare view. Written through
:func:`.notes.write_note` (never over a user's)."""

from __future__ import annotations

from collections.abc import Sequence

from mlflow_wattsup.report.aggregate import build
from mlflow_wattsup.report.fetch import run_row
from mlflow_wattsup.report.links import compare_fragment, run_fragment
from mlflow_wattsup.report.model import Report, energy_basis
from mlflow_wattsup.report.notes import footer, md, write_note
from mlflow_wattsup.report.numbers import energy_kwh, fmt
from mlflow_wattsup.report.render import ESTIMATE_MARK, column_label, footnotes
from mlflow_wattsup.report.table import markdown
from mlflow_wattsup.sink import keys

PARENT_TAG = "mlflow.parentRunId"
#: child runs linked by name in a parent's description (the table covers all of them)
MAX_LINKS = 20


def children(client, run_id: str, experiment_id: str | None = None) -> list:
    """The parent's child runs (tag ``mlflow.parentRunId``), oldest first."""
    from mlflow_wattsup.sink.transport import Store

    if experiment_id is None:
        experiment_id = client.get_run(run_id).info.experiment_id
    flt = f"tags.`{PARENT_TAG}` = '{run_id}'"
    return Store(client).search_runs([experiment_id], flt, order_by=["attributes.start_time ASC"])


def compact_table(table: Report) -> list[str]:
    """A :class:`~.model.Report` as a markdown table narrow enough for the Overview page: one
    row per group, the energy basis as a mark on the energy, ``mean ± sd`` only when N > 1."""
    head = ["Runs", "N", *(column_label(table, c) for c in table.cols)]
    rows = []
    for g in table.groups:
        row = [md(" · ".join(g[:-1])), str(table.n[g])]
        for c in table.cols:
            cell = table.cells[g][c.key]
            if cell.mean is None:
                text = "n/a"
            elif cell.n > 1 and cell.sd is not None:
                text = f"{fmt(cell.mean, big=c.big)} ± {fmt(cell.sd, big=c.big)}"
            else:
                text = fmt(cell.mean, big=c.big)
            if c.key == "energy" and g[-1] != "measured":
                text += f" {ESTIMATE_MARK}"
            row.append(text)
        rows.append(row)
    return markdown(head, rows)


def parent_markdown(
    experiment_id: str, kids: Sequence, table: Report, title: str | None = None
) -> str | None:
    """The parent's description: the children's total, ``table`` (a :class:`~.model.Report` of
    ``kids``), its footnotes, links to the children and to the compare view."""
    measured = [r for r in kids if "energy_kwh" in r.data.metrics]
    if not measured:
        return None
    energy = sum(r.data.metrics["energy_kwh"] for r in measured)
    bases = sorted({energy_basis(r.data.tags) for r in measured})
    head = f"**{len(measured)} runs: {energy_kwh(energy)}"
    if bases != ["measured"]:
        head += f" ({', '.join(bases)})"
    if all("carbon_g" in r.data.metrics for r in measured):
        head += f" · {fmt(sum(r.data.metrics['carbon_g'] for r in measured))} g CO2eq"
    head += " in all**"
    scored = [r for r in measured if "dice_mean" in r.data.metrics]
    if scored:
        best = max(scored, key=lambda r: r.data.metrics["dice_mean"])
        head += (
            f" · best Dice {best.data.metrics['dice_mean']:.3f}: {md(best.data.tags.get(keys.PIPELINE, best.info.run_name))}"
            f" at {energy_kwh(best.data.metrics['energy_kwh'])}"
        )
    lines = [head, ""]
    if title:
        lines += [f"{md(title)}, per pipeline and device:", ""]
    lines += compact_table(table)
    notes = [
        n.replace("cells: mean (sd) over N runs; N/A:", "cells: mean over N runs, ± sd when N > 1; n/a:")
        for n in footnotes(table)
    ]
    lines += ["", *(f"_{md(n)}_  " for n in notes)]
    links = [
        f"[{md(r.info.run_name or r.info.run_id[:8])}]({run_fragment(experiment_id, r.info.run_id)})"
        for r in kids
    ]
    more = f" and {len(links) - MAX_LINKS} more" if len(links) > MAX_LINKS else ""
    lines += ["", "Runs: " + " · ".join(links[:MAX_LINKS]) + more + "  "]
    ids = [r.info.run_id for r in kids][:100]
    lines += [
        f"[Compare them in MLflow]({compare_fragment(experiment_id, ids)}) · the table as a page: artifact `wattsup/report.html`"
    ]
    lines += ["", footer(None, "the child runs")]
    return "\n".join(lines) + "\n"


def describe_parent(client, run_id: str, title: str | None = None, runtime_unit: str = "s") -> bool:
    """Write the parent run's description: the comparison table of its children (grouped by
    pipeline and device, as ``wattsup report`` does). True if written."""
    run = client.get_run(run_id)
    kids = children(client, run_id, run.info.experiment_id)
    rows = [r for r in map(run_row, kids) if "energy_kwh" in r.metrics]
    if not rows:
        return False
    text = parent_markdown(run.info.experiment_id, kids, build(rows, runtime_unit=runtime_unit), title)
    return text is not None and write_note(client, run_id, text, run.data.tags)
