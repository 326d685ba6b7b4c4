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
    NVML (NVIDIA) or amdsmi (AMD) energy counter (or integrated power) delta per device, times
    the share of the device used by the tree's processes; where the driver cannot map processes
    (PID namespaces) the whole device is attributed and ``attribution_gpu`` says ``device``.
Containers
    A container the tree starts (``docker run``...) is found by :mod:`.containers` and its cgroup
    attached to the tree: its CPU time and memory count as the tree's, its GPU processes as ours.
    What cannot be resolved is a ``container`` warning.

Totals depend only on counter and CPU-time deltas, not on how many samples arrived, so a
sampler thread starved by a busy GIL still gives exact estimator totals (and RAPL totals as
exact as the per-interval shares). A meter that fails mid-run is recorded once in
``warnings`` and measurement goes on without it (CPU falls back to the estimator, and its
source becomes ``rapl+estimate``).

Silent zeros and impossible values (:mod:`mlflow_wattsup.meters.sanity`): a RAPL counter that stays
readable but does not move while the CPUs are busy (or never moves over the run) is dropped and
the CPU (or DRAM) figure is estimated from the last time it moved, with source ``estimate`` (it
never moved) or ``rapl+estimate``; a GPU counter that stalls, runs backwards or jumps beyond the
board's power cap falls back to integrated power, and a GPU that reports neither is
``unmeasured`` (:mod:`.gpu_energy`). Each is said once in ``warnings``, never a confident 0.

SLURM (inside a job step, :mod:`mlflow_wattsup.meters.slurm`): the step's own
``ConsumedEnergyRaw`` is read at the start (in the background) and at the end, and their
difference is :attr:`Totals.slurm`, beside our figures and never mixed into them: it is the node's
energy, the job's only for an exclusive allocation (``Totals.slurm.allocation`` says which), and
"not collected" where SLURM reports 0 or nothing.

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

