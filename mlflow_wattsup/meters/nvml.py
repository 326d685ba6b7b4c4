"""NVIDIA GPU energy through NVML (the ``pynvml`` module of the ``nvidia-ml-py`` package).

Per visible GPU, energy comes from ``nvmlDeviceGetTotalEnergyConsumption`` (millijoules since
driver load, Volta and newer) when the device supports it, else from integrating
``nvmlDeviceGetPowerUsage`` (milliwatts, itself a short moving average) over the sample times.
The counter is preferred: sampled power can miss most of a bursty load. Power is read and
integrated for every GPU all the same (``GpuReading.power_energy_j``), so that when a counter turns
out to be stalled or impossible (:mod:`.sanity`, checked by the tracker) the figure can fall back
to power for that GPU; ``max_power_w`` (the enforced power limit, W) bounds what a counter may
plausibly add per second.

Which GPUs are visible follows ``CUDA_VISIBLE_DEVICES`` (indices or ``GPU-``/``MIG-`` UUID
prefixes; an empty value or an invalid entry ends the list, as CUDA does). Integer indices are
NVML (PCI bus) indices; they equal CUDA's only with ``CUDA_DEVICE_ORDER=PCI_BUS_ID``.

No driver, no library, or no device is not an error: :func:`open_nvml` returns ``None``.

Containers: NVML lists the host PIDs of the processes on a GPU. A container started by the run
(Docker: its processes are the daemon's children, not ours) is matched by cgroup: a listed
process whose ``/proc/PID/cgroup`` is the container's cgroup (or below it) is the run's.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mlflow_wattsup.meters.cgroup import RunProcesses
from mlflow_wattsup.meters.sanity import plausible_power_w

SOURCE_ENERGY = "nvml-energy"
SOURCE_POWER = "nvml-power"
SOURCE_NONE = "none"


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one instant. ``energy_j`` is cumulative since the meter opened (J): the energy
    counter where the GPU has one, else integrated power.

    ``share`` is the fraction of the device's activity since the previous reading that belongs to
    the tracked processes (``None`` when NVML could not say, see :meth:`NvmlMeter.read`).
    ``counter_j``: the energy counter since the meter opened (J), None without one;
    ``power_energy_j``: the trapezoidal integral of the plausible power readings since the meter
    opened (J), None when NVML never reported power; ``power_w``: this reading's power (W);
    ``max_power_w``: the GPU's enforced power limit (W), None when NVML does not say.
    """

    index: int
    energy_j: float
    power_w: float | None
    share: float | None
    counter_j: float | None = None
    power_energy_j: float | None = None
    max_power_w: float | None = None


@dataclass(frozen=True)
class NvmlReading:
    monotonic_s: float
    gpus: list[GpuReading] = field(default_factory=list)

    @property
    def energy_j(self) -> float:
        return sum(g.energy_j for g in self.gpus)


@dataclass
class _Gpu:
    index: int
    handle: Any
    name: str
    uuid: str
    has_counter: bool
    start_mj: int = 0
    energy_j: float = 0.0  # integrated power (J), kept for every GPU
    max_power_w: float | None = None
    power_seen: bool = False
    last_power_w: float | None = None
    last_s: float | None = None
    last_util_ts_us: int = 0


def visible_indices(count: int, uuids: list[str], env: str | None) -> list[int]:
    """NVML indices that ``CUDA_VISIBLE_DEVICES=env`` exposes, in CUDA's order."""
    if env is None:
        return list(range(count))
    out: list[int] = []
    for token in (t.strip() for t in env.split(",")):
        if not token:
            break
        if token.lstrip("-").isdigit():
            i = int(token)
            if i < 0 or i >= count:
                break  # CUDA ignores this entry and every one after it
            out.append(i)
            continue
        matches = [i for i, u in enumerate(uuids) if u.startswith(token) or u == f"GPU-{token}"]
        if len(matches) != 1:
            break
        out.append(matches[0])
    return list(dict.fromkeys(out))


