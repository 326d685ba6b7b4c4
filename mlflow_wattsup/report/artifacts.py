"""The comparison table as a run's artifacts: ``wattsup/report.md`` and ``wattsup/report.html``
(a standalone page that MLflow's artifact viewer renders)."""

from __future__ import annotations

import html

from mlflow_wattsup.report.render import to_html, to_markdown

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 16px; color: #1f272d; }
h1 { font-size: 18px; margin: 0 0 12px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d1d9e1; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f3f5f7; }
td:nth-child(-n+3), th:nth-child(-n+3) { text-align: left; }
p { font-size: 12px; color: #5f7281; max-width: 60em; }
"""


def report_html(table, title: str, layout: str = "long") -> str:
    """A standalone HTML page of the comparison table (MLflow's artifact viewer renders it)."""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n{to_html(table, layout)}</body></html>\n"
    )


def log_report(client, run_id: str, table, title: str, layout: str = "long") -> list[str]:
    """Log the comparison table to ``run_id`` as ``wattsup/report.md`` and ``wattsup/report.html``;
    returns the artifact paths."""
    client.log_text(run_id, to_markdown(table, layout), "wattsup/report.md")
    client.log_text(run_id, report_html(table, title, layout), "wattsup/report.html")
    return ["wattsup/report.md", "wattsup/report.html"]
