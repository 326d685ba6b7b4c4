"""Every table we write, in one place: a header and rows of cell texts as markdown, HTML or CSV.
Cells arrive formatted (:mod:`.numbers`); markdown cells arrive escaped where they need it. Pure:
no MLflow."""

from __future__ import annotations

import csv
import html
import io
from collections.abc import Sequence
from typing import Any


def markdown(
    head: Sequence[str], rows: Sequence[Sequence[str]], align: Sequence[str] | None = None
) -> list[str]:
    """The table's lines. ``align``: one of ``left``, ``right`` per column (default: none said)."""
    marks = {"left": "---", "right": "---:"}
    rule = [marks[a] for a in align] if align else ["---"] * len(head)
    lines = ["| " + " | ".join(head) + " |", "|" + "".join(f"{r}|" for r in rule)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def html_table(
    head: Sequence[str],
    rows: Sequence[Sequence[str]],
    css_class: str | None = None,
    sections: bool = True,
) -> list[str]:
    """The table's lines (``<table>`` to ``</table>``), every cell escaped. ``sections``: the
    header row in ``<thead>`` and the rows in ``<tbody>`` (the comparison report); without, the
    rows straight in the table (the agreement tables have always been written so)."""
    esc = html.escape
    head_row = "<tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr>"
    body = ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows]
    if sections:
        head_row, body = f"<thead>{head_row}</thead>", ["<tbody>", *body, "</tbody>"]
    return [f'<table class="{esc(css_class)}">' if css_class else "<table>", head_row, *body, "</table>"]


def csv_text(head: Sequence[str], rows: Sequence[Sequence[Any]], newline: str = "\r\n") -> str:
    """CSV (quoted as needed); ``newline``: ``\\r\\n`` as RFC 4180 has it, or ``\\n``."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=newline)
    w.writerow(head)
    w.writerows(rows)
    return buf.getvalue()
