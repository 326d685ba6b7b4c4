"""The cost of N more subjects, forecast from a pilot's per-subject costs.

A pilot measured n subjects: costs x_1..x_n (hours, kWh, g CO2eq), mean m, sample sd s. The
question is what processing N new subjects will cost in total, T = X_1 + ... + X_N.

**Which interval.** Not the confidence interval of the mean scaled by N: that one answers "where
is the true mean per subject" and ignores that the N new subjects vary too. Not a prediction
interval for one subject times N either: that one treats the N subjects as the same draw repeated
and is far too wide. What is asked is a *prediction interval for the total of N future
subjects*. With the new subjects independent of the pilot and drawn like it,

    T - N m  has variance  N sigma^2 (new subjects' spread)  +  N^2 sigma^2 / n (the mean's error)

so the two-sided interval at ``level`` is

    N m  +-  t_{(1+level)/2, n-1}  s  sqrt(N + N^2 / n)

(Student's t with n - 1 degrees of freedom, for the sd estimated from the pilot). The t factor
assumes roughly normal per-subject costs in the pilot; the sum of N new subjects is close to
normal for large N whatever their distribution, but with a tiny, skewed pilot the interval is
approximate (and wide: t is 12.7 at n = 2, 4.3 at n = 3). For N = 1 it is the usual prediction interval for one subject;
for N >> n it tends to N times the confidence interval of the mean: at cohort scale the
uncertainty of the pilot's mean, not the spread of the new subjects, dominates, and it only
shrinks with a larger pilot. Costs cannot be negative: the lower bound is clipped at 0 (and
says so in :attr:`Interval.clipped`).

Assumptions a reader must know: the N subjects are like the pilot's (same scanner, resolution,
pipeline version, machine, contention); costs add up (no set-up shared across subjects, no
queueing); with n = 1 there is no spread and so no interval.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

DEFAULT_LEVEL = 0.95
INTERVAL_NAME = "prediction interval for the total of N new subjects (Student t, n-1 df)"


class ForecastError(ValueError):
    """Unusable pilot values or N; ``str(exc)`` is one line."""


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        raise ForecastError(f"Student t needs at least 1 degree of freedom, got {df}")
    from scipy.stats import t

    return float(t.ppf(p, df))


@dataclass(frozen=True)
class Interval:
    """A forecast total and its interval; ``low``/``high`` None when the pilot has one subject."""

    total: float
    low: float | None
    high: float | None
    clipped: bool = False  # the lower bound was negative and set to 0


def total_interval(values: Sequence[float], n_future: int, level: float = DEFAULT_LEVEL) -> Interval:
    """Forecast of the sum of ``n_future`` new subjects' costs from the pilot ``values`` (see the
    module doc for the interval and its assumptions)."""
    xs = [float(v) for v in values]
    if not xs:
        raise ForecastError("no pilot values to forecast from")
    if any(not math.isfinite(v) or v < 0 for v in xs):
        raise ForecastError("pilot values must be finite and not negative (costs)")
    if n_future < 1:
        raise ForecastError(f"the number of subjects to forecast must be 1 or more, got {n_future}")
    if not 0 < level < 1:
        raise ForecastError(f"the interval level must be between 0 and 1, got {level}")
    n = len(xs)
    mean = statistics.fmean(xs)
    total = n_future * mean
    if n < 2:
        return Interval(total, None, None)
    s = statistics.stdev(xs)
    half = t_quantile((1 + level) / 2, n - 1) * s * math.sqrt(n_future + n_future**2 / n)
    low = total - half
    return Interval(total, max(0.0, low), total + half, low < 0)


def scale(interval: Interval, factor: float) -> Interval:
    """The interval of ``factor`` x the total (a unit change, or carbon from energy at one
    intensity and PUE: a constant factor per subject scales the interval exactly)."""
    return Interval(
        interval.total * factor,
        None if interval.low is None else interval.low * factor,
        None if interval.high is None else interval.high * factor,
        interval.clipped,
    )


def default_counts(pilot_subjects: int, extra: Sequence[int] = ()) -> list[int]:
    """The N to forecast: the pilot's subject count x 10, 100 and 1,000, and ``extra`` (e.g.
    40,000 and 100,000 for UK Biobank), sorted, without repeats."""
    if pilot_subjects < 1:
        raise ForecastError("a forecast needs at least one subject in the pilot")
    bad = [n for n in extra if int(n) < 1]
    if bad:
        raise ForecastError(f"--forecast {bad[0]}: give a number of subjects, 1 or more")
    return sorted({pilot_subjects * k for k in (10, 100, 1000)} | {int(n) for n in extra})
