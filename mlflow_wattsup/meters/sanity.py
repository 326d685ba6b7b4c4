"""Is a cumulative energy counter telling the truth? Checks for silent zeros and impossible values.

Energy counters fail quietly: a RAPL file that stays readable but stops moving (some VMs and
firmware), an NVML counter that reads 0 on a vGPU, an AMD counter that runs backwards or jumps by
more than the board could draw (ROCm/amdsmi#38). Summed as they are, each gives a confident wrong
figure, most often 0 J. :class:`CounterCheck` watches one counter between consecutive readings and
says, once, why it stopped trusting it; the tracker then takes the figure from the next source
(estimate for RAPL, integrated power for a GPU) and tags it so.

Verdicts (see :meth:`CounterCheck.check`):

``backwards``
    the counter decreased (driver reload, a wrap we cannot undo);
``jump``
    it rose faster than ``max_power_w`` allows over the interval, with ``UPDATE_SLACK_S`` of slack
    for counters that update in steps (``JUMP_MARGIN`` x the board's power cap);
``stalled``
    it has not moved for ``stall_s`` seconds although the device was active in that time (busy
    CPUs, a GPU drawing power or running our processes), or it never moved over a whole run of at
    least ``MIN_RUN_S`` (powered hardware always draws something).

Every unit is in the names: joules, seconds, watts. Pure logic, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

#: seconds without movement, while the device was active, after which a counter is stalled
STALL_S = 5.0
#: a counter that never moved over a whole run this long (or longer) is stalled, active or not
MIN_RUN_S = 2.0
#: a counter may rise this much faster than the power cap over an interval (boost, cap changes)
JUMP_MARGIN = 1.5
#: extra seconds of energy a stepwise counter may deliver at once (NVML updates every ~0.1-1 s)
UPDATE_SLACK_S = 1.0

BACKWARDS = "backwards"
JUMP = "jump"
STALLED = "stalled"


@dataclass(frozen=True)
class Problem:
    """Why a counter is no longer trusted: ``kind`` (``backwards``, ``jump``, ``stalled``), the
    elapsed seconds ``since_s`` from which its figure is wrong (the start of a stall, else the
    start of the interval), and a one-line ``message`` for the user."""

    kind: str
    since_s: float
    message: str


class CounterCheck:
    """Checks one cumulative counter (joules) reading by reading.

    ``name`` names it in messages (``RAPL package``, ``GPU 0 (NVIDIA H100) energy counter``);
    ``max_power_w``: the most the device can draw (its power cap), or None to skip the jump check;
    ``stall_s``: seconds without movement while active that make it stalled.
    """

    def __init__(self, name: str, *, max_power_w: float | None = None, stall_s: float = STALL_S):
        if not stall_s > 0:
            raise ValueError(f"stall_s must be > 0, got {stall_s}")
        self.name = name
        self.max_power_w = max_power_w if max_power_w and max_power_w > 0 else None
        self.stall_s = float(stall_s)
        self._last_j: float | None = None
        self._last_s: float | None = None
        self._still_since_s: float | None = None  # elapsed s of the last movement (or the start)
        self._active_while_still = False
        self._ever_moved = False
        self._start_s: float | None = None
        self.problem: Problem | None = None

    @property
    def trusted(self) -> bool:
        return self.problem is None

    @property
    def ever_moved(self) -> bool:
        return self._ever_moved

    @property
    def still_since_s(self) -> float | None:
        """Elapsed seconds of the counter's last movement (the start if it never moved)."""
        return self._still_since_s

    def check(self, t_s: float, value_j: float, active: bool, final: bool = False) -> Problem | None:
        """Feed the counter's value ``value_j`` read at elapsed ``t_s``; ``active``: the device did
        something since the previous reading. ``final``: the run's last reading. Returns the
        problem the first time one is found (then the counter stays untrusted), else None."""
        if self.problem is not None:
            return None
        if self._last_j is None:
            self._last_j, self._last_s, self._still_since_s, self._start_s = value_j, t_s, t_s, t_s
            return None
        delta_j = value_j - self._last_j
        dt_s = max(0.0, t_s - self._last_s)
        prev_s = self._last_s
        self._last_j, self._last_s = value_j, t_s
        if delta_j < 0:
            return self._fail(
                BACKWARDS,
                prev_s,
                f"{self.name} went backwards by {-delta_j:.4g} J at {t_s:.0f} s (driver reload or "
                "a faulty counter)",
            )
        if self.max_power_w is not None:
            allowed_j = self.max_power_w * JUMP_MARGIN * (dt_s + UPDATE_SLACK_S)
            if delta_j > allowed_j:
                return self._fail(
                    JUMP,
                    prev_s,
                    f"{self.name} rose {delta_j:.4g} J in {dt_s:.3g} s at {t_s:.0f} s, more than its "
                    f"{self.max_power_w:.4g} W power cap allows ({allowed_j:.4g} J)",
                )
        if delta_j > 0:
            self._ever_moved = True
            self._still_since_s = t_s
            self._active_while_still = False
            return None
        self._active_while_still = self._active_while_still or active
        still_s = t_s - self._still_since_s
        if still_s >= self.stall_s and self._active_while_still:
            return self._fail(
                STALLED,
                self._still_since_s,
                f"{self.name} did not move for {still_s:.3g} s while the device was busy",
            )
        if final and not self._ever_moved and t_s - self._start_s >= MIN_RUN_S:
            return self._fail(
                STALLED,
                self._start_s,
                f"{self.name} never moved in {t_s - self._start_s:.3g} s (readable but frozen, or "
                "not implemented on this device)",
            )
        return None

    def _fail(self, kind: str, since_s: float, message: str) -> Problem:
        self.problem = Problem(kind, since_s, message)
        return self.problem


def plausible_power_w(power_w: float | None, max_power_w: float | None) -> float | None:
    """``power_w`` when it can be true, else None: negative, not a number, or above
    ``JUMP_MARGIN`` x 2 x the power cap is an impossible reading (a sentinel such as 0xFFFF W)."""
    if power_w is None or power_w != power_w or power_w < 0:
        return None
    if max_power_w and power_w > max_power_w * JUMP_MARGIN * 2:
        return None
    return power_w
