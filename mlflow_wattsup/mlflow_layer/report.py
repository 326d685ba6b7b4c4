"""Layer 4: compare runs - group them and give N and mean (sd) of runtime, energy, carbon, Dice,
parameters and FLOPs per group, as markdown, CSV or HTML.

Groups default to the pipeline and device tags (``wattsup.pipeline``, ``wattsup.device``). Runs
are also split by how their energy was obtained (``measured``, ``estimated``, ``partly
estimated`` from the ``wattsup.source.*`` tags), so an estimate is never averaged with a
measurement; estimated rows carry a dagger and a footnote. Carbon can be recomputed for another
intensity or PUE from the logged energy ("what-if"), labelled as recomputed.
"""

from __future__ import annotations

import html
import io
import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

DEFAULT_GROUP_BY = ("pipeline", "device")
ESTIMATE_MARK = "†"


@dataclass(frozen=True)
class Column:
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


RUNTIME_UNITS = {"s": 1.0, "min": 1 / 60, "h": 1 / 3600}


def columns(runtime_unit: str = "h") -> list[Column]:
    if runtime_unit not in RUNTIME_UNITS:
        raise ValueError(f"runtime unit must be one of {', '.join(RUNTIME_UNITS)}, got {runtime_unit!r}")
    return [
        Column(
            "runtime",
            f"Runtime ({'hrs' if runtime_unit == 'h' else runtime_unit})",
            ("duration_s",),
            RUNTIME_UNITS[runtime_unit],
        ),
        Column("energy", "Energy (Wh)", ("energy_kwh",), 1000.0),
        Column("carbon", "Carbon (g)", ("carbon_g",)),
        Column("dice", "Dice", ("dice_mean",)),
        Column("params", "Params", ("params",), big=True),
        # the run's compute: training runs log 3 x forward x samples, inference the passes counted
        Column("flops", "FLOPs", ("train_flops_estimate", "flops"), big=True),
    ]


#: what the report needs from each run (``fetch_runs`` asks only for these)
NEEDED_METRICS = (
    "duration_s",
    "energy_kwh",
    "carbon_g",
    "dice_mean",
    "params",
    "flops",
    "train_flops_estimate",
)
TAG_PREFIX = "wattsup."  # pipeline, device, source.* ... (the SQL read filters on the same prefix)
NEEDED_PARAMS = ("wattsup.pue", "wattsup.carbon_intensity_g_per_kwh")


@dataclass
class RunRow:
    """What the report uses of one run."""

    run_id: str
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)

    def group_value(self, key: str) -> str:
        for source in (self.tags, self.params):
            for k in (key, f"wattsup.{key}"):
                if k in source and source[k] != "":
                    return source[k]
        return "n/a"

    @property
    def basis(self) -> str:
        sources = [self.tags.get(f"wattsup.source.{c}", "") for c in ("cpu", "gpu", "ram")]
        if self.tags.get("wattsup.source.cpu", "").startswith("import"):
            return "imported"
        if "estimate" in self.tags.get("wattsup.source.cpu", ""):
            return "estimated"
        if any("estimate" in s for s in sources):
            return "partly estimated"
        return "measured"

    @property
    def has_energy(self) -> bool:
        return "energy_kwh" in self.metrics