from mlflow_wattsup.meters import amdsmi as amdsmi_meter
from mlflow_wattsup.meters import nvml as nvml_meter
from mlflow_wattsup.meters import slurm as slurm_meter
from mlflow_wattsup.meters.estimator import CpuPowerModel, RamPowerModel, cpu_power_model
from mlflow_wattsup.meters.proctree import MachineMeter, ProcessTreeMeter
from mlflow_wattsup.meters.rapl import RaplMeter, RaplUnavailable, open_rapl
from mlflow_wattsup.meters.sanity import STALL_S, STALLED, CounterCheck, Problem
from mlflow_wattsup.meters.units import Energy
from mlflow_wattsup.tracking.containers import ContainerUse, ContainerWatch
from mlflow_wattsup.tracking.gpu_energy import GpuEnergy


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
    #: SLURM's own accounting of the job step over the run (None outside a SLURM job)
    slurm: slurm_meter.SlurmEnergy | None = None
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
    gpus: list[Any] | None  # the GPU meter's per-GPU readings


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
    open :class:`RaplMeter`; ``nvml``: ``None`` for pynvml, ``False`` to skip NVIDIA GPUs, or a
    module object with pynvml's API (tests pass a fake); ``amdsmi``: the same for AMD GPUs (read
    only where no NVIDIA GPU is). ``stall_s``: seconds a counter may stand still while its device
    is busy before it is no longer trusted (:mod:`mlflow_wattsup.meters.sanity`). ``slurm``:
    ``None`` for the SLURM job step we run in (if any), ``False`` to skip, or a
    :class:`~mlflow_wattsup.meters.slurm.SlurmAccounting`. ``containers``: find the
    containers the tree starts and count them (only for a :class:`ProcessTreeMeter`; see
    :mod:`.containers`).
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
        amdsmi: Any = None,
        stall_s: float = STALL_S,
        slurm: Any = None,
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
        self.gpu: Any = None if nvml is False else nvml_meter.open_nvml(nvml)
        if self.gpu is None and amdsmi is not False:
            try:
                self.gpu = amdsmi_meter.open_amdsmi(amdsmi)
            except amdsmi_meter.AmdsmiUnavailable as exc:  # an AMD GPU we cannot read: say why
                self.notes.append(str(exc))
            self.notes.extend(getattr(self.gpu, "notes", []))
        self._gpu_energy = (
            GpuEnergy(self.gpu.source.split("-")[0], self.gpu.names, stall_s) if self.gpu else None
        )
        self.slurm: slurm_meter.SlurmAccounting | None = (
            None if slurm is False else slurm if slurm is not None else slurm_meter.open_slurm()
        )
        self._slurm_start: tuple[slurm_meter.StepReading, slurm_meter.Allocation] | None = None
        self._slurm_thread: threading.Thread | None = None
        self._pkg_check = CounterCheck("RAPL package counters", stall_s=stall_s)
        self._dram_check = CounterCheck("RAPL DRAM counters", stall_s=stall_s)
        self._dram_trusted = True

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
        if self._gpu_energy is None:
            gpu = nvml_meter.SOURCE_NONE
        elif self._started and self._samples:
            gpu = self._gpu_energy.source  # as measured, fallbacks included
        else:
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
        self._pkg_moved = self._dram_moved = self._prev  # the readings where RAPL last moved
        if self._prev.pkg_j is not None:
            self._pkg_check.check(0.0, self._prev.pkg_j, active=False)
        if self._prev.dram_j is not None:
            self._dram_check.check(0.0, self._prev.dram_j, active=False)
        self._series.append((0.0, Energy(), 0.0))
        self._last_emit = (0.0, Energy())
        self._last_step = 0
        self._thread = threading.Thread(target=self._loop, name="wattsup-sampler", daemon=True)
        self._thread.start()
        if self.slurm is not None:  # sstat and scontrol take a moment: not on the start-up path
            self._slurm_thread = threading.Thread(target=self._slurm_begin, name="wattsup-slurm", daemon=True)
            self._slurm_thread.start()
        return self

    def _slurm_begin(self) -> None:
        try:
            self._slurm_start = (self.slurm.read(), self.slurm.allocation())
        except Exception as exc:  # never let SLURM's accounting break the run
            self.warnings.setdefault("slurm", f"{type(exc).__name__}: {exc}")

    def _slurm_end(self) -> slurm_meter.SlurmEnergy | None:
        if self.slurm is None:
            return None
        if self._slurm_thread is not None:
            self._slurm_thread.join(timeout=60)
        try:
            end = self.slurm.read()
        except Exception as exc:
            end = slurm_meter.StepReading(self.slurm.step, None, "none", f"{type(exc).__name__}: {exc}")
        if self._slurm_start is None:
            start = slurm_meter.StepReading(self.slurm.step, None, "none", "not read at the start")
            allocation = slurm_meter.Allocation("unknown")
        else:
            start, allocation = self._slurm_start
        return slurm_meter.run_energy(start, end, allocation)

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
        slurm = self._slurm_end()  # subprocesses: not under the lock
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
                slurm=slurm,
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
        gpus = None
        if self.gpu is not None:
            try:
                gpus = list(self.gpu.read(tree.pids, getattr(tree, "cgroups", ())).gpus)
            except Exception as exc:  # NVMLError, AmdSmiException and friends
                vendor = "NVML" if self.gpu.source.startswith("nvml") else "amdsmi"
                self._meter_failed(
                    "gpu", f"{vendor} read failed ({exc}); GPU energy after this is not counted"
                )
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
            gpus,
        )

    def _meter_failed(self, meter: str, message: str) -> None:
        at = time.monotonic() - self._t0 if self._started else 0.0
        self.warnings.setdefault(meter, f"at {at:.0f} s: {message}")

    def _cpu_estimate(self, a: _Reading, b: _Reading) -> tuple[float, float]:
        """(run, machine) CPU joules of the estimator between readings ``a`` and ``b``."""
        d_tree = max(0.0, b.tree_cpu_s - a.tree_cpu_s)
        d_busy = max(0.0, b.busy_s - a.busy_s)
        return self.cpu_model.energy_j(d_tree), self.cpu_model.energy_j(max(d_busy, d_tree))

    def _ram_estimate(self, a: _Reading, b: _Reading) -> tuple[float, float]:
        """(run, machine) RAM joules of the estimator between readings ``a`` and ``b``."""
        dt = max(0.0, b.t - a.t)
        rss = 0.5 * (b.tree_rss + a.tree_rss)
        used = max(rss, 0.5 * (b.mem_used + a.mem_used))
        return self.ram_model.power_w(rss) * dt, self.ram_model.power_w(used) * dt

    def _rapl_untrusted(self, part: str, check: CounterCheck, problem: Problem) -> None:
        """Stop using a RAPL counter that stalled or lied; its part is estimated from then on."""
        source = "rapl+estimate" if check.ever_moved else "estimate"
        what = "CPU" if part == "cpu" else "RAM"
        self._warn(part, f"{problem.message}; {what} energy is estimated from {problem.since_s:.0f} s")
        if part == "cpu":
            self._cpu_source = source
            if self.rapl is not None:
                self.rapl.close()
                self.rapl = None
            if self._ram_source == "rapl":  # DRAM zones close with the packages
                self._ram_source = "rapl+estimate"
        else:
            self._ram_source = source
            self._dram_trusted = False

    def _integrate(self, prev: _Reading, cur: _Reading, final: bool = False) -> tuple[Energy, Energy]:
        d_tree = max(0.0, cur.tree_cpu_s - prev.tree_cpu_s)
        d_busy = max(0.0, cur.busy_s - prev.busy_s)
        t_s = cur.t - self._t0
        # CPU
        if cur.pkg_j is not None and prev.pkg_j is not None:
            problem = self._pkg_check.check(t_s, cur.pkg_j, d_busy > 0, final)
            if problem is None:
                if cur.pkg_j > prev.pkg_j:
                    self._pkg_moved = cur
                m_cpu = max(0.0, cur.pkg_j - prev.pkg_j)
                share = min(1.0, d_tree / d_busy) if d_busy > 0 else (1.0 if d_tree > 0 else 0.0)
                r_cpu = m_cpu * share
            else:  # re-estimate from where the counter's figure went wrong
                self._rapl_untrusted("cpu", self._pkg_check, problem)
                r_cpu, m_cpu = self._cpu_estimate(self._pkg_moved if problem.kind == STALLED else prev, cur)
        else:
            r_cpu, m_cpu = self._cpu_estimate(prev, cur)
        # RAM
        if self._dram_trusted and cur.dram_j is not None and prev.dram_j is not None:
            problem = self._dram_check.check(t_s, cur.dram_j, d_busy > 0, final)
            if problem is None:
                if cur.dram_j > prev.dram_j:
                    self._dram_moved = cur
                rss = 0.5 * (cur.tree_rss + prev.tree_rss)
                used = max(rss, 0.5 * (cur.mem_used + prev.mem_used))
                m_ram = max(0.0, cur.dram_j - prev.dram_j)
                r_ram = m_ram * (rss / used if used > 0 else 0.0)
            else:
                self._rapl_untrusted("ram", self._dram_check, problem)
                r_ram, m_ram = self._ram_estimate(self._dram_moved if problem.kind == STALLED else prev, cur)
        else:
            r_ram, m_ram = self._ram_estimate(prev, cur)
        # GPU
        m_gpu = r_gpu = 0.0
        if cur.gpus is not None and prev.gpus is not None and len(cur.gpus) == len(prev.gpus):
            ledger = self._gpu_energy
            deltas = ledger.interval(prev.gpus, cur.gpus, prev.t - self._t0, t_s, final)
            for message in ledger.warnings:
                self._warn("gpu", message)
            for d, g in zip(deltas, cur.gpus, strict=False):
                m_gpu += d
                s = g.share
                if s is None:
                    self._gpu_attr = "device"
                    s = 1.0
                r_gpu += d * s
        return Energy(r_cpu, r_gpu, r_ram), Energy(m_cpu, m_gpu, m_ram)

    def _warn(self, key: str, message: str) -> None:
        """Say ``message`` once under ``warnings[key]`` (several messages are joined by ``; ``)."""
        old = self.warnings.get(key)
        if old is None:
            self.warnings[key] = message
        elif message not in old:
            self.warnings[key] = f"{old}; {message}"

    def sample(self, emit: bool = False, final: bool = False) -> float:
        """Read the meters now and integrate; returns elapsed seconds of the reading.

        With ``emit``, call the ``on_sample`` callbacks with the mean power since the last
        emitted sample (skipped if less than a second passed, unless ``final``).
        """
        with self._lock:
            cur = self._read()
            run_e, mach_e = self._integrate(self._prev, cur, final)
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
    amdsmi: Any = None,
) -> Tracker:
    return Tracker(
        tree,
        interval_s=interval_s,
        powercap_root=powercap_root,
        nvml=nvml,
        amdsmi=amdsmi,
        cpu_model=cpu_power_model(cpu_w_per_thread=cpu_w_per_thread, cpu_tdp_w=cpu_tdp_w),
    )
