"""A :class:`~.model.Report` as text: markdown, CSV or HTML, in the long layout (one row per
group) or the wide one (the last grouping key pivoted into columns). Pure: no MLflow, no pandas."""

from __future__ import annotations

import csv
import html
import io
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow_wattsup.report.model import Cell, Report

ESTIMATE_MARK = "†"


def fmt(x: float | None, big: bool = False) -> str:
    """A number to 3 significant digits; ``big``: with k/M/G/T suffixes; ``N/A`` for None/NaN."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "N/A"
    if big:
        for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(x) >= div:
                return f"{x / div:.3g} {suffix}"
        return f"{x:.3g}"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) >= 0.001 else f"{x:.2e}"


def cell_text(cell: Cell, big: bool = False) -> str:
    """``mean (sd)``, ``mean (-)`` for one value, ``N/A`` for none."""
    if not cell.values:
        return "N/A"
    sd = "-" if cell.sd is None else fmt(cell.sd, big)
    return f"{fmt(cell.mean, big)} ({sd})"


def _carbon_label(rep: Report, label: str) -> str:
    return "Carbon (g, recomputed)" if rep.recomputed else label


def _basis_label(basis: str) -> str:
    return basis if basis == "measured" else f"{basis} {ESTIMATE_MARK}"


def header(rep: Report) -> list[str]:
    """The long layout's column names."""
    return [
        *(k.capitalize() for k in rep.group_by),
        "Energy basis",
        "N",
        *(_carbon_label(rep, c.label) if c.key == "carbon" else c.label for c in rep.cols),
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
        label = _carbon_label(rep, c.label) if c.key == "carbon" else c.label
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
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines + [""] + [f"{n}" for n in footnotes(rep)]) + "\n"


def to_csv(rep: Report) -> str:
    """One row per group (long layout), unformatted: ``<col>_mean``, ``<col>_sd``, ``<col>_n``
    in the columns' units (runtime as chosen, energy Wh, carbon g)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = [*rep.group_by, "energy_basis", "n"]
    for c in rep.cols:
        keys += [f"{c.key}_mean", f"{c.key}_sd", f"{c.key}_n"]
    w.writerow(keys)
    for g in rep.groups:
        row: list[Any] = [*g, rep.n[g]]
        for c in rep.cols:
            cell = rep.cells[g][c.key]
            row += [
                "" if cell.mean is None else repr(cell.mean),
                "" if cell.sd is None else repr(cell.sd),
                cell.n,
            ]
        w.writerow(row)
    return buf.getvalue()


def to_html(rep: Report, layout: str = "long") -> str:
    head, body = _shape(rep, layout)
    esc = html.escape
    out = [
        "<table>",
        "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead>",
        "<tbody>",
    ]
    out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in body]
    out += ["</tbody>", "</table>"] + [f"<p>{esc(n)}</p>" for n in footnotes(rep)]
    return "\n".join(out) + "\n"


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
