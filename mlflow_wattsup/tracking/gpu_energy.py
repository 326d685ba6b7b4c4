"""GPU energy per interval, from each GPU's best source that is still telling the truth.

A GPU meter (:mod:`mlflow_wattsup.meters.nvml`, :mod:`mlflow_wattsup.meters.amdsmi`) reports per
GPU, cumulative since it opened: ``counter_j`` (the energy counter, None without one) and
``power_energy_j`` (integrated power readings, None when the GPU reports no power), with this
reading's ``power_w``, the processes' ``share`` and the board's ``max_power_w``.

Per GPU, :class:`GpuEnergy` takes each interval's energy from, in order:

1. the energy counter, while :class:`~mlflow_wattsup.meters.sanity.CounterCheck` trusts it (it
   does not run backwards, jump beyond the power cap, or stand still while the GPU draws power or
   runs our processes);
2. integrated power, from the moment the counter stopped being trusted (a stall is re-measured
   from its start: the power integral since the counter last moved replaces the counter's 0), as
   long as power itself is not a silent zero (0 W while our processes use the GPU);
3. nothing: the GPU is *unmeasured* from then on, and said so.

Each switch is said once (``warnings``) and shows in :attr:`GpuEnergy.source`:
``<vendor>-energy`` (counters throughout), ``<vendor>-power`` (integrated power for some or all
of it), ``+unmeasured`` appended when a GPU could not be measured for part of the run, or
``unmeasured`` when no GPU could be measured at all. Units: joules, seconds, watts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mlflow_wattsup.meters.sanity import STALL_S, CounterCheck

COUNTER, POWER, NONE = "counter", "power", "none"
UNMEASURED = "unmeasured"


@dataclass
class _State:
    name: str
    mode: str | None = None  # decided at the first interval
    counter: CounterCheck | None = None
    power: CounterCheck | None = None
    power_j_at_move: float | None = None  # power integral when the counter last moved
    used: set[str] = field(default_factory=set)


class GpuEnergy:
    """Energy of the visible GPUs interval by interval. ``vendor``: the meter's source prefix
    (``nvml``, ``amdsmi``); ``names``: the GPUs' names, in the meter's order."""

    def __init__(self, vendor: str, names: Sequence[str], stall_s: float = STALL_S):
        self.vendor = vendor
        self.stall_s = stall_s
        self._gpus = [_State(f"GPU {i} ({n})") for i, n in enumerate(names)]
        self.warnings: list[str] = []

    @property
    def source(self) -> str:
        used = set().union(*(g.used for g in self._gpus)) if self._gpus else set()
        if not used or used == {NONE}:
            return UNMEASURED
        base = f"{self.vendor}-power" if POWER in used else f"{self.vendor}-energy"
        return base + ("+" + UNMEASURED if NONE in used else "")

    def interval(
        self, prev: Sequence[Any], cur: Sequence[Any], t_prev_s: float, t_s: float, final: bool = False
    ) -> list[float]:
        """Energy (J) of each GPU between readings ``prev`` and ``cur`` (a meter's per-GPU
        readings) taken at elapsed ``t_prev_s`` and ``t_s`` seconds; ``final``: the run's last
        reading."""
        out = []
        for g, p, c in zip(self._gpus, prev, cur, strict=False):
            if g.mode is None:
                self._start(g, p, t_prev_s)
            out.append(self._one(g, p, c, t_s, final))
        return out

    def _start(self, g: _State, first: Any, t_s: float) -> None:
        if first.counter_j is not None:
            g.mode = COUNTER
            g.counter = CounterCheck(
                f"{g.name} energy counter", max_power_w=first.max_power_w, stall_s=self.stall_s
            )
            g.counter.check(t_s, first.counter_j, active=False)
            g.power_j_at_move = first.power_energy_j
        elif first.power_energy_j is not None:
            self._to_power(g, first, t_s)
        else:
            g.mode = NONE
            self._say(
                f"{g.name} reports neither an energy counter nor power (a vGPU or MIG slice?): its energy is not measured"
            )

    def _to_power(self, g: _State, reading: Any, t_s: float) -> None:
        g.mode = POWER
        g.power = CounterCheck(f"{g.name} power", stall_s=self.stall_s)
        g.power.check(t_s, reading.power_energy_j, active=False)

    def _one(self, g: _State, p: Any, c: Any, t_s: float, final: bool) -> float:
        if g.mode == COUNTER:
            active = (c.power_w or 0) > 0 or (c.share or 0) > 0
            problem = g.counter.check(t_s, c.counter_j, active, final)
            if problem is None:
                g.used.add(COUNTER)
                d = max(0.0, c.counter_j - p.counter_j)
                if d > 0:
                    g.power_j_at_move = c.power_energy_j
                return d
            if not g.counter.ever_moved:
                g.used.discard(COUNTER)  # it never measured anything
            # the counter's figure is wrong from problem.since_s: re-measure that span with power
            start_j = g.power_j_at_move if problem.kind == "stalled" else p.power_energy_j
            if c.power_energy_j is None or start_j is None:
                g.mode = NONE
                g.used.add(NONE)
                self._say(
                    f"{problem.message}; it reports no power either: its energy is not measured from {problem.since_s:.0f} s"
                )
                return 0.0
            self._say(f"{problem.message}; its energy is integrated power from {problem.since_s:.0f} s")
            self._to_power(g, c, t_s)
            g.used.add(POWER)
            return max(0.0, c.power_energy_j - start_j)
        if g.mode == POWER:
            if c.power_energy_j is None or p.power_energy_j is None:
                g.used.add(POWER)
                return 0.0
            # power that stays at 0 W while our processes use the GPU is a silent zero
            problem = g.power.check(t_s, c.power_energy_j, active=(c.share or 0) > 0, final=final)
            if problem is None:
                g.used.add(POWER)
                return max(0.0, c.power_energy_j - p.power_energy_j)
            g.mode = NONE
            g.used.add(NONE)
            if not g.power.ever_moved:
                g.used.discard(POWER)  # it never measured anything
            self._say(
                f"{problem.message} (reads 0 W): its energy is not measured from {problem.since_s:.0f} s"
            )
            return 0.0
        g.used.add(NONE)
        return 0.0

    def _say(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
