"""Agreement between two pipelines' measurements (volumes in mm^3, cortical thickness in mm).

Per subject: :func:`compare` pairs a run's values with a reference's by structure name and gives
signed differences (run - reference), their mean, mean absolute and mean absolute relative
difference. Across subjects: :func:`cross_subject` gives, per structure, N (subjects with both
pipelines' values), the means, the mean difference (a - b), Pearson's r and ICC(2,1).

ICC(2,1) is Shrout & Fleiss' two-way random-effects, absolute-agreement, single-measure
coefficient, from the two-way ANOVA of an n subjects x k pipelines table::

    ICC(2,1) = (MSR - MSE) / (MSR + (k - 1) MSE + k (MSC - MSE) / n)

MSR: between-subjects mean square, MSC: between-pipelines mean square, MSE: residual mean square.
Unlike r, it drops when one pipeline is offset from the other. Both are left undefined (None)
below :data:`MIN_SUBJECTS` subjects or when the values do not vary.

Pure functions (numpy only): no MLflow, no pandas. The tables are written by
:mod:`mlflow_wattsup.report.agreement_table`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

#: fewest subjects for r and ICC (with two, r is always +-1)
MIN_SUBJECTS = 3
MEASURES = {"volume": "mm3", "thickness": "mm"}  # measure -> unit in key names


def pearson_r(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Pearson's correlation coefficient; None below :data:`MIN_SUBJECTS` pairs or with no spread."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"pearson_r needs two equal-length 1-D sequences, got {a.shape} and {b.shape}")
    if len(a) < MIN_SUBJECTS:
        return None
    da, db = a - a.mean(), b - b.mean()
    den = math.sqrt(float(da @ da) * float(db @ db))
    if den == 0.0:
        return None
    return float(np.clip((da @ db) / den, -1.0, 1.0))


@dataclass(frozen=True)
class Anova:
    """Two-way ANOVA (no replication) of an n subjects x k raters table."""

    n: int
    k: int
    ms_rows: float  # between subjects
    ms_cols: float  # between raters (pipelines)
    ms_error: float  # residual


def anova_two_way(table) -> Anova:
    """Mean squares of an ``n x k`` array (rows: subjects, columns: pipelines)."""
    y = np.asarray(table, dtype=float)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise ValueError(f"need at least a 2 x 2 table (subjects x pipelines), got shape {y.shape}")
    n, k = y.shape
    grand = y.mean()
    ss_rows = k * float(((y.mean(axis=1) - grand) ** 2).sum())
    ss_cols = n * float(((y.mean(axis=0) - grand) ** 2).sum())
    ss_total = float(((y - grand) ** 2).sum())
    ss_error = max(0.0, ss_total - ss_rows - ss_cols)
    return Anova(n, k, ss_rows / (n - 1), ss_cols / (k - 1), ss_error / ((n - 1) * (k - 1)))


def icc_2_1(table) -> float | None:
    """ICC(2,1) of an ``n x k`` array; None below :data:`MIN_SUBJECTS` rows or with no spread."""
    y = np.asarray(table, dtype=float)
    if y.ndim != 2 or y.shape[0] < MIN_SUBJECTS:
        return None
    a = anova_two_way(y)
    den = a.ms_rows + (a.k - 1) * a.ms_error + a.k * (a.ms_cols - a.ms_error) / a.n
    if den <= 0.0 or not math.isfinite(den):
        return None
    return float((a.ms_rows - a.ms_error) / den)


# -- one subject against a reference ------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    name: str
    run: float | None
    reference: float | None

    @property
    def diff(self) -> float | None:
        """run - reference (None when one side has no value)."""
        if self.run is None or self.reference is None:
            return None
        return self.run - self.reference

    @property
    def reldiff(self) -> float | None:
        """(run - reference) / reference (None when the reference is 0 or missing)."""
        d = self.diff
        return None if d is None or not self.reference else d / self.reference


@dataclass
class Comparison:
    """One measure (volume or thickness) of one run against its reference."""

    measure: str  # "volume" or "thickness"
    pairs: list[Pair]  # compared and unmatched, in the run's order then the reference's
    empty_both: list[str] = field(default_factory=list)  # 0 in both: not compared

    @property
    def compared(self) -> list[Pair]:
        return [p for p in self.pairs if p.diff is not None]

    @property
    def only_run(self) -> list[str]:
        return [p.name for p in self.pairs if p.reference is None]

    @property
    def only_reference(self) -> list[str]:
        return [p.name for p in self.pairs if p.run is None]

    @property
    def n(self) -> int:
        return len(self.compared)

    def mean_diff(self) -> float | None:
        d = [p.diff for p in self.compared]
        return float(np.mean(d)) if d else None

    def mean_absdiff(self) -> float | None:
        d = [abs(p.diff) for p in self.compared]
        return float(np.mean(d)) if d else None

    def mean_absreldiff(self) -> float | None:
        d = [abs(p.reldiff) for p in self.compared if p.reldiff is not None]
        return float(np.mean(d)) if d else None


def compare(run: Mapping[str, float], reference: Mapping[str, float], measure: str) -> Comparison:
    """Pair ``run`` and ``reference`` values by name. A structure that is 0 in both is not
    compared (like a label in neither volume for Dice); one that is in one side only is kept as
    unmatched (``only_run`` / ``only_reference``)."""
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    pairs, empty = [], []
    for name, v in run.items():
        ref = reference.get(name)
        if ref is not None and v == 0 and ref == 0:
            empty.append(name)
        else:
            pairs.append(Pair(name, float(v), None if ref is None else float(ref)))
    pairs += [Pair(name, None, float(v)) for name, v in reference.items() if name not in run]
    return Comparison(measure, pairs, empty)


# -- across subjects ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RegionAgreement:
    measure: str
    name: str
    n: int
    mean_a: float
    mean_b: float
    mean_diff: float  # mean of (a - b)
    r: float | None
    icc: float | None


@dataclass
class AgreementTable:
    """Per structure agreement of pipeline ``a`` with pipeline ``b`` over the subjects with both."""

    a: str
    b: str
    rows: list[RegionAgreement]
    subjects: list[str]  # subjects with values from both pipelines
    unpaired: dict[str, str] = field(default_factory=dict)  # subject -> the only pipeline it has
    extra_notes: list[str] = field(default_factory=list)  # e.g. runs skipped and why

    def summary(self, measure: str) -> dict[str, float | int | None]:
        rows = [r for r in self.rows if r.measure == measure]
        rs = [r.r for r in rows if r.r is not None]
        iccs = [r.icc for r in rows if r.icc is not None]
        return {
            "regions_n": len(rows),
            "r_median": float(np.median(rs)) if rs else None,
            "icc_median": float(np.median(iccs)) if iccs else None,
            "icc_min": float(min(iccs)) if iccs else None,
        }


#: values[subject][pipeline][measure] -> {structure: value}
Values = Mapping[str, Mapping[str, Mapping[str, Mapping[str, float]]]]


def cross_subject(values: Values, a: str, b: str) -> AgreementTable:
    """Agreement of pipeline ``a`` with ``b`` per measure and structure, over the subjects that
    have both pipelines; a structure counts the subjects where both pipelines measured it."""
    subjects, unpaired = [], {}
    for s in sorted(values):
        have = values[s]
        if a in have and b in have:
            subjects.append(s)
        elif a in have or b in have:
            unpaired[s] = a if a in have else b
    rows = []
    for measure in MEASURES:
        names: list[str] = []
        for s in subjects:
            for name in values[s][a].get(measure, {}):
                if name not in names:
                    names.append(name)
        for name in names:
            xa, xb = [], []
            for s in subjects:
                va, vb = values[s][a].get(measure, {}).get(name), values[s][b].get(measure, {}).get(name)
                if va is not None and vb is not None and math.isfinite(va) and math.isfinite(vb):
                    xa.append(float(va))
                    xb.append(float(vb))
            if not xa:
                continue
            if all(x == 0 for x in xa + xb):
                continue  # empty in every subject: nothing to agree on
            rows.append(
                RegionAgreement(
                    measure,
                    name,
                    len(xa),
                    float(np.mean(xa)),
                    float(np.mean(xb)),
                    float(np.mean(np.subtract(xa, xb))),
                    pearson_r(xa, xb),
                    icc_2_1(np.column_stack([xa, xb])),
                )
            )
    return AgreementTable(a, b, rows, subjects, unpaired)
