"""The long per-label Dice table: one row per run and label, the layout a study's statistics start
from (the reference study kept one per pruning level and subject: label, Dice, level, cohort,
subject).

Columns: ``run_id``, ``study``, ``subject``, ``pipeline``, one column per swept parameter (its
name, in alphabetical order; ``sweep_<name>`` if the name is one of the other columns), ``device``, ``prefix`` (``dice``,
or ``dice_aseg`` for the aseg-merged comparison), ``label`` (the label ID: FreeSurfer's for
FreeSurfer label volumes), ``name`` (the label's name as the run scored it: FreeSurfer's LUT or
built-in names, or the pipeline's own, e.g. ``brain``, ``CSF``), ``dice``. A value a run does not
have is empty. Pure: no MLflow, no pandas.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

FIXED = ("run_id", "study", "subject", "pipeline")
AFTER_SWEEP = ("device", "prefix", "label", "name", "dice")


@dataclass(frozen=True)
class Score:
    prefix: str
    label: int | None  # None when only the metric (named, no ID) was available
    name: str
    dice: float


@dataclass
class RunScores:
    """One run: who it is (``run_id``, ``study``, ``subject``, ``pipeline``, ``device``), its swept
    values, and its scores."""

    ident: Mapping[str, str]
    swept: Mapping[str, str] = field(default_factory=dict)
    scores: list[Score] = field(default_factory=list)


def scores_from_csv(text: str, prefix: str = "dice") -> list[Score]:
    """The rows of a ``wattsup/<prefix>.csv`` artifact (``DiceResult.to_csv``: label, name, dice, ...)."""
    out = []
    for row in csv.DictReader(io.StringIO(text)):
        try:
            label = int(row["label"])
            value = float(row["dice"])
        except (KeyError, TypeError, ValueError):
            continue
        out.append(Score(prefix, label, row.get("name") or f"label_{label}", value))
    return out


def scores_from_metrics(metrics: Mapping[str, float], prefix: str = "dice") -> list[Score]:
    """Scores from ``<prefix>/<name>`` metrics (no label IDs: for runs without the CSV artifact)."""
    head = prefix + "/"
    return [
        Score(prefix, None, k[len(head) :], float(v))
        for k, v in sorted(metrics.items())
        if k.startswith(head) and isinstance(v, (int, float)) and not math.isnan(v)
    ]


def dice_prefixes(metrics: Mapping[str, float]) -> list[str]:
    """The Dice prefixes a run logged (``dice``, ``dice_aseg``...), from its ``<prefix>_labels_n``."""
    return sorted(k[: -len("_labels_n")] for k in metrics if k.endswith("_labels_n") and k.startswith("dice"))


def columns(runs: Sequence[RunScores]) -> tuple[list[str], dict[str, str]]:
    """The header, and each swept parameter's column name."""
    swept = sorted({k for r in runs for k in r.swept})
    taken = set(FIXED) | set(AFTER_SWEEP)
    names = {k: (f"sweep_{k}" if k in taken else k) for k in swept}
    return [*FIXED, *names.values(), *AFTER_SWEEP], names


def long_rows(runs: Sequence[RunScores]) -> tuple[list[str], list[list]]:
    """(header, rows): one row per run and score, in the runs' order then the scores'. Values keep
    their types (``label`` int or None, ``dice`` float); a missing one is None."""
    header, names = columns(runs)
    rows = []
    for r in runs:
        swept = [r.swept.get(k) for k in names]
        for s in r.scores:
            rows.append(
                [
                    *(r.ident.get(k) or None for k in FIXED),
                    *swept,
                    r.ident.get("device") or None,
                    s.prefix,
                    s.label,
                    s.name,
                    s.dice,
                ]
            )
    return header, rows
