"""A :class:`~.model.Report` as text: markdown, CSV or HTML, in the long layout (one row per
group) or the wide one (the last grouping key pivoted into columns). Pure: no MLflow, no pandas."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING, Any

from mlflow_wattsup.report.numbers import fmt, raw
from mlflow_wattsup.report.table import csv_text, html_table, markdown

if TYPE_CHECKING:
    from mlflow_wattsup.report.model import Cell, Column, Report

ESTIMATE_MARK = "†"


def cell_number(x: float | None, big: bool = False) -> str:
    """A number of the table: 3 significant digits (``big``: with k/M/G/T suffixes), ``N/A``."""
    return fmt(x, big=big, na="N/A", largest="T")


def cell_text(cell: Cell, big: bool = False) -> str:
    """``mean (sd)``, ``mean (-)`` for one value, ``N/A`` for none."""
    if not cell.values:
        return "N/A"
    sd = "-" if cell.sd is None else cell_number(cell.sd, big)
    return f"{cell_number(cell.mean, big)} ({sd})"


def column_label(rep: Report, col: Column) -> str:
    """The column's header (carbon says so when it was recomputed)."""
    return "Carbon (g, recomputed)" if col.key == "carbon" and rep.recomputed else col.label


def _basis_label(basis: str) -> str:
    return basis if basis == "measured" else f"{basis} {ESTIMATE_MARK}"


def header(rep: Report) -> list[str]:
    """The long layout's column names."""
    return [
        *(k.capitalize() for k in rep.group_by),
        "Energy basis",
        "N",
        *(column_label(rep, c) for c in rep.cols),
    ]


def rows(rep: Report) -> list[list[str]]:
    """The long layout's rows: group values, basis (marked unless measured), N, cells."""
    out = []
    for g in rep.groups:
        label = [*g[:-1], _basis_label(g[-1])]
        out.append([*label, str(rep.n[g]), *(cell_text(rep.cells[g][c.key], c.big) for c in rep.cols)])
    return out


def footnotes(rep: Report) -> list[str]:
    """What the marks mean, what was recomputed, what a cell holds."""
    notes = []
    bases = {g[-1] for g in rep.groups}
    if bases & {"estimated", "partly estimated"}:
        notes.append(
            f"{ESTIMATE_MARK} estimated: energy (CPU, or RAM only for 'partly') computed from TDP x CPU "
            "time or W/GB x memory, not read from counters; see the runs' wattsup.source.* tags"
        )
    if "imported" in bases:
        notes.append(
            f"{ESTIMATE_MARK} imported: energy as another tracker logged it (experiment-impact-tracker, "
            "CodeCarbon), not measured by mlflow-wattsup"
        )
    if rep.recomputed:
        notes.append(f"carbon recomputed from logged energy: {rep.recomputed}")
    notes.append(
        "cells: mean (sd) over N runs; N/A: no run in the group logged it. FLOPs: the run's compute "
        "(training: 3 x forward x samples seen, an estimate; inference: the forward passes counted)"
    )
    return notes


def wide(rep: Report) -> tuple[list[str], list[list[str]]]:
    """Pivot the last grouping key into columns: ``Runtime (hrs): CPU | Runtime (hrs): GPU ...``
    (the layout of the FreeSurfer vs FastSurfer table). With one grouping key: the long layout."""
    if len(rep.group_by) < 2:
        return header(rep), rows(rep)
    pivot_values = list(dict.fromkeys(g[-2] for g in rep.groups))
    row_keys = list(dict.fromkeys(g[:-2] + (g[-1],) for g in rep.groups))
    head = [*(k.capitalize() for k in rep.group_by[:-1]), "Energy basis"]
    for c in rep.cols:
        label = column_label(rep, c)
        head += [f"{label}: {v.upper() if len(v) <= 4 else v}" for v in pivot_values]
    body = []
    for rk in row_keys:
        row = [*rk[:-1], _basis_label(rk[-1])]
        for c in rep.cols:
            for v in pivot_values:
                g = rk[:-1] + (v, rk[-1])
                row.append(cell_text(rep.cells[g][c.key], c.big) if g in rep.cells else "N/A")
        body.append(row)
    return head, body


def _shape(rep: Report, layout: str) -> tuple[list[str], list[list[str]]]:
    return wide(rep) if layout == "wide" else (header(rep), rows(rep))


def to_markdown(rep: Report, layout: str = "long") -> str:
    head, body = _shape(rep, layout)
    return "\n".join(markdown(head, body) + [""] + footnotes(rep)) + "\n"


def to_csv(rep: Report) -> str:
    """One row per group (long layout), unformatted: ``<col>_mean``, ``<col>_sd``, ``<col>_n``
    in the columns' units (runtime as chosen, energy Wh, carbon g)."""
    head = [*rep.group_by, "energy_basis", "n"]
    for c in rep.cols:
        head += [f"{c.key}_mean", f"{c.key}_sd", f"{c.key}_n"]
    body = []
    for g in rep.groups:
        row: list[Any] = [*g, rep.n[g]]
        for c in rep.cols:
            cell = rep.cells[g][c.key]
            row += [raw(cell.mean), raw(cell.sd), cell.n]
        body.append(row)
    return csv_text(head, body)


def to_html(rep: Report, layout: str = "long") -> str:
    head, body = _shape(rep, layout)
    notes = [f"<p>{html.escape(n)}</p>" for n in footnotes(rep)]
    return "\n".join(html_table(head, body) + notes) + "\n"


def render(rep: Report, fmt_name: str = "markdown", layout: str = "long") -> str:
    """``fmt_name``: markdown (or md), csv or html; ``layout`` (long, wide) applies to markdown
    and HTML."""
    if fmt_name in ("markdown", "md"):
        return to_markdown(rep, layout)
    if fmt_name == "csv":
        return to_csv(rep)
    if fmt_name == "html":
        return to_html(rep, layout)
    raise ValueError(f"format must be markdown, csv or html, got {fmt_name!r}")
