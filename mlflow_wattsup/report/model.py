"""The report's data: one run as the report sees it (:class:`RunRow`), the values of one table cell
(:class:`Cell`), a quantity of the table (:class:`Column`) and the grouped table (:class:`Report`). Pure: no MLflow, no pandas."""

from __future__ import annotations

import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field

from mlflow_wattsup.sink import keys

DEFAULT_GROUP_BY = ("pipeline", "device")


def energy_basis(tags: Mapping[str, str]) -> str:
    """How a run's energy was obtained, from its ``wattsup.source.{cpu,gpu,ram}`` tags:
    ``imported`` (another tracker's number), ``estimated`` (CPU from the power model),
    ``partly estimated`` (GPU or RAM only) or ``measured``."""
    cpu = tags.get(f"{keys.SOURCE_PREFIX}cpu", "")
    if cpu.startswith("import"):
        return "imported"
    if "estimate" in cpu:
        return "estimated"
    if any("estimate" in tags.get(f"{keys.SOURCE_PREFIX}{c}", "") for c in ("gpu", "ram")):
        return "partly estimated"
    return "measured"


@dataclass
class RunRow:
    """What the report uses of one run: its id, and its metrics, tags and params by key."""

    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)

    def group_value(self, key: str) -> str:
        """The run's value of tag or param ``key`` (``wattsup.`` prefix optional), else ``n/a``."""
        for source in (self.tags, self.params):
            for k in (key, f"{keys.PREFIX}{key}"):
                if k in source and source[k] != "":
                    return source[k]
        return "n/a"

    @property
    def basis(self) -> str:
        """The run's energy basis (:func:`energy_basis`)."""
        return energy_basis(self.tags)


@dataclass(frozen=True)
class Column:
    """One quantity of the table: ``value(run)`` is the first of ``metrics`` the run has, times
    ``scale`` (to the unit of ``label``)."""

    key: str  # short name used in options
    label: str
    metrics: tuple[str, ...]  # MLflow metric keys, the first a run has is used
    scale: float = 1.0
    big: bool = False  # format with k/M/G suffixes

    def value(self, run: RunRow) -> float | None:
        for m in self.metrics:
            if m in run.metrics:
                return run.metrics[m] * self.scale
        return None


@dataclass(frozen=True)
class Cell:
    """The values of one column over the runs of one group (in the column's unit)."""

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def sd(self) -> float | None:
        """Sample standard deviation; None for fewer than two values."""
        return statistics.stdev(self.values) if len(self.values) > 1 else None


@dataclass
class Report:
    """Runs grouped by ``group_by`` plus energy basis: per group its N and one :class:`Cell` per
    column. :mod:`.render` turns it into markdown, CSV or HTML; it knows nothing of them."""

    group_by: tuple[str, ...]
    cols: list[Column]
    groups: list[tuple[str, ...]]  # group values + basis, in order
    cells: dict[tuple[str, ...], dict[str, Cell]]
    n: dict[tuple[str, ...], int]
    recomputed: str | None = None  # the what-if label when carbon was recomputed
    skipped: int = 0  # runs without any wattsup metric
