"""Log a run's volumes and cortical thickness (read from its subject directory's FreeSurfer-format
stats files), and their agreement with a reference subject directory (the other pipeline's output
for the same subject, or a user's).

:func:`log_agreement` logs the run's own values (``volume_mm3/<structure>``,
``thickness_mm/<region>``), and with a reference the differences run - reference per structure
and their means, the tables as CSV artifacts, Dice of the two segmentations, and tags saying which
files were compared and what could not be (no surfaces in ``--seg_only``, recon-all stopped before
the stats...). The agreement of two pipelines across a study's subjects is read back from these
values by :mod:`mlflow_wattsup.report.agreement_table`.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_wattsup.analysis import fsstats
from mlflow_wattsup.analysis.agreement_stats import MEASURES, Comparison, compare
from mlflow_wattsup.report.agreement_table import comparison_csv
from mlflow_wattsup.sink import keys

TABLE_ARTIFACT = "wattsup/agreement_{measure}.csv"
#: the DKT+aseg segmentation of a subject directory, in order of preference: FreeSurfer's (and a
#: full FastSurfer run's link to its mapped one), then FastSurfer's network output (``--seg_only``)
SEG_FILES = ("mri/aparc.DKTatlas+aseg.mgz", "mri/aparc.DKTatlas+aseg.deep.mgz")


def value_tags(stats: fsstats.SubjectStats) -> dict[str, str]:
    return {
        keys.stats_tag("volume"): stats.volume_file or f"n/a: {stats.volume_missing}",
        keys.stats_tag("thickness"): (
            ", ".join(stats.thickness_files)
            + (f" (and {stats.thickness_missing})" if stats.thickness_missing else "")
            if stats.thickness_files
            else f"n/a: {stats.thickness_missing}"
        ),
    }


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
    metrics = keys.subject_value_metrics(run.volumes_mm3, run.thickness_mm)
    tags = value_tags(run)
    if ref is not None:
        tags[keys.AGREE_REFERENCE] = str(Path(reference_dir).resolve())
        tags[keys.agree_tag("volume")] = _status(
            run.volume_file or "",
            ref.volume_file or "",
            run.volume_missing,
            ref.volume_missing,
            comps.get("volume"),
        )
        tags[keys.agree_tag("thickness")] = _status(
            ", ".join(run.thickness_files),
            ", ".join(ref.thickness_files),
            None if run.thickness_mm else run.thickness_missing,
            None if ref.thickness_mm else ref.thickness_missing,
            comps.get("thickness"),
        )
        for measure, c in comps.items():
            metrics.update(keys.comparison_metrics(c, MEASURES[measure]))
            unmatched = _unmatched(c)
            if unmatched:
                tags[keys.agree_unmatched_tag(measure)] = unmatched
    tables = {TABLE_ARTIFACT.format(measure=m): comparison_csv(c) for m, c in comps.items()}
    scored = []
    if ref is not None and dice:
        scored, tags[keys.agree_tag("dice")] = dice_against(subject_dir, reference_dir)
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
            sink.set_tags({keys.WARNING_AGREEMENT: str(exc)})
            return {"error": str(exc)}
        except Exception as exc:  # extra information: never lose the run's measurement for it
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            sink.set_tags({keys.WARNING_AGREEMENT: msg})
            return {"error": msg}
        log_result(sink, result)
        return result.metrics
