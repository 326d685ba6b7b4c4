"""The agreement of two pipelines across subjects, read back from runs and written as a table;
and one run's comparison with its reference as CSV.

Reading (:func:`study_agreement`): any MLflow runs tagged ``wattsup.subject`` and
``wattsup.pipeline`` that logged their own values (``volume_mm3/*``, ``thickness_mm/*``, see
:mod:`mlflow_wattsup.run.subject_stats`) are paired by subject, and per structure N, means, mean
difference, Pearson r and ICC(2,1) of pipeline a against b are computed
(:func:`~mlflow_wattsup.analysis.agreement_stats.cross_subject`). Writing: markdown, HTML or CSV
(:func:`render`).
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence

from mlflow_wattsup.analysis.agreement_stats import (
    MEASURES,
    MIN_SUBJECTS,
    AgreementTable,
    Comparison,
    RegionAgreement,
    cross_subject,
)
from mlflow_wattsup.report.numbers import fixed, raw
from mlflow_wattsup.report.table import csv_text, html_table, markdown
from mlflow_wattsup.sink import keys

NOTHING_IN_COMMON = "No structure measured by both pipelines in any subject."

# -- writing ---------------------------------------------------------------------------------------


def header(t: AgreementTable) -> list[str]:
    return [
        "Measure",
        "Structure",
        "N",
        f"Mean {t.a}",
        f"Mean {t.b}",
        f"Mean diff ({t.a} - {t.b})",
        "Pearson r",
        "ICC(2,1)",
    ]


def cells(r: RegionAgreement) -> list[str]:
    """Volumes to 0.1 mm^3, thickness to 0.001 mm, r and ICC to 0.001."""
    digits = 1 if r.measure == "volume" else 3
    unit = "mm³" if r.measure == "volume" else "mm"
    means = [fixed(x, digits) for x in (r.mean_a, r.mean_b, r.mean_diff)]
    return [f"{r.measure} ({unit})", r.name, str(r.n), *means, fixed(r.r), fixed(r.icc)]


def notes(t: AgreementTable) -> list[str]:
    """What was compared over which subjects, a summary per measure, who was not paired and why."""
    out = [
        f"{t.a} against {t.b} over {len(t.subjects)} subject(s) with both; "
        "ICC(2,1): two-way random, absolute agreement, single measure. "
        f"r and ICC need at least {MIN_SUBJECTS} subjects (else n/a)."
    ]
    for m in MEASURES:
        s = t.summary(m)
        if s["regions_n"]:
            out.append(
                f"{m}: {s['regions_n']} {'structures' if m == 'volume' else 'regions'}, median r "
                f"{fixed(s['r_median'])}, "
                f"median ICC {fixed(s['icc_median'])}, lowest ICC {fixed(s['icc_min'])}"
            )
    if t.unpaired:
        only = ", ".join(f"{s} ({p} only)" for s, p in sorted(t.unpaired.items()))
        out.append(f"not paired: {only}")
    return out + t.extra_notes


def to_markdown(t: AgreementTable) -> str:
    lines = [f"### Agreement: {t.a} vs {t.b}", ""]
    lines += [f"- {n}" for n in notes(t)]
    lines.append("")
    if not t.rows:
        lines.append(NOTHING_IN_COMMON)
    else:
        lines += markdown(header(t), [cells(r) for r in t.rows], ["left", "left"] + ["right"] * 6)
    return "\n".join(lines) + "\n"


def to_html(t: AgreementTable) -> str:
    e = html.escape
    parts = [f"<h3>Agreement: {e(t.a)} vs {e(t.b)}</h3>", "<ul>"]
    parts += [f"<li>{e(n)}</li>" for n in notes(t)]
    parts.append("</ul>")
    if not t.rows:
        parts.append(f"<p>{NOTHING_IN_COMMON}</p>")
    else:
        parts += html_table(header(t), [cells(r) for r in t.rows], "wattsup-agreement", sections=False)
    return "\n".join(parts) + "\n"


def to_csv(t: AgreementTable) -> str:
    """One row per structure; values to 6 significant digits, empty where undefined."""
    head = ["measure", "unit", "name", "n", "mean_a", "mean_b", "mean_diff", "pearson_r", "icc_2_1"]
    rows = [
        [r.measure, MEASURES[r.measure], r.name, r.n]
        + [raw(x, 6) for x in (r.mean_a, r.mean_b, r.mean_diff, r.r, r.icc)]
        for r in t.rows
    ]
    return csv_text(head, rows, newline="\n")


def render(t: AgreementTable, fmt: str = "markdown") -> str:
    """``fmt``: markdown (or md), html or csv."""
    if fmt in ("markdown", "md"):
        return to_markdown(t)
    if fmt == "html":
        return to_html(t)
    if fmt == "csv":
        return to_csv(t)
    raise ValueError(f"format must be markdown, html or csv, got {fmt!r}")


def comparison_csv(c: Comparison) -> str:
    """One run's values against its reference's, per structure: both values, the difference, the
    relative difference, and why a structure was not compared."""
    unit = MEASURES[c.measure]
    head = ["name", f"run_{unit}", f"reference_{unit}", f"diff_{unit}", "reldiff", "note"]
    rows = []
    for p in c.pairs:
        note = "" if p.diff is not None else ("run only" if p.reference is None else "reference only")
        rows.append([p.name, raw(p.run, 6), raw(p.reference, 6), raw(p.diff, 6), raw(p.reldiff, 6), note])
    rows += [[name, 0, 0, "", "", "empty in both: not compared"] for name in c.empty_both]
    return csv_text(head, rows, newline="\n")


# -- reading ---------------------------------------------------------------------------------------


def logged_values(metrics: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``{measure: {structure: value}}`` of the volumes and thickness in a run's metrics."""
    per: dict[str, dict[str, float]] = {m: {} for m in keys.VALUE_PREFIX}
    for k, v in metrics.items():
        for m, prefix in keys.VALUE_PREFIX.items():
            if k.startswith(prefix + "/"):
                per[m][k[len(prefix) + 1 :]] = v
    return per


