"""Sampling, integration and attribution of energy to a process tree, and stages.

A :class:`Tracker` reads the meters every ``interval_s`` from a background thread and at every
stage boundary, and integrates per interval between consecutive readings:

CPU
    RAPL available: machine energy = package counter delta; the run's share of the interval is
    ``tree CPU s / machine busy CPU s`` (clamped to [0, 1]). Otherwise the estimator's linear
    model: run energy = ``w_per_thread * tree CPU s``, machine = ``w_per_thread * busy CPU s``.
RAM
    RAPL dram zones: machine energy = dram delta, the run's share = ``tree RSS / memory in use``.
    Otherwise ``RAM_W_PER_GB`` times the tree's resident GB (run) or memory in use (machine).
GPU
    NVML energy counter (or integrated power) delta per device, times the share of the device
    used by the tree's processes; where NVML cannot map processes (PID namespaces) the whole
    device is attributed and ``attribution_gpu`` says ``device``.
Containers
    A container the tree starts (``docker run``...) is found by :mod:`.containers` and its cgroup
    attached to the tree: its CPU time and memory count as the tree's, its GPU processes as ours.
    What cannot be resolved is a ``container`` warning.

Totals depend only on counter and CPU-time deltas, not on how many samples arrived, so a
sampler thread starved by a busy GIL still gives exact estimator totals (and RAPL totals as
exact as the per-interval shares). A meter that fails mid-run is recorded once in
``warnings`` and measurement goes on without it (CPU falls back to the estimator, and its
source becomes ``rapl+estimate``).

Nothing here imports MLflow; results go to ``on_sample`` callbacks and :class:`Totals`.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from mlflow_wattsup.meters import nvml as nvml_meter
from mlflow_wattsup.meters.estimator import CpuPowerModel, RamPowerModel, cpu_power_model
from mlflow_wattsup.meters.proctree import MachineMeter, ProcessTreeMeter
from mlflow_wattsup.meters.rapl import RaplMeter, RaplUnavailable, open_rapl
from mlflow_wattsup.meters.units import Energy
from mlflow_wattsup.tracking.containers import ContainerUse, ContainerWatch


@dataclass(frozen=True)
class Sample:
    """Emitted about every ``interval_s``: mean attributed power since the previous sample.

    ``elapsed_s`` counts from the tracker's start and ``step`` is it rounded to whole seconds
    (strictly increasing, the MLflow step); ``timestamp_ms`` is wall-clock (epoch ms).
    ``energy`` and ``machine_energy`` are cumulative since start.
    """

    elapsed_s: float
    step: int
    timestamp_ms: int
    power_w: float
    power_cpu_w: float
    power_gpu_w: float
    power_ram_w: float
    energy: Energy
    machine_energy: Energy
    cpu_s: float


@dataclass(frozen=True)
class StageResult:
    """A named stage: ``start_s``/``end_s`` are elapsed seconds from the tracker's start.
    ``count`` > 1 when the same name ran several times (energy and duration are summed)."""

    name: str
    start_s: float
    end_s: float
    duration_s: float
    energy: Energy
    cpu_s: float
    count: int = 1


@dataclass(frozen=True)
class Sources:
    """How each component was obtained (the ``wattsup.source.*`` tags)."""

    cpu: str
    gpu: str
    ram: str
    attribution_gpu: str = "process"


@dataclass(frozen=True)
class Totals:
    duration_s: float
    energy: Energy
    machine_energy: Energy
    cpu_s: float
    sources: Sources
    samples: int
    warnings: dict[str, str] = field(default_factory=dict)
    containers: tuple[ContainerUse, ...] = ()

    @property
    def energy_kwh(self) -> float:
        return self.energy.total_kwh

    @property
    def power_mean_w(self) -> float:
        return self.energy.total_j / self.duration_s if self.duration_s > 0 else 0.0


@dataclass
class _Reading:
    t: float  # monotonic seconds
    tree_cpu_s: float
    tree_rss: int
    pids: tuple[int, ...]
    busy_s: float
    mem_used: int
    pkg_j: float | None
    dram_j: float | None
    gpu_j: list[float] | None
    gpu_share: list[float | None] | None


_STAGE_OK = re.compile(r"[^A-Za-z0-9_\-./]")


def stage_key(name: str) -> str:
    """A stage name made safe for MLflow metric keys and filters (spaces and other characters
    become ``_``)."""
    cleaned = _STAGE_OK.sub("_", name.strip()).strip("/") or "stage"
    return re.sub(r"/+", "/", cleaned)


class Tracker:
    """Measure a process tree. ``start()``, optionally ``stage()``, then ``stop()``.

    ``tree``: the :class:`ProcessTreeMeter` of what to attribute (default: this process and its
    children). ``rapl``: ``None`` to open the default powercap root, ``False`` to skip RAPL, or an
    open :class:`RaplMeter`; ``nvml``: ``None`` for pynvml, ``False`` to skip GPUs, or a module
    object with pynvml's API (tests pass a fake). ``containers``: find the containers the tree
    starts and count them (only for a :class:`ProcessTreeMeter`; see :mod:`.containers`).
    """

    def __init__(
        self,
        tree: ProcessTreeMeter | None = None,
        *,
        interval_s: float = 1.0,
        rapl: RaplMeter | None | bool = None,
        powercap_root: str | None = None,
        nvml: Any = None,
        machine: MachineMeter | None = None,
        cpu_model: CpuPowerModel | None = None,
        ram_model: RamPowerModel | None = None,
        on_sample: Callable[[Sample], None] | None = None,
        containers: bool = True,
    ):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = float(interval_s)
        self._tree_arg = tree
        self.machine = machine or MachineMeter()
        self.cpu_model = cpu_model or cpu_power_model()
        self.ram_model = ram_model or RamPowerModel()
        self._callbacks: list[Callable[[Sample], None]] = [on_sample] if on_sample else []
        self.warnings: dict[str, str] = {}
        self.notes: list[str] = []  # one-line messages for the user (e.g. how to enable RAPL)
        if self.cpu_model.note:
            self.notes.append(self.cpu_model.note)

        self.rapl: RaplMeter | None = None
        if isinstance(rapl, RaplMeter):
            self.rapl = rapl
        elif rapl is None or rapl is True:
            try:
                self.rapl = open_rapl(powercap_root)
            except RaplUnavailable as exc:
                if "permission" in str(exc):
                    self.notes.append(str(exc))
        if self.rapl is not None and self.rapl.denied_hint:
            self.notes.append(self.rapl.denied_hint)
        self.gpu: nvml_meter.NvmlMeter | None = None if nvml is False else nvml_meter.open_nvml(nvml)

        self._cpu_source = "rapl" if self.rapl else "estimate"
        self._ram_source = "rapl" if (self.rapl and self.rapl.has_dram) else "estimate"
        self._gpu_attr = "process"
        self._lock = threading.RLock()
        self._stop_evt = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._stopped: Totals | None = None
        self._sampler_cpu_s = 0.0
        self.tree: ProcessTreeMeter | None = None
        self._watch_containers = containers
        self.container_watch: ContainerWatch | None = None

    # -- properties -------------------------------------------------------------------------

    @property
    def sources(self) -> Sources:
        gpu = self.gpu.source if self.gpu else nvml_meter.SOURCE_NONE
        return Sources(self._cpu_source, gpu, self._ram_source, self._gpu_attr)

    def exclusive(self) -> threading.RLock:
        """The lock held while the meters are read: hold it to change what they would see
        (``wattsup run`` reaps children under it)."""
        return self._lock

    def add_callback(self, fn: Callable[[Sample], None]) -> None:
        self._callbacks.append(fn)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Tracker:
        if self._started:
            raise RuntimeError("tracker already started")
        self._started = True
        self.tree = self._tree_arg or ProcessTreeMeter()
        if self._watch_containers and isinstance(self.tree, ProcessTreeMeter):
            self.container_watch = ContainerWatch(self.tree)
        self._t0 = time.monotonic()
        self._wall0 = time.time()
        self._cum = Energy()
        self._mcum = Energy()
        self._series: list[tuple[float, Energy, float]] = []  # (elapsed, cumulative, cpu_s)
        self._stages: dict[str, StageResult] = {}
        self._stage_stack: list[str] = []
        self._samples = 0
        self._prev = self._read()
        self._series.append((0.0, Energy(), 0.0))
        self._last_emit = (0.0, Energy())
        self._last_step = 0
        self._thread = threading.Thread(target=self._loop, name="wattsup-sampler", daemon=True)
        self._thread.start()
        return self

    def elapsed_s(self) -> float:
        return time.monotonic() - self._t0

    @property
    def sampler_cpu_s(self) -> float:
        """CPU seconds the sampler thread itself has used (our overhead, part of an in-process
        tree's ``cpu_s``)."""
        return self._sampler_cpu_s

    def _loop(self) -> None:
        next_t = self._t0 + self.interval_s
        while not self._stop_evt.wait(max(0.0, next_t - time.monotonic())):
            self._sampler_cpu_s = time.thread_time()
            next_t += self.interval_s
            now = time.monotonic()
            if next_t < now:  # starved for more than an interval: do not try to catch up
                next_t = now + self.interval_s
            try:
                self.sample(emit=True)
            except Exception as exc:  # never let the sampler die silently
                self.warnings.setdefault("sampler", f"{type(exc).__name__}: {exc}")
            self._sampler_cpu_s = time.thread_time()

    def stop(self) -> Totals:
        """Take a final reading and return the totals (idempotent)."""
        if self._stopped is not None:
            return self._stopped
        if not self._started:
            raise RuntimeError("tracker was not started")
        self._stop_evt.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            self.sample(emit=True, final=True)
            duration = self._prev.t - self._t0
            uses: tuple[ContainerUse, ...] = ()
            if self.container_watch is not None:
                self.container_watch.close()
                uses = self.container_watch.uses
                if self.container_watch.warnings:
                    self.warnings.setdefault("container", "; ".join(self.container_watch.warnings))
            self._stopped = Totals(
                duration_s=duration,
                energy=self._cum,
                machine_energy=self._mcum,
                cpu_s=self._prev.tree_cpu_s,
                sources=self.sources,
                samples=self._samples,
                warnings=dict(self.warnings),
                containers=uses,
            )
        for meter in (self.rapl, self.gpu):
            if meter is not None:
                meter.close()
        return self._stopped

    # -- reading and integrating --------------------------------------------------------------

    def _read(self) -> _Reading:
        tree = self.tree.read()
        if self.container_watch is not None:
            try:
                self.container_watch.observe(tree.pids)
            except Exception as exc:  # looking for containers must never stop the measurement
                self._meter_failed(
                    "container", f"looking for containers failed ({type(exc).__name__}: {exc})"
                )
        mach = self.machine.read()
        pkg = dram = None
        if self.rapl is not None:
            try:
                r = self.rapl.read()
                pkg, dram = r.package_j, r.dram_j
            except (OSError, ValueError) as exc:
                self._meter_failed("cpu", f"RAPL read failed ({exc}); estimating from here on")
                self.rapl.close()
                self.rapl = None
                self._cpu_source = "rapl+estimate"
                if self._ram_source == "rapl":
                    self._ram_source = "rapl+estimate"
        gpu_j = share = None
        if self.gpu is not None:
            try:
                g = self.gpu.read(tree.pids, getattr(tree, "cgroups", ()))
                gpu_j = [x.energy_j for x in g.gpus]
                share = [x.share for x in g.gpus]
            except Exception as exc:  # NVMLError and friends
                self._meter_failed("gpu", f"NVML read failed ({exc}); GPU energy after this is not counted")
                self.gpu = None
        return _Reading(
            tree.monotonic_s,
            tree.cpu_s,
            tree.rss_bytes,
            tree.pids,
            mach.busy_cpu_s,
            mach.mem_used_bytes,
            pkg,
            dram,
            gpu_j,
            share,
        )

    def _meter_failed(self, meter: str, message: str) -> None:
        at = time.monotonic() - self._t0 if self._started else 0.0
        self.warnings.setdefault(meter, f"at {at:.0f} s: {message}")

    def _integrate(self, prev: _Reading, cur: _Reading) -> tuple[Energy, Energy]:
        dt = max(0.0, cur.t - prev.t)
        d_tree = max(0.0, cur.tree_cpu_s - prev.tree_cpu_s)
        d_busy = max(0.0, cur.busy_s - prev.busy_s)
        # CPU
        if cur.pkg_j is not None and prev.pkg_j is not None:
            m_cpu = max(0.0, cur.pkg_j - prev.pkg_j)
            share = min(1.0, d_tree / d_busy) if d_busy > 0 else (1.0 if d_tree > 0 else 0.0)
            r_cpu = m_cpu * share
        else:
            m_cpu = self.cpu_model.energy_j(max(d_busy, d_tree))
            r_cpu = self.cpu_model.energy_j(d_tree)
        # RAM
        rss = 0.5 * (cur.tree_rss + prev.tree_rss)
        used = max(rss, 0.5 * (cur.mem_used + prev.mem_used))
        if cur.dram_j is not None and prev.dram_j is not None:
            m_ram = max(0.0, cur.dram_j - prev.dram_j)
            r_ram = m_ram * (rss / used if used > 0 else 0.0)
        else:
            m_ram = self.ram_model.power_w(used) * dt
            r_ram = self.ram_model.power_w(rss) * dt
        # GPU
        m_gpu = r_gpu = 0.0
        if cur.gpu_j is not None and prev.gpu_j is not None and len(cur.gpu_j) == len(prev.gpu_j):
            for e1, e0, s in zip(cur.gpu_j, prev.gpu_j, cur.gpu_share or [], strict=False):
                d = max(0.0, e1 - e0)
                m_gpu += d
                if s is None:
                    self._gpu_attr = "device"
                    s = 1.0
                r_gpu += d * s
        return Energy(r_cpu, r_gpu, r_ram), Energy(m_cpu, m_gpu, m_ram)

    def sample(self, emit: bool = False, final: bool = False) -> float:
        """Read the meters now and integrate; returns elapsed seconds of the reading.

        With ``emit``, call the ``on_sample`` callbacks with the mean power since the last
        emitted sample (skipped if less than a second passed, unless ``final``).
        """
        with self._lock:
            cur = self._read()
            run_e, mach_e = self._integrate(self._prev, cur)
            self._prev = cur
            self._cum = self._cum + run_e
            self._mcum = self._mcum + mach_e
            elapsed = cur.t - self._t0
            self._series.append((elapsed, self._cum, cur.tree_cpu_s))
            self._samples += 1
            if not emit:
                return elapsed
            step = int(round(elapsed))
            last_t, last_e = self._last_emit
            if (step <= self._last_step and not final) or elapsed <= last_t:
                return elapsed
            step = max(step, self._last_step + 1)
            dt = elapsed - last_t
            d = self._cum - last_e
            s = Sample(
                elapsed_s=elapsed,
                step=step,
                timestamp_ms=int((self._wall0 + elapsed) * 1000),
                power_w=d.total_j / dt,
                power_cpu_w=d.cpu_j / dt,
                power_gpu_w=d.gpu_j / dt,
                power_ram_w=d.ram_j / dt,
                energy=self._cum,
                machine_energy=self._mcum,
                cpu_s=cur.tree_cpu_s,
            )
            self._last_emit = (elapsed, self._cum)
            self._last_step = step
        for cb in self._callbacks:
            try:
                cb(s)
            except Exception as exc:
                self.warnings.setdefault("callback", f"{type(exc).__name__}: {exc}")
        return elapsed

    # -- stages -----------------------------------------------------------------------------

    def energy_at(self, elapsed_s: float) -> tuple[Energy, float]:
        """Cumulative (energy, CPU s) at ``elapsed_s``, linearly interpolated between readings."""
        with self._lock:
            series = self._series
            times = [p[0] for p in series]
            i = bisect.bisect_left(times, elapsed_s)
            if i <= 0:
                return series[0][1], series[0][2]
            if i >= len(series):
                return series[-1][1], series[-1][2]
            (t0, e0, c0), (t1, e1, c1) = series[i - 1], series[i]
            f = (elapsed_s - t0) / (t1 - t0) if t1 > t0 else 1.0
            lerp = lambda a, b: a + f * (b - a)  # noqa: E731
            return (
                Energy(lerp(e0.cpu_j, e1.cpu_j), lerp(e0.gpu_j, e1.gpu_j), lerp(e0.ram_j, e1.ram_j)),
                lerp(c0, c1),
            )

    def add_stage(self, name: str, start_s: float, end_s: float) -> StageResult:
        """Record a stage from elapsed times (e.g. parsed from a pipeline's log), interpolating
        the cumulative energy between readings. Repeated names are summed."""
        if end_s < start_s:
            raise ValueError(f"stage {name!r} ends ({end_s}) before it starts ({start_s})")
        if self._stopped is None and end_s > self._series[-1][0]:
            self.sample()  # the stage ends after the last reading: read now, do not extrapolate
        (e0, c0), (e1, c1) = self.energy_at(start_s), self.energy_at(end_s)
        res = StageResult(stage_key(name), start_s, end_s, end_s - start_s, e1 - e0, c1 - c0)
        with self._lock:
            old = self._stages.get(res.name)
            if old is not None:
                res = StageResult(
                    res.name,
                    old.start_s,
                    end_s,
                    old.duration_s + res.duration_s,
                    old.energy + res.energy,
                    old.cpu_s + res.cpu_s,
                    old.count + 1,
                )
            self._stages[res.name] = res
        return res

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Measure a block as a stage; nested stages are named ``outer.inner``."""
        full = ".".join(self._stage_stack + [stage_key(name).replace("/", "_")])
        self._stage_stack.append(stage_key(name).replace("/", "_"))
        start = self.sample()
        try:
            yield
        finally:
            end = self.sample()
            self._stage_stack.pop()
            self.add_stage(full, start, end)

    @property
    def stages(self) -> list[StageResult]:
        with self._lock:
            return list(self._stages.values())


class SampleBuffer:
    """A tracker callback that keeps samples until a sink is ready, then forwards them (the
    command starts before the run exists; its first samples are not lost)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._held: list[Sample] = []
        self._target = None

    def __call__(self, s: Sample) -> None:
        with self._lock:
            if self._target is None:
                self._held.append(s)
                return
        self._target(s)

    def forward_to(self, target) -> None:
        with self._lock:
            held, self._held = self._held, []
            self._target = target
        for s in held:
            target(s)


def make_tracker(
    *,
    tree=None,
    interval_s: float = 1.0,
    cpu_tdp_w: float | None = None,
    cpu_w_per_thread: float | None = None,
    powercap_root: str | None = None,
    nvml: Any = None,
) -> Tracker:
    return Tracker(
        tree,
        interval_s=interval_s,
        powercap_root=powercap_root,
        nvml=nvml,
        cpu_model=cpu_power_model(cpu_w_per_thread=cpu_w_per_thread, cpu_tdp_w=cpu_tdp_w),
    )
