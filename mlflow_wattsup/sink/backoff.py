"""How a job waits on a tracking server many jobs share: pure policy, no I/O, no clock of its own.

* :func:`backoff_delay_s` - jittered exponential back-off ("full jitter": uniform between 0 and
  ``min(cap, base * 2**attempt)``). A fixed schedule (2, 4, 8, 8 s...) brings every job that saw
  the same outage back at the same instants; full jitter spreads their retries evenly over the
  window, so a restarted server sees a trickle, not a storm, and the mean wait is half the cap.
  A server's ``Retry-After`` is a floor.
* :class:`TokenBucket` - a cap on requests per job per minute: ``rate_per_min`` tokens a minute,
  at most ``burst`` saved up. A job's steady logging (a batch every few seconds) never meets it;
  a replay after a long outage or a runaway loop is paced by it instead of hammering the server.

Both take the random source / the current time as arguments, so tests drive them exactly.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable

BASE_S = 0.5
CAP_S = 8.0  # a server restarting during a job is found again within seconds

RATE_ENV = "WATTSUP_MAX_REQUESTS_PER_MIN"
RATE_PER_MIN = 120.0
BURST = 30


def backoff_delay_s(
    attempt: int,
    rand: Callable[[], float] = random.random,
    base_s: float = BASE_S,
    cap_s: float = CAP_S,
    retry_after_s: float | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 = the first retry): uniform in
    ``[0, min(cap_s, base_s * 2**attempt)]`` drawn with ``rand()`` (in [0, 1)), and never less
    than the server's ``retry_after_s`` (itself capped at ``cap_s`` times 4, so a confused server
    cannot park a job for an hour)."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    window = min(cap_s, base_s * 2.0 ** min(attempt, 60))
    delay = rand() * window
    if retry_after_s is not None and retry_after_s > 0:
        delay = max(delay, min(retry_after_s, 4 * cap_s))
    return delay


class TokenBucket:
    """At most ``burst`` requests at once and ``rate_per_min`` a minute on average.

    :meth:`take` is pure given ``now`` (seconds, any monotonic origin): it takes a token and
    returns 0.0, or takes nothing and returns how many seconds until one is there.
    :meth:`wait` blocks until a token is taken (``clock``/``sleep`` for tests). Not thread-safe
    by itself: its user holds the lock around the request it paces."""

    def __init__(
        self,
        rate_per_min: float = RATE_PER_MIN,
        burst: int = BURST,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        if not rate_per_min > 0:
            raise ValueError(f"rate_per_min must be > 0, got {rate_per_min}")
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        self.rate_per_s = rate_per_min / 60.0
        self.burst = float(burst)
        self.tokens = float(burst)
        self._clock, self._sleep = clock, sleep
        self._last: float | None = None
        self.waited_s = 0.0  # total time callers were held back (reported, never hidden)

    def take(self, now: float) -> float:
        if self._last is not None and now > self._last:
            self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate_per_s)
        if self._last is None or now > self._last:
            self._last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate_per_s

    def wait(self) -> float:
        """Take a token, sleeping as long as needed; returns the seconds slept."""
        slept = 0.0
        while (delay := self.take(self._clock())) > 0:
            self._sleep(delay)
            slept += delay
        self.waited_s += slept
        return slept


def rate_from_env(environ=os.environ) -> float:
    """Requests per job per minute: ``$WATTSUP_MAX_REQUESTS_PER_MIN`` or :data:`RATE_PER_MIN`;
    a value that is not a positive number is a one-line ValueError naming the variable."""
    raw = environ.get(RATE_ENV, "").strip()
    if not raw:
        return RATE_PER_MIN
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise ValueError(f"{RATE_ENV}={raw!r}: give a positive number of requests per minute")
    return value
