"""Compare runs - group them and give N and mean (sd) of runtime, energy, carbon, Dice,
parameters and FLOPs per group, as markdown, CSV or HTML.

Groups default to the pipeline and device tags (``wattsup.pipeline``, ``wattsup.device``). Runs
are also split by how their energy was obtained (``measured``, ``estimated``, ``partly
estimated`` from the ``wattsup.source.*`` tags), so an estimate is never averaged with a
measurement; estimated rows carry a dagger and a footnote. Carbon can be recomputed for another
intensity or PUE from the logged energy ("what-if"), labelled as recomputed.

The parts: :mod:`.model` (the data), :mod:`.aggregate` (grouping, mean (sd)), :mod:`.render`
(markdown, CSV, HTML; long and wide), :mod:`.whatif` (recomputed carbon) are pure;
:mod:`.fetch` reads the runs from MLflow (imported only when it does).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mlflow_wattsup.report.aggregate import NEEDED_METRICS, RUNTIME_UNITS, build, columns
from mlflow_wattsup.report.fetch import NEEDED_PARAMS, fetch_runs, rows_from_dataframe
from mlflow_wattsup.report.model import (
    DEFAULT_GROUP_BY,
    Cell,
    Column,
    Report,
    RunRow,
    energy_basis,
)
from mlflow_wattsup.report.render import ESTIMATE_MARK, render, to_csv, to_html, to_markdown
from mlflow_wattsup.report.whatif import WhatIf, what_if

__all__ = [
    "DEFAULT_GROUP_BY",
    "ESTIMATE_MARK",
    "NEEDED_METRICS",
    "NEEDED_PARAMS",
    "RUNTIME_UNITS",
    "Cell",
    "Column",
    "Report",
    "RunRow",
    "WhatIf",
    "build",
    "columns",
    "energy_basis",
    "fetch_runs",
    "render",
    "report",
    "rows_from_dataframe",
    "to_csv",
    "to_html",
    "to_markdown",
    "what_if",
]


def report(
    source: Any,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    filter_string: str = "",
    runtime_unit: str = "h",
    carbon_intensity: float | None = None,
    region: str | None = None,
    pue: float | None = None,
    tracking_uri: str | None = None,
) -> Report:
    """Build a :class:`Report` from a ``search_runs`` DataFrame, a list of :class:`RunRow`, or
    experiment name(s) (with ``filter_string``). ``carbon_intensity``/``region``/``pue`` recompute
    carbon from the logged energy (what-if); a missing one keeps each run's logged value."""
    if isinstance(source, str):
        source = [source]
    if hasattr(source, "to_dict") and hasattr(source, "columns"):
        runs = rows_from_dataframe(source)
    elif isinstance(source, (list, tuple)) and source and isinstance(source[0], RunRow):
        runs = list(source)
    else:
        runs = fetch_runs(list(source), filter_string, tracking_uri)
    return build(runs, group_by, runtime_unit, what_if(runs, carbon_intensity, region, pue))
