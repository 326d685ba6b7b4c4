"""Log a run's volumes and cortical thickness, and their agreement with a reference
subject directory; compute and render the agreement of two pipelines across a study's subjects.

Per run (:func:`log_agreement`): the run's own values (``volume_mm3/<structure>``,
``thickness_mm/<region>``, from its subject directory's FreeSurfer-format stats files), and with a
reference subject directory (the other pipeline's output for the same subject, or a user's) the
differences run - reference per structure and their means, the tables as CSV artifacts, and tags
saying which files were compared and what could not be (no surfaces in ``--seg_only``, recon-all
stopped before the stats...).

Across runs (:func:`study_agreement`): any MLflow runs tagged ``wattsup.subject`` and
``wattsup.pipeline`` that logged their own values are paired by subject, and per structure N,
means, mean difference, Pearson r and ICC(2,1) of pipeline a against b are computed
(:mod:`mlflow_wattsup.analysis.agreement`) and rendered (markdown, HTML, CSV).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_wattsup.analysis import fsstats
from mlflow_wattsup.analysis.agreement import MEASURES, AgreementTable, Comparison, compare, cross_subject
from mlflow_wattsup.sink import keys

_KEY_OK = re.compile(r"[^A-Za-z0-9_\-.]")

# -- every key this module logs (docs/metrics.md, "Volumes, thickness and agreement") ---------------
#: per-structure metric prefixes: the run's own values, and its difference from the reference
VALUE_PREFIX = {"volume": "volume_mm3", "thickness": "thickness_mm"}
DIFF_PREFIX = {"volume": "volume_diff_mm3", "thickness": "thickness_diff_mm"}
#: summary metrics of one measure ("volume", "thickness"); unit "mm3" or "mm"
COMPARED_N = "{measure}_compared_n"
DIFF_MEAN = "{measure}_diff_mean_{unit}"
ABSDIFF_MEAN = "{measure}_absdiff_mean_{unit}"
ABSRELDIFF_MEAN = "{measure}_absreldiff_mean"
STATS_TAG = keys.PREFIX + "stats.{measure}"  # the file(s) read, or n/a: why
AGREE_REFERENCE = keys.PREFIX + "agree.reference"
AGREE_TAG = (
    keys.PREFIX + "agree.{measure}"
)  # what was compared, or n/a: why (measure: volume, thickness, dice)
AGREE_UNMATCHED = keys.PREFIX + "agree.{measure}_unmatched"
WARNING_TAG = keys.warning_tag("agreement")
TABLE_ARTIFACT = "wattsup/agreement_{measure}.csv"
#: the DKT+aseg segmentation of a subject directory, in order of preference: FreeSurfer's (and a
#: full FastSurfer run's link to its mapped one), then FastSurfer's network output (``--seg_only``)
SEG_FILES = ("mri/aparc.DKTatlas+aseg.mgz", "mri/aparc.DKTatlas+aseg.deep.mgz")
SUBJECT_TAG = keys.SUBJECT
PIPELINE_TAG = keys.PIPELINE


def key_part(name: str) -> str:
    """A structure name as one MLflow key segment (other characters than ``A-Za-z0-9_-.`` -> ``_``)."""
    return _KEY_OK.sub("_", name)


def value_metrics(stats: fsstats.SubjectStats) -> dict[str, float]:
    out = {f"{VALUE_PREFIX['volume']}/{key_part(k)}": v for k, v in stats.volumes_mm3.items()}
    out.update({f"{VALUE_PREFIX['thickness']}/{key_part(k)}": v for k, v in stats.thickness_mm.items()})
    return out


def value_tags(stats: fsstats.SubjectStats) -> dict[str, str]:
    return {
        STATS_TAG.format(measure="volume"): stats.volume_file or f"n/a: {stats.volume_missing}",
        STATS_TAG.format(measure="thickness"): (
            ", ".join(stats.thickness_files)
            + (f" (and {stats.thickness_missing})" if stats.thickness_missing else "")
            if stats.thickness_files
            else f"n/a: {stats.thickness_missing}"
        ),
    }


def comparison_metrics(c: Comparison) -> dict[str, float]:
    unit = MEASURES[c.measure]
    out = {f"{DIFF_PREFIX[c.measure]}/{key_part(p.name)}": p.diff for p in c.compared}
    out[COMPARED_N.format(measure=c.measure)] = c.n
    if c.n:
        out[DIFF_MEAN.format(measure=c.measure, unit=unit)] = c.mean_diff()
        out[ABSDIFF_MEAN.format(measure=c.measure, unit=unit)] = c.mean_absdiff()
        rel = c.mean_absreldiff()
        if rel is not None:
            out[ABSRELDIFF_MEAN.format(measure=c.measure)] = rel
    return out


def _unmatched(c: Comparison) -> str:
    parts = []
    if c.only_run:
        parts.append(f"run only: {', '.join(c.only_run)}")
    if c.only_reference:
        parts.append(f"reference only: {', '.join(c.only_reference)}")
    return "; ".join(parts)


def _status(
    files_run: str, files_ref: str, why_run: str | None, why_ref: str | None, c: Comparison | None
) -> str:
    if c is None:
        whys = [f"run: {why_run}" if why_run else "", f"reference: {why_ref}" if why_ref else ""]
        return "n/a: " + "; ".join(w for w in whys if w)
    what = "structures" if c.measure == "volume" else "regions"
    return f"{c.n} {what}: {files_run} vs reference {files_ref}"


def agreement_values(
    subject_dir: str | Path, reference_dir: str | Path | None
) -> tuple[fsstats.SubjectStats, fsstats.SubjectStats | None, dict[str, Comparison]]:
    """Read both directories (the same volume stats file name on both sides when both have it)
    and compare what both have. Raises :class:`~mlflow_wattsup.analysis.fsstats.StatsFormatError`."""
    if reference_dir is None:
        return fsstats.read_subject(subject_dir), None, {}
    ref = fsstats.read_subject(reference_dir)
    run = fsstats.read_subject(subject_dir, prefer_volume=ref.volume_file)
    if run.volume_file and ref.volume_file != run.volume_file:
        # the reference has the run's preferred file too: compare like with like
        same = fsstats.find_volume_stats(reference_dir, run.volume_file)
        if same == run.volume_file:
            ref = fsstats.read_subject(reference_dir, prefer_volume=same)
    out = {}
    if run.volumes_mm3 and ref.volumes_mm3:
        out["volume"] = compare(run.volumes_mm3, ref.volumes_mm3, "volume")
    if run.thickness_mm and ref.thickness_mm:
        out["thickness"] = compare(run.thickness_mm, ref.thickness_mm, "thickness")
    return run, ref, out


@dataclass
class AgreementResult:
    """What :func:`log_agreement` logs for one run: metrics, tags and CSV tables by artifact path."""

    metrics: dict[str, float]
    tags: dict[str, str]
    tables: dict[str, str]
    comparisons: dict[str, Comparison]
    dice: list = field(default_factory=list)  # (DiceResult, prefix) to log with log_dice


def find_seg(subject_dir: str | Path, prefer: str | None = None) -> str | None:
    d = Path(subject_dir)
    order = ([prefer] if prefer else []) + list(SEG_FILES)
    return next((rel for rel in order if (d / rel).is_file()), None)


def dice_against(subject_dir: str | Path, reference_dir: str | Path) -> tuple[list, str]:
    """Dice of the run's DKT+aseg segmentation against the reference directory's, as the projects
    score it (``dice`` all labels, ``dice_aseg`` cortical parcels merged): ([(result, prefix)],
    what was compared), or ([], ``n/a: why``). Never raises for unusable volumes."""
    from mlflow_wattsup.analysis.dice import DiceInputError, dice_files
    from mlflow_wattsup.analysis.labels import default_names, parse_merge

    ref = find_seg(reference_dir)
    run = find_seg(subject_dir, ref)
    if run is None or ref is None:
        whys = [
            f"{side}: no {' or '.join(SEG_FILES)}"
            for side, f in (("run", run), ("reference", ref))
            if f is None
        ]
        return [], "n/a: " + "; ".join(whys)
    if ref != run and find_seg(reference_dir, run) == run:
        ref = run  # like with like when both have it
    names, source = default_names()
    a, b = Path(subject_dir) / run, Path(reference_dir) / ref
    try:
        full = dice_files(a, b, names=names, names_source=source)
        merged = dice_files(
            a, b, names=names, names_source=source, merge=parse_merge("aseg"), merge_name="aseg"
        )
    except DiceInputError as exc:
        return [], f"n/a: {exc}"
    return [(full, "dice"), (merged, "dice_aseg")], f"{run} vs reference {ref}"


def agreement(
    subject_dir: str | Path, reference_dir: str | Path | None = None, dice: bool = True
) -> AgreementResult:
    """Read and compare (see :func:`log_agreement`); raises
    :class:`~mlflow_wattsup.analysis.fsstats.StatsFormatError` for a malformed stats file."""
    run, ref, comps = agreement_values(subject_dir, reference_dir)
    metrics = value_metrics(run)
    tags = value_tags(run)
    if ref is not None:
        tags[AGREE_REFERENCE] = str(Path(reference_dir).resolve())
        tags[AGREE_TAG.format(measure="volume")] = _status(
            run.volume_file or "",
            ref.volume_file or "",
            run.volume_missing,
            ref.volume_missing,
            comps.get("volume"),
        )
        tags[AGREE_TAG.format(measure="thickness")] = _status(
            ", ".join(run.thickness_files),
            ", ".join(ref.thickness_files),
            None if run.thickness_mm else run.thickness_missing,
            None if ref.thickness_mm else ref.thickness_missing,
            comps.get("thickness"),
        )
        for measure, c in comps.items():
            metrics.update(comparison_metrics(c))
            unmatched = _unmatched(c)
            if unmatched:
                tags[AGREE_UNMATCHED.format(measure=measure)] = unmatched
    tables = {TABLE_ARTIFACT.format(measure=m): c.to_csv() for m, c in comps.items()}
    scored = []
    if ref is not None and dice:
        scored, tags[AGREE_TAG.format(measure="dice")] = dice_against(subject_dir, reference_dir)
    return AgreementResult(metrics, tags, tables, comps, scored)


def log_result(sink, result: AgreementResult) -> None:
    from mlflow_wattsup.run.log import log_dice

    sink.log_metrics(result.metrics)
    sink.set_tags(result.tags)
    for path, text in result.tables.items():
        sink.log_text(text, path)
    for res, prefix in result.dice:
        log_dice(res, prefix=prefix, sink=sink)


def log_agreement(
    sink_or_run_id, subject_dir: str | Path, reference_dir: str | Path | None = None, dice: bool = True
) -> dict:
    """Log a run's own volumes and thickness from ``subject_dir`` (``volume_mm3/*``,
    ``thickness_mm/*``) and, with ``reference_dir``, its differences from that subject directory
    (``volume_diff_mm3/*``, ``thickness_diff_mm/*`` and their means), the tables
    ``wattsup/agreement_volume.csv`` and ``wattsup/agreement_thickness.csv``, and tags saying what
    was and was not compared (``wattsup.agree.*``, ``wattsup.stats.*``). With ``dice`` (default),
    also Dice of the two directories' DKT+aseg segmentations (``dice/*``, ``dice_aseg/*``, as the
    projects log it against a reference segmentation; pass ``dice=False`` when the run already
    scored one).

    ``sink_or_run_id``: an :class:`~mlflow_wattsup.sink.MlflowSink` (not closed here),
    a run id, or None (the active run, else ``$MLFLOW_RUN_ID``, else a new run). Never raises for
    missing or malformed files (nor for anything else: the run's measurement comes first): a
    malformed file is named in the tag ``wattsup.warning.agreement`` and returned under
    ``"error"``. Returns the volume and thickness metrics logged."""
    from mlflow_wattsup.run.log import target_run

    ctx = (
        target_run(run_id=sink_or_run_id)
        if isinstance(sink_or_run_id, str) or sink_or_run_id is None
        else contextlib.nullcontext(sink_or_run_id)
    )
    with ctx as sink:
        try:
            result = agreement(subject_dir, reference_dir, dice)
        except fsstats.StatsFormatError as exc:
            sink.set_tags({WARNING_TAG: str(exc)})
            return {"error": str(exc)}
        except Exception as exc:  # extra information: never lose the run's measurement for it
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            sink.set_tags({WARNING_TAG: msg})
            return {"error": msg}
        log_result(sink, result)
        return result.metrics


# -- across a study -------------------------------------------------------------------------------


def values_from_runs(runs: Iterable, pipelines: Sequence[str] | None = None) -> tuple[dict, list[str]]:
    """``values[subject][pipeline][measure] = {structure: value}`` from MLflow runs (``Run``
    objects) tagged ``wattsup.subject`` and ``wattsup.pipeline``; per (subject, pipeline) the
    latest run that logged values is used. Also returns notes (runs skipped and why)."""
    chosen: dict[tuple[str, str], object] = {}
    notes = []
    for run in runs:
        tags, metrics = run.data.tags, run.data.metrics
        subject, pipeline = tags.get(SUBJECT_TAG), tags.get(PIPELINE_TAG)
        if not subject or not pipeline or (pipelines and pipeline not in pipelines):
            continue
        if not any(k.startswith(tuple(p + "/" for p in VALUE_PREFIX.values())) for k in metrics):
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
        per = {m: {} for m in MEASURES}
        for k, v in run.data.metrics.items():
            for m, prefix in VALUE_PREFIX.items():
                if k.startswith(prefix + "/"):
                    per[m][k[len(prefix) + 1 :]] = v
        values.setdefault(subject, {})[pipeline] = per
    return values, sorted(set(notes))


def study_agreement(
    experiment_ids: Sequence[str],
    pipelines: Sequence[str] = ("fastsurfer", "freesurfer"),
    client=None,
    filter_string: str = "",
) -> AgreementTable:
    """Agreement of ``pipelines[0]`` with ``pipelines[1]`` across the subjects of the runs in
    ``experiment_ids`` (finished runs only; ``filter_string`` narrows further, e.g. to a study)."""
    from mlflow.tracking import MlflowClient

    if len(pipelines) != 2:
        raise ValueError(f"give two pipelines to compare, got {len(pipelines)}: {', '.join(pipelines)}")
    client = client or MlflowClient()
    clauses = ["attributes.status = 'FINISHED'"] + ([filter_string] if filter_string else [])
    runs, token = [], None
    while True:
        page = client.search_runs(
            list(experiment_ids), " and ".join(clauses), max_results=1000, page_token=token
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
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

    client = MlflowClient(tracking_uri)
    ids = []
    for name in experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise ValueError(f"no experiment named {name!r} at {client.tracking_uri}")
        ids.append(exp.experiment_id)
    table = study_agreement(ids, pipelines, client, filter_string)
    return table.render(fmt) if table.subjects else ""
