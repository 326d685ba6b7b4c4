"""The back-off and request-cap policy many jobs sharing one server rely on (sink/backoff.py)."""

import random
import statistics

import pytest

from mlflow_wattsup.sink.backoff import RATE_ENV, TokenBucket, backoff_delay_s, rate_from_env


def test_delay_is_the_random_fraction_of_a_doubling_window_capped():
    assert backoff_delay_s(0, rand=lambda: 1.0, base_s=0.5, cap_s=8) == 0.5
    assert backoff_delay_s(1, rand=lambda: 1.0, base_s=0.5, cap_s=8) == 1.0
    assert backoff_delay_s(3, rand=lambda: 1.0, base_s=0.5, cap_s=8) == 4.0
    assert backoff_delay_s(4, rand=lambda: 1.0, base_s=0.5, cap_s=8) == 8.0
    assert backoff_delay_s(500, rand=lambda: 1.0, base_s=0.5, cap_s=8) == 8.0  # no overflow, capped
    assert backoff_delay_s(500, rand=lambda: 0.25, base_s=0.5, cap_s=8) == 2.0
    assert backoff_delay_s(7, rand=lambda: 0.0) == 0.0
    with pytest.raises(ValueError):
        backoff_delay_s(-1)


def test_jitter_spreads_retries_of_many_jobs_over_the_whole_window():
    """100 jobs that saw the same outage: their retries after attempt 5 (window capped at 8 s)
    fill [0, 8) about evenly instead of landing at the same instant."""
    rng = random.Random(20)
    delays = [backoff_delay_s(5, rand=rng.random, base_s=0.5, cap_s=8) for _ in range(100)]
    assert all(0 <= d <= 8 for d in delays)
    assert statistics.mean(delays) == pytest.approx(4, abs=0.8)
    per_second = [sum(1 for d in delays if s <= d < s + 1) for s in range(8)]
    assert max(per_second) <= 25, per_second  # no storm: at most a quarter of the jobs in any second
    assert len({round(d, 3) for d in delays}) > 90


def test_retry_after_is_a_floor_but_not_unbounded():
    assert backoff_delay_s(0, rand=lambda: 0.1, retry_after_s=5, cap_s=8) == 5
    assert backoff_delay_s(4, rand=lambda: 1.0, retry_after_s=2, cap_s=8) == 8
    assert backoff_delay_s(0, rand=lambda: 0.0, retry_after_s=3600, cap_s=8) == 32


def test_token_bucket_allows_a_burst_then_paces_at_the_rate():
    b = TokenBucket(rate_per_min=60, burst=3)
    assert [b.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take(0.0) == pytest.approx(1.0)  # 60/min: the next token in 1 s
    assert b.take(0.5) == pytest.approx(0.5)  # nothing taken while waiting
    assert b.take(1.0) == 0.0
    assert b.take(1.0) == pytest.approx(1.0)
    assert b.take(100.0) == 0.0  # a long idle refills to the burst, not beyond
    assert [b.take(100.0) for _ in range(3)] == [0.0, 0.0, pytest.approx(1.0)]


def test_token_bucket_caps_requests_per_minute_under_a_flood():
    now = [0.0]
    b = TokenBucket(
        rate_per_min=120, burst=10, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s)
    )
    for _ in range(250):  # a replay that wants 250 requests at once
        b.wait()
    # 10 at once, then 2 a second: 240 more take 120 s
    assert now[0] == pytest.approx(120.0, abs=0.01)
    assert b.waited_s == pytest.approx(120.0, abs=0.01)


def test_token_bucket_rejects_nonsense():
    with pytest.raises(ValueError):
        TokenBucket(rate_per_min=0)
    with pytest.raises(ValueError):
        TokenBucket(burst=0)


def test_rate_from_env():
    assert rate_from_env({}) == 120.0
    assert rate_from_env({RATE_ENV: "30"}) == 30.0
    with pytest.raises(ValueError, match=RATE_ENV):
        rate_from_env({RATE_ENV: "lots"})
    with pytest.raises(ValueError, match=RATE_ENV):
        rate_from_env({RATE_ENV: "-1"})