def values_from_runs(runs: Iterable, pipelines: Sequence[str] | None = None) -> tuple[dict, list[str]]:
    """``values[subject][pipeline][measure] = {structure: value}`` from MLflow runs (``Run``
    objects) tagged ``wattsup.subject`` and ``wattsup.pipeline``; per (subject, pipeline) the
    latest run that logged values is used. Also returns notes (runs skipped and why)."""
    chosen: dict[tuple[str, str], object] = {}
    notes = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        subject, pipeline = tags.get(keys.SUBJECT), tags.get(keys.PIPELINE)
        if not subject or not pipeline or (pipelines and pipeline not in pipelines):
            continue
        if not any(k.startswith(tuple(p + "/" for p in keys.VALUE_PREFIX.values())) for k in metrics):
            notes.append(f"run {run.info.run_id} ({pipeline}, {subject}) logged no volumes or thickness")
            continue
        prev = chosen.get((subject, pipeline))
        if prev is not None:
            notes.append(
                f"{pipeline}, {subject}: several runs with values, the latest is used"
                if prev.info.start_time != run.info.start_time
                else f"{pipeline}, {subject}: several runs"
            )
        if prev is None or (run.info.start_time or 0) > (prev.info.start_time or 0):
            chosen[(subject, pipeline)] = run
    values: dict = {}
    for (subject, pipeline), run in chosen.items():
        values.setdefault(subject, {})[pipeline] = logged_values(run.data.metrics)
    return values, sorted(set(notes))


def study_agreement(
    experiment_ids: Sequence[str],
    pipelines: Sequence[str] = ("fastsurfer", "freesurfer"),
    store=None,
    filter_string: str = "",
) -> AgreementTable:
    """Agreement of ``pipelines[0]`` with ``pipelines[1]`` across the subjects of the runs in
    ``experiment_ids`` (finished runs only; ``filter_string`` narrows further, e.g. to a study).
    ``store``: a :class:`~mlflow_wattsup.sink.transport.Store` (default: the tracking URI's)."""
    if len(pipelines) != 2:
        raise ValueError(f"give two pipelines to compare, got {len(pipelines)}: {', '.join(pipelines)}")
    if store is None:
        from mlflow.tracking import MlflowClient

        from mlflow_wattsup.sink.transport import Store

        store = Store(MlflowClient())
    clauses = ["attributes.status = 'FINISHED'"] + ([filter_string] if filter_string else [])
    runs = store.search_runs(experiment_ids, " and ".join(clauses))
    values, notes = values_from_runs(runs, pipelines)
    table = cross_subject(values, pipelines[0], pipelines[1])
    table.extra_notes = notes
    return table


def agreement_block(
    experiments: Sequence[str],
    pipelines: Sequence[str] = ("fastsurfer", "freesurfer"),
    fmt: str = "markdown",
    filter_string: str = "",
    tracking_uri: str | None = None,
) -> str:
    """The agreement table of experiment(s) (by name) rendered for a report, or ``""`` when no
    subject has runs of both pipelines with logged values (so a report without them is unchanged)."""
    from mlflow.tracking import MlflowClient

    from mlflow_wattsup.sink.transport import Store

    store = Store(MlflowClient(tracking_uri))
    table = study_agreement(store.experiment_ids(experiments), pipelines, store, filter_string)
    return render(table, fmt) if table.subjects else ""
