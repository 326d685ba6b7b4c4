"""The forecast interval for the total of N new subjects, against values worked out by hand."""

import math

import pytest

from mlflow_wattsup.analysis.forecast import (
    ForecastError,
    default_counts,
    scale,
    t_quantile,
    total_interval,
)

# Student t quantiles from printed tables (two-sided 95 %)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 10: 2.228, 30: 2.042}


@pytest.mark.parametrize("df,value", sorted(T975.items()))
def test_t_quantile_matches_tables(df, value):
    assert t_quantile(0.975, df) == pytest.approx(value, abs=1e-3)


def test_interval_of_a_total_by_hand():
    xs = [9.0, 10.0, 11.0]  # mean 10, sd 1, n 3
    iv = total_interval(xs, 10)
    half = 4.302652729911275 * 1.0 * math.sqrt(10 + 100 / 3)
    assert iv.total == pytest.approx(100.0)
    assert (iv.low, iv.high) == (pytest.approx(100 - half), pytest.approx(100 + half))
    assert iv.low > 0 and not iv.clipped
    # one new subject: the classical prediction interval m +- t s sqrt(1 + 1/n)
    one = total_interval(xs, 1)
    assert one.high - one.total == pytest.approx(4.302652729911275 * math.sqrt(1 + 1 / 3))
    # cohort scale: N x the confidence interval of the mean, not N x the one-subject interval
    big = total_interval(xs, 100_000)
    ci_mean = 4.302652729911275 / math.sqrt(3)
    assert (big.high - big.total) / 100_000 == pytest.approx(ci_mean, rel=1e-4)
    # N x the one-subject interval would be twice as wide here (sqrt(1 + 1/3) / sqrt(1/3) = 2)
    assert (big.high - big.total) == pytest.approx(100_000 * (one.high - one.total) / 2, rel=1e-4)


def test_lower_bound_clipped_at_zero_and_one_subject_has_no_interval():
    iv = total_interval([0.1, 5.0], 2)
    assert iv.low == 0.0 and iv.clipped and iv.high > iv.total
    solo = total_interval([3.0], 100)
    assert solo.total == 300.0 and solo.low is None and solo.high is None
    s = scale(iv, 1000)
    assert (s.total, s.low, s.high, s.clipped) == (iv.total * 1000, 0.0, iv.high * 1000, True)


def test_errors_and_default_counts():
    with pytest.raises(ForecastError, match="no pilot values"):
        total_interval([], 10)
    with pytest.raises(ForecastError, match="not negative"):
        total_interval([1.0, -2.0], 10)
    with pytest.raises(ForecastError, match="1 or more"):
        total_interval([1.0, 2.0], 0)
    assert default_counts(2, [40_000, 100_000, 200]) == [20, 200, 2000, 40_000, 100_000]
    with pytest.raises(ForecastError, match="--forecast 0"):
        default_counts(2, [0])