class NvmlMeter:
    """Energy of the visible GPUs. Create with :func:`open_nvml`."""

    def __init__(self, nvml: Any, gpus: list[_Gpu], driver: str, proc_root: str = "/proc"):
        self._nvml = nvml
        self._gpus = gpus
        self.driver_version = driver
        self.proc_root = proc_root  # where /proc/PID/cgroup is read (tests point it at a fake)

    @property
    def names(self) -> list[str]:
        return [g.name for g in self._gpus]

    @property
    def source(self) -> str:
        """``nvml-energy`` if every GPU has an energy counter, else ``nvml-power``."""
        return SOURCE_ENERGY if all(g.has_counter for g in self._gpus) else SOURCE_POWER

    def read(self, pids: Iterable[int] | None = None, cgroups: Iterable[str] = ()) -> NvmlReading:
        """Read every GPU; with ``pids``, also the share of each GPU used by those processes and
        by the processes in ``cgroups`` (cgroup paths as ``/proc/PID/cgroup`` writes them: the
        run's containers).

        Share, per GPU, from the first of these that NVML answers:
        1. per-process SM utilisation samples since the last read: ours / all;
        2. the running compute processes: 1 if all are ours, by GPU memory if mixed, 0 if none;
        3. else ``None`` (e.g. containers whose PID namespace hides the host PIDs).
        """
        now = time.monotonic()
        wanted = RunProcesses(set(pids), tuple(cgroups), self.proc_root) if pids is not None else None
        out = []
        for g in self._gpus:
            power_w = self._power_w(g)
            counter_j = None
            if g.has_counter:
                counter_j = (self._nvml.nvmlDeviceGetTotalEnergyConsumption(g.handle) - g.start_mj) / 1e3
            if power_w is not None:
                g.power_seen = True
                if g.last_power_w is not None and g.last_s is not None:
                    g.energy_j += 0.5 * (power_w + g.last_power_w) * (now - g.last_s)
            g.last_power_w, g.last_s = power_w, now
            share = self._share(g, wanted) if wanted is not None else None
            power_j = g.energy_j if g.power_seen else None
            energy_j = counter_j if counter_j is not None else g.energy_j
            out.append(GpuReading(g.index, energy_j, power_w, share, counter_j, power_j, g.max_power_w))
        return NvmlReading(now, out)

    def _power_w(self, g: _Gpu) -> float | None:
        """This instant's power (W), None when NVML does not report it or reports the impossible."""
        try:
            raw_w = self._nvml.nvmlDeviceGetPowerUsage(g.handle) / 1e3
        except self._nvml.NVMLError:
            return None
        return plausible_power_w(raw_w, g.max_power_w)

    def _share(self, g: _Gpu, ours: RunProcesses) -> float | None:
        nv = self._nvml
        try:
            samples = nv.nvmlDeviceGetProcessUtilization(g.handle, g.last_util_ts_us)
        except nv.NVMLError:
            samples = []
        if samples:
            g.last_util_ts_us = max(s.timeStamp for s in samples)
            total = sum(s.smUtil for s in samples)
            if total > 0 and _mappable(s.pid for s in samples):
                return sum(s.smUtil for s in samples if s.pid in ours) / total
        try:
            procs = nv.nvmlDeviceGetComputeRunningProcesses(g.handle)
        except nv.NVMLError:
            return None
        if not procs:
            return 0.0
        if not _mappable(p.pid for p in procs):
            return None
        mine = [p for p in procs if p.pid in ours]
        if not mine:
            return 0.0
        if len(mine) == len(procs):
            return 1.0
        mem = [p.usedGpuMemory or 0 for p in procs]
        if sum(mem) <= 0:
            return len(mine) / len(procs)
        return sum(p.usedGpuMemory or 0 for p in mine) / sum(mem)

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:
            pass


def _mappable(pids: Iterable[int]) -> bool:
    """True if NVML's PIDs live in our PID namespace (at least one exists here)."""
    return any(_pid_exists(p) for p in pids)


def _pid_exists(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _power_limit_w(nvml: Any, handle: Any) -> float | None:
    """The GPU's enforced power limit (W), None when NVML does not say."""
    try:
        limit_w = nvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1e3
    except Exception:  # NVMLError, or an old binding without the call
        return None
    return limit_w if limit_w > 0 else None


def _decode(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


#: the NVIDIA driver's control device: NVML needs it (containers with GPUs have it mounted)
NVIDIA_CONTROL_DEVICE = "/dev/nvidiactl"


def open_nvml(nvml: Any = None) -> NvmlMeter | None:
    """Initialise NVML and open the visible GPUs; ``None`` when there is no usable GPU.

    ``nvml`` is the module to use (tests pass a fake); by default ``pynvml`` from nvidia-ml-py.
    """
    if nvml is None:
        if not os.path.exists(NVIDIA_CONTROL_DEVICE):
            return None  # no NVIDIA driver here (NVML talks to it through this device)
        try:
            import pynvml as nvml  # nvidia-ml-py
        except ImportError:
            return None
    try:
        nvml.nvmlInit()
    except Exception:  # no library, no driver: not an error for a CPU machine
        return None
    try:
        count = nvml.nvmlDeviceGetCount()
        handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        uuids = [_decode(nvml.nvmlDeviceGetUUID(h)) for h in handles]
        try:
            driver = _decode(nvml.nvmlSystemGetDriverVersion())
        except nvml.NVMLError:
            driver = "unknown"
        gpus = []
        for i in visible_indices(count, uuids, os.environ.get("CUDA_VISIBLE_DEVICES")):
            h = handles[i]
            try:
                start_mj = nvml.nvmlDeviceGetTotalEnergyConsumption(h)
                has_counter = True
            except nvml.NVMLError:
                start_mj, has_counter = 0, False
            gpu = _Gpu(i, h, _decode(nvml.nvmlDeviceGetName(h)), uuids[i], has_counter, start_mj)
            gpu.max_power_w = _power_limit_w(nvml, h)
            gpus.append(gpu)
    except Exception:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
        return None
    if not gpus:
        nvml.nvmlShutdown()
        return None
    meter = NvmlMeter(nvml, gpus, driver)
    meter.read()  # prime the power integration
    return meter