@dataclass(frozen=True)
class Cell:
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def sd(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else None

    def text(self, big: bool = False) -> str:
        if not self.values:
            return "N/A"
        sd = "-" if self.sd is None else fmt(self.sd, big)
        return f"{fmt(self.mean, big)} ({sd})"


def fmt(x: float, big: bool = False) -> str:
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


@dataclass
class Report:
    group_by: tuple[str, ...]
    cols: list[Column]
    groups: list[tuple[str, ...]]  # group values + basis, in order
    cells: dict[tuple[str, ...], dict[str, Cell]]
    n: dict[tuple[str, ...], int]
    recomputed: str | None = None
    skipped: int = 0  # runs without any wattsup metric

    # -- shapes ---------------------------------------------------------------------------------

    def header(self) -> list[str]:
        carbon = "Carbon (g, recomputed)" if self.recomputed else "Carbon (g)"
        return [
            *(k.capitalize() for k in self.group_by),
            "Energy basis",
            "N",
            *(carbon if c.key == "carbon" else c.label for c in self.cols),
        ]

    def rows(self) -> list[list[str]]:
        out = []
        for g in self.groups:
            label = list(g)
            if g[-1] != "measured":
                label[-1] = f"{g[-1]} {ESTIMATE_MARK}"
            out.append([*label, str(self.n[g]), *(self.cells[g][c.key].text(c.big) for c in self.cols)])
        return out

    def footnotes(self) -> list[str]:
        notes = []
        bases = {g[-1] for g in self.groups}
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
        if self.recomputed:
            notes.append(f"carbon recomputed from logged energy: {self.recomputed}")
        notes.append(
            "cells: mean (sd) over N runs; N/A: no run in the group logged it. FLOPs: the run's compute "
            "(training: 3 x forward x samples seen, an estimate; inference: the forward passes counted)"
        )
        return notes

    def wide(self) -> tuple[list[str], list[list[str]]]:
        """Pivot the last grouping key into columns: ``Runtime (hrs): CPU | Runtime (hrs): GPU ...``
        (the layout of the FreeSurfer vs FastSurfer table)."""
        if len(self.group_by) < 2:
            return self.header(), self.rows()
        pivot_values = list(dict.fromkeys(g[-2] for g in self.groups))
        row_keys = list(dict.fromkeys(g[:-2] + (g[-1],) for g in self.groups))
        head = [*(k.capitalize() for k in self.group_by[:-1]), "Energy basis"]
        for c in self.cols:
            label = "Carbon (g, recomputed)" if (c.key == "carbon" and self.recomputed) else c.label
            head += [f"{label}: {v.upper() if len(v) <= 4 else v}" for v in pivot_values]
        body = []
        for rk in row_keys:
            basis = rk[-1] if rk[-1] == "measured" else f"{rk[-1]} {ESTIMATE_MARK}"
            row = [*rk[:-1], basis]
            for c in self.cols:
                for v in pivot_values:
                    g = rk[:-1] + (v, rk[-1])
                    row.append(self.cells[g][c.key].text(c.big) if g in self.cells else "N/A")
            body.append(row)
        return head, body

    def to_markdown(self, layout: str = "long") -> str:
        head, body = self.wide() if layout == "wide" else (self.header(), self.rows())
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines + [""] + [f"{n}" for n in self.footnotes()]) + "\n"

    def to_csv(self) -> str:
        import csv

        buf = io.StringIO()
        w = csv.writer(buf)
        keys = [*self.group_by, "energy_basis", "n"]
        for c in self.cols:
            keys += [f"{c.key}_mean", f"{c.key}_sd", f"{c.key}_n"]
        w.writerow(keys)
        for g in self.groups:
            row: list[Any] = [*g, self.n[g]]
            for c in self.cols:
                cell = self.cells[g][c.key]
                row += [
                    "" if cell.mean is None else repr(cell.mean),
                    "" if cell.sd is None else repr(cell.sd),
                    cell.n,
                ]
            w.writerow(row)
        return buf.getvalue()

    def to_html(self, layout: str = "long") -> str:
        head, body = self.wide() if layout == "wide" else (self.header(), self.rows())
        esc = html.escape
        out = [
            "<table>",
            "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead>",
            "<tbody>",
        ]
        out += ["<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in body]
        out += ["</tbody>", "</table>"] + [f"<p>{esc(n)}</p>" for n in self.footnotes()]
        return "\n".join(out) + "\n"

    def render(self, fmt_name: str = "markdown", layout: str = "long") -> str:
        if fmt_name in ("markdown", "md"):
            return self.to_markdown(layout)
        if fmt_name == "csv":
            return self.to_csv()
        if fmt_name == "html":
            return self.to_html(layout)
        raise ValueError(f"format must be markdown, csv or html, got {fmt_name!r}")


# -- building -----------------------------------------------------------------------------------


def rows_from_dataframe(df) -> list[RunRow]:
    """RunRows from a ``mlflow.search_runs`` DataFrame (``metrics.*``, ``tags.*``, ``params.*``)."""
    out = []
    records = df.to_dict("records")
    for rec in records:
        row = RunRow(str(rec.get("run_id", "")))
        for col, value in rec.items():
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            if col.startswith("metrics."):
                row.metrics[col[8:]] = float(value)
            elif col.startswith("tags."):
                row.tags[col[5:]] = str(value)
            elif col.startswith("params."):
                row.params[col[7:]] = str(value)
        out.append(row)
    return out


def build(
    runs: Iterable[RunRow],
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    runtime_unit: str = "h",
    what_if: tuple[float, float, str] | None = None,
) -> Report:
    """Group ``runs``; ``what_if=(intensity g/kWh, PUE, label)`` recomputes carbon from energy."""
    cols = columns(runtime_unit)
    buckets: dict[tuple[str, ...], list[RunRow]] = {}
    skipped = 0
    for r in runs:
        if all(c.value(r) is None for c in cols):
            skipped += 1
            continue
        key = tuple(r.group_value(k) for k in group_by) + (r.basis,)
        buckets.setdefault(key, []).append(r)
    groups = sorted(buckets)
    cells: dict[tuple[str, ...], dict[str, Cell]] = {}
    for g in groups:
        cells[g] = {}
        for c in cols:
            vals = []
            for r in buckets[g]:
                if c.key == "carbon" and what_if is not None:
                    if "energy_kwh" in r.metrics:
                        vals.append(r.metrics["energy_kwh"] * what_if[1] * what_if[0])
                elif (v := c.value(r)) is not None:
                    vals.append(v)
            cells[g][c.key] = Cell(tuple(vals))
    return Report(
        tuple(group_by),
        cols,
        groups,
        cells,
        {g: len(buckets[g]) for g in groups},
        what_if[2] if what_if else None,
        skipped,
    )


def fetch_runs(
    experiment_names: Sequence[str] | None = None,
    filter_string: str = "",
    tracking_uri: str | None = None,
    experiment_ids: Sequence[str] | None = None,
    page_size: int = 1000,
    fast: bool = True,
) -> list[RunRow]:
    """The active runs of the experiments, with only what the report needs.

    Without a filter, on a database store (sqlite, PostgreSQL, MySQL), three column-restricted
    queries read the latest metric values, tags and params of every run (the values
    ``search_runs`` would return, without building full Run objects: 10,000 runs take seconds,
    not tens). Otherwise, or if that fails, ``search_runs`` page by page.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    ids = list(experiment_ids or [])
    for name in experiment_names or []:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise ValueError(f"no experiment named {name!r} at {client.tracking_uri}")
        ids.append(exp.experiment_id)
    if not ids:
        raise ValueError("give at least one experiment")
    if fast and not filter_string.strip():
        rows = _fetch_sql(client, ids)
        if rows is not None:
            return rows
    rows: list[RunRow] = []
    token = None
    while True:
        page = client.search_runs(ids, filter_string, max_results=page_size, page_token=token)
        for run in page:
            d = run.data
            rows.append(
                RunRow(
                    run.info.run_id,
                    {k: v for k, v in d.metrics.items() if k in NEEDED_METRICS},
                    {k: v for k, v in d.tags.items() if k.startswith(TAG_PREFIX)},
                    {k: v for k, v in d.params.items() if k in NEEDED_PARAMS},
                )
            )
        token = page.token
        if not token:
            break
    return rows


def _fetch_sql(client, experiment_ids: Sequence[str]) -> list[RunRow] | None:
    """Read straight from MLflow's SQL tables; None when the store is not SQL or this fails."""
    try:
        from mlflow.store.tracking.dbmodels.models import SqlLatestMetric, SqlParam, SqlRun, SqlTag
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        store = client._tracking_client.store
        if not isinstance(store, SqlAlchemyStore):
            return None
        ids = [int(i) for i in experiment_ids]
        with store.ManagedSessionMaker() as session:
            live = session.query(SqlRun.run_uuid).filter(
                SqlRun.experiment_id.in_(ids), SqlRun.lifecycle_stage == "active"
            )
            rows = {rid: RunRow(rid) for (rid,) in live}
            metrics = (
                session.query(
                    SqlLatestMetric.run_uuid,
                    SqlLatestMetric.key,
                    SqlLatestMetric.value,
                    SqlLatestMetric.is_nan,
                )
                .join(SqlRun, SqlRun.run_uuid == SqlLatestMetric.run_uuid)
                .filter(SqlRun.experiment_id.in_(ids), SqlLatestMetric.key.in_(NEEDED_METRICS))
            )
            for rid, key, value, is_nan in metrics:
                if rid in rows and not is_nan:
                    rows[rid].metrics[key] = float(value)
            tags = (
                session.query(SqlTag.run_uuid, SqlTag.key, SqlTag.value)
                .join(SqlRun, SqlRun.run_uuid == SqlTag.run_uuid)
                .filter(SqlRun.experiment_id.in_(ids), SqlTag.key.like(TAG_PREFIX + "%"))
            )
            for rid, key, value in tags:
                if rid in rows:
                    rows[rid].tags[key] = value
            params = (
                session.query(SqlParam.run_uuid, SqlParam.key, SqlParam.value)
                .join(SqlRun, SqlRun.run_uuid == SqlParam.run_uuid)
                .filter(SqlRun.experiment_id.in_(ids), SqlParam.key.in_(NEEDED_PARAMS))
            )
            for rid, key, value in params:
                if rid in rows:
                    rows[rid].params[key] = value
        return list(rows.values())
    except Exception:  # an MLflow whose tables differ: use the public API
        return None


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


def what_if(
    runs: Sequence[RunRow], carbon_intensity=None, region=None, pue=None
) -> tuple[float, float, str] | None:
    """(intensity, PUE, label) for recomputed carbon, or None when nothing is overridden."""
    if carbon_intensity is None and region is None and pue is None:
        return None
    from mlflow_wattsup.analysis.carbon import lookup_region, parse_number

    if carbon_intensity is not None:
        intensity, source = parse_number(carbon_intensity, "carbon intensity (g/kWh)", 0.0), "given"
    elif region is not None:
        c = lookup_region(region)
        intensity, source = c.g_per_kwh, f"{c.region}, {c.source}"
    else:
        logged = {r.params.get("wattsup.carbon_intensity_g_per_kwh") for r in runs} - {None}
        if len(logged) != 1:
            raise ValueError(
                "--pue alone needs every run to share one logged intensity; give --carbon-intensity or --region too"
            )
        intensity, source = float(logged.pop()), "as logged"
    p = 1.0 if pue is None else parse_number(pue, "PUE", 1.0)
    return intensity, p, f"{intensity:.4g} g/kWh ({source}), PUE {p:g}"
