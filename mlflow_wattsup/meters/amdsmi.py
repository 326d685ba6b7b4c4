"""AMD GPU energy through AMD SMI (the ``amdsmi`` Python package of ROCm, >= 6.3).

Read from amdsmi's own API (``amdsmi_interface.py``, ``amdsmi.h``), per visible GPU:

- energy counter: ``amdsmi_get_energy_count`` -> ``energy_accumulator`` x ``counter_resolution``
  (microjoules per count; before amdsmi 6.2.1 the count was under ``power``); bare metal only
  (``AMDSMI_STATUS_NOT_SUPPORTED`` on a VM guest);
- power: ``amdsmi_get_power_info`` -> ``current_socket_power``, else ``average_socket_power``
  (watts; the library gives the string ``"N/A"`` where the firmware does not report one: MI300X
  boards report current but not average power, MI200 boards the reverse);
- power cap: ``amdsmi_get_power_cap_info`` -> ``power_cap`` (microwatts);
- processes: ``amdsmi_get_gpu_process_list`` -> per process ``pid``, ``engine_usage.gfx``
  (nanoseconds of GFX engine time, cumulative) and ``memory_usage.vram_mem`` (bytes).

The counter is used where it is sane; the tracker checks every interval (a counter that runs
backwards, jumps beyond the power cap x interval, or stands still while the GPU draws power, as
ROCm/amdsmi#38 reports on some boards) and falls back to integrated power (source
``amdsmi-power``): :mod:`.sanity`, :mod:`mlflow_wattsup.tracking.gpu_energy`.

Quirks handled (the first two as Zeus documents them for its AMD backend):

- **MI250 / MI250X** are two dies that amdsmi lists as two GPUs; the even HIP index reports the
  power and energy of *both*, the odd one nothing (0 or N/A). The pair is metered once, through
  the even die, whichever of the two is visible, with both dies' processes for the share
  (:attr:`AmdsmiMeter.notes` says so).
- **AMDSMI_STATUS_UNEXPECTED_DATA** (43) at start: the amd-smi library is older than the GPU (e.g.
  ROCm 6.4 on an MI300X): :class:`AmdsmiUnavailable` says to use a newer ROCm.
- ``import amdsmi`` without ROCm's ``libamd_smi.so`` prints two lines to stdout and raises
  ``KeyError`` (7.0.2): the import is silenced and any exception means "not usable".

Which GPUs are visible follows ROCm's order of isolation: ``ROCR_VISIBLE_DEVICES`` (indices or
``GPU-<uuid>`` of every GPU) first, then ``HIP_VISIBLE_DEVICES`` (or, when unset,
``CUDA_VISIBLE_DEVICES``) indexing what ROCr left; an empty value hides every GPU; an invalid
entry ends the list. Indices are HIP indices (``amdsmi_get_gpu_enumeration_info``'s ``hip_id``
where the library has it, else amdsmi's own order).

No ``/dev/kfd`` (no AMD driver) is not an error: :func:`open_amdsmi` returns ``None``. libamd_smi
before ROCm 7.2 is not thread-safe (Zeus's notes): the tracker reads the meter under its own lock,
one call at a time.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mlflow_wattsup.meters.cgroup import RunProcesses
from mlflow_wattsup.meters.sanity import plausible_power_w

SOURCE_ENERGY = "amdsmi-energy"
SOURCE_POWER = "amdsmi-power"
#: the AMD kernel driver's compute device: amdsmi's GPU functions need it
KFD_DEVICE = "/dev/kfd"
#: amdsmi status codes used here (amdsmi_wrapper.AMDSMI_STATUS_*)
STATUS_NOT_SUPPORTED = 2
STATUS_UNEXPECTED_DATA = 43


class AmdsmiUnavailable(RuntimeError):
    """An AMD GPU is here but amdsmi cannot read it; ``str(exc)`` is one line saying what to do."""


@dataclass(frozen=True)
class AmdGpuReading:
    """One AMD GPU (or MI250 die pair) at one instant, cumulative since the meter opened.

    ``energy_j`` (J): the counter where there is one, else integrated power; ``counter_j`` (J):
    the energy counter, None without one; ``power_energy_j`` (J): integral of the plausible power
    readings, None when the GPU never reported power; ``power_w`` (W): this reading's power;
    ``share``: fraction of the GPU's activity since the last reading that is the tracked
    processes' (None when their PIDs are not in our namespace); ``max_power_w`` (W): power cap.
    """

    index: int
    energy_j: float
    power_w: float | None
    share: float | None
    counter_j: float | None = None
    power_energy_j: float | None = None
    max_power_w: float | None = None


@dataclass(frozen=True)
class AmdsmiReading:
    """All visible AMD GPUs at ``monotonic_s`` (seconds)."""

    monotonic_s: float
    gpus: list[AmdGpuReading] = field(default_factory=list)

    @property
    def energy_j(self) -> float:
        return sum(g.energy_j for g in self.gpus)


@dataclass
class _AmdGpu:
    index: int  # HIP index of the die that reports power and energy
    handle: Any
    name: str
    proc_handles: list[Any]  # every die whose processes count (one, or both dies of an MI250)
    has_counter: bool = False
    start_uj: float = 0.0
    max_power_w: float | None = None
    power_field: str | None = None  # "current_socket_power" or "average_socket_power"
    energy_j: float = 0.0  # integrated power, J
    power_seen: bool = False
    last_power_w: float | None = None
    last_s: float | None = None
    last_gfx_ns: dict[int, int] = field(default_factory=dict)


def visible_hip_indices(count: int, uuids: list[str], environ: dict[str, str] | os._Environ) -> list[int]:
    """HIP indices of the GPUs a ROCm program started with ``environ`` would see, in its order.

    ``uuids``: each GPU's UUID by HIP index (matched by ``ROCR_VISIBLE_DEVICES`` entries
    ``GPU-<uuid prefix>``). ROCr's list is applied first, then HIP's (or CUDA's) indexes into it.
    """
    order = list(range(count))
    rocr = environ.get("ROCR_VISIBLE_DEVICES")
    if rocr is not None:
        order = _select(order, rocr, uuids)
    hip = environ.get("HIP_VISIBLE_DEVICES")
    if hip is None:
        hip = environ.get("CUDA_VISIBLE_DEVICES")
    if hip is not None:
        order = _select(order, hip, None)
    return order


def _select(order: list[int], spec: str, uuids: list[str] | None) -> list[int]:
    out: list[int] = []
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            break
        if token.lstrip("-").isdigit():
            i = int(token)
            if i < 0 or i >= len(order):
                break  # an invalid entry ends the list
            out.append(order[i])
            continue
        if uuids is None:
            break  # HIP_VISIBLE_DEVICES takes indices only
        want = token.removeprefix("GPU-").lower()
        matches = [h for h in order if want and uuids[h].lower().removeprefix("gpu-").startswith(want)]
        if len(matches) != 1:
            break
        out.append(matches[0])
    return list(dict.fromkeys(out))


class AmdsmiMeter:
    """Energy of the visible AMD GPUs. Create with :func:`open_amdsmi`."""

    def __init__(self, smi: Any, gpus: list[_AmdGpu], driver: str, notes: list[str]):
        self._smi = smi
        self._gpus = gpus
        self.driver_version = driver
        #: one-line facts the user should know (MI250 die pairs metered together)
        self.notes = notes

    @property
    def names(self) -> list[str]:
        return [g.name for g in self._gpus]

    @property
    def source(self) -> str:
        """``amdsmi-energy`` if every GPU has an energy counter, else ``amdsmi-power``."""
        return SOURCE_ENERGY if all(g.has_counter for g in self._gpus) else SOURCE_POWER

    def read(self, pids: Iterable[int] | None = None, cgroups: Iterable[str] = ()) -> AmdsmiReading:
        """Read every GPU; with ``pids``, also the share of each used by those processes: their
        GFX engine time since the last read over all processes', else their share of VRAM, else
        0 when no process is on the GPU, None when no listed PID exists in our namespace. A process
        in one of ``cgroups`` (a container the run started) counts as the run's."""
        now = time.monotonic()
        wanted = RunProcesses(set(pids), tuple(cgroups), "/proc") if pids is not None else None
        out = []
        for g in self._gpus:
            power_w = self._power_w(g)
            counter_j = self._counter_uj(g.handle) / 1e6 - g.start_uj / 1e6 if g.has_counter else None
            if power_w is not None:
                g.power_seen = True
                if g.last_power_w is not None and g.last_s is not None:
                    g.energy_j += 0.5 * (power_w + g.last_power_w) * (now - g.last_s)
            g.last_power_w, g.last_s = power_w, now
            share = self._share(g, wanted) if wanted is not None else None
            energy_j = counter_j if counter_j is not None else g.energy_j
            power_j = g.energy_j if g.power_seen else None
            out.append(AmdGpuReading(g.index, energy_j, power_w, share, counter_j, power_j, g.max_power_w))
        return AmdsmiReading(now, out)

    def _counter_uj(self, handle: Any) -> float:
        return _energy_uj(self._smi.amdsmi_get_energy_count(handle))

    def _power_w(self, g: _AmdGpu) -> float | None:
        if g.power_field is None:
            return None
        try:
            info = self._smi.amdsmi_get_power_info(g.handle)
        except self._smi.AmdSmiException:
            return None
        return plausible_power_w(_watts(info.get(g.power_field)), g.max_power_w)

    def _share(self, g: _AmdGpu, ours: RunProcesses) -> float | None:
        procs: list[dict] = []
        for h in g.proc_handles:
            try:
                procs.extend(self._smi.amdsmi_get_gpu_process_list(h))
            except self._smi.AmdSmiException:
                return None
        if not procs:
            g.last_gfx_ns = {}
            return 0.0
        pids = [int(p.get("pid", 0)) for p in procs]
        if not any(_pid_exists(p) for p in pids):
            return None
        gfx: dict[int, int] = {}
        for p in procs:
            pid = int(p.get("pid", 0))
            gfx[pid] = gfx.get(pid, 0) + int((p.get("engine_usage") or {}).get("gfx") or 0)
        deltas = {pid: max(0, ns - g.last_gfx_ns.get(pid, ns)) for pid, ns in gfx.items()}
        first_time = not g.last_gfx_ns
        g.last_gfx_ns = gfx
        total = sum(deltas.values())
        if total > 0 and not first_time:
            return sum(d for pid, d in deltas.items() if pid in ours) / total
        mine = [p for p in procs if int(p.get("pid", 0)) in ours]
        if not mine:
            return 0.0
        if len(mine) == len(procs):
            return 1.0
        vram = [_vram(p) for p in procs]
        if sum(vram) <= 0:
            return len(mine) / len(procs)
        return sum(_vram(p) for p in mine) / sum(vram)

    def close(self) -> None:
        try:
            self._smi.amdsmi_shut_down()
        except Exception:
            pass


def _vram(proc: dict) -> int:
    return int((proc.get("memory_usage") or {}).get("vram_mem") or proc.get("mem") or 0)


def _energy_uj(info: dict) -> float:
    """Microjoules from ``amdsmi_get_energy_count``'s dict (both the 6.2.1+ and older keys)."""
    count = info.get("energy_accumulator", info.get("power"))
    return float(count) * float(info["counter_resolution"])


def _watts(value: Any) -> float | None:
    """A power field of ``amdsmi_get_power_info`` in watts, None for ``N/A`` or a sentinel."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if value in (0xFFFF, 0xFFFFFFFF):
        return None
    return float(value)


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


def _import_amdsmi() -> Any:
    """``import amdsmi`` with its stdout chatter silenced; raises on any failure."""
    with contextlib.redirect_stdout(io.StringIO()):
        import amdsmi  # the ROCm package; absent, or unusable without libamd_smi.so

    return amdsmi


def _error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "err_code", None)
    if code is None and hasattr(exc, "get_error_code"):
        try:
            code = exc.get_error_code()
        except Exception:
            code = None
    return code


def _unavailable(exc: BaseException) -> AmdsmiUnavailable:
    if _error_code(exc) == STATUS_UNEXPECTED_DATA:
        return AmdsmiUnavailable(
            "amdsmi could not read the AMD GPU (AMDSMI_STATUS_UNEXPECTED_DATA): the amd-smi library "
            "is older than the GPU (e.g. ROCm 6.4 on an MI300X); use a newer ROCm's amdsmi. AMD GPU "
            "energy is not measured."
        )
    return AmdsmiUnavailable(f"amdsmi could not start ({exc}); AMD GPU energy is not measured.")


def _hip_order(smi: Any, handles: list[Any]) -> list[Any]:
    """The handles in HIP's order: by ``hip_id`` (amdsmi >= 6.4), else by KFD node id (HIP
    enumerates in KFD topology order; amdsmi 6.3), else amdsmi's own (PCI bus) order."""
    for call, key in (("amdsmi_get_gpu_enumeration_info", "hip_id"), ("amdsmi_get_gpu_kfd_info", "node_id")):
        fn = getattr(smi, call, None)
        if fn is None:
            continue
        try:
            ids = [fn(h)[key] for h in handles]
        except Exception:
            continue
        if all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids):
            return [h for _, h in sorted(zip(ids, handles, strict=True), key=lambda p: p[0])]
    return list(handles)


def _uuid(smi: Any, handle: Any) -> str:
    for call, key in (("amdsmi_get_gpu_enumeration_info", "hip_uuid"), ("amdsmi_get_gpu_device_uuid", None)):
        fn = getattr(smi, call, None)
        if fn is None:
            continue
        try:
            value = fn(handle)
            value = value[key] if key else value
        except Exception:
            continue
        if value:
            return str(value)
    return ""


def _name(smi: Any, handle: Any) -> str:
    try:
        name = smi.amdsmi_get_gpu_asic_info(handle).get("market_name") or ""
    except Exception:
        name = ""
    return name if name and name != "N/A" else "AMD GPU"


def _power_field(smi: Any, handle: Any) -> tuple[str | None, float | None]:
    """The power field this GPU reports (current, else average, else the pre-6.x socket power)
    and its value now (W); (None, None) when it reports none."""
    try:
        info = smi.amdsmi_get_power_info(handle)
    except Exception:
        return None, None
    for key in ("current_socket_power", "average_socket_power", "socket_power"):
        watts = _watts(info.get(key))
        if watts is not None:
            return key, watts
    return None, None


def _power_cap_w(smi: Any, handle: Any) -> float | None:
    try:
        cap_uw = smi.amdsmi_get_power_cap_info(handle)["power_cap"]
    except Exception:
        return None
    return cap_uw / 1e6 if isinstance(cap_uw, int | float) and cap_uw > 0 else None


def _driver(smi: Any, handle: Any) -> str:
    try:
        return str(smi.amdsmi_get_gpu_driver_info(handle)["driver_version"])
    except Exception:
        return "unknown"


def open_amdsmi(smi: Any = None) -> AmdsmiMeter | None:
    """Initialise amdsmi and open the visible AMD GPUs; ``None`` when there is no AMD GPU here.

    ``smi`` is the module to use (tests pass a fake); by default ``amdsmi``. Raises
    :class:`AmdsmiUnavailable` when an AMD GPU is here but amdsmi cannot read it.
    """
    if smi is None:
        if not os.path.exists(KFD_DEVICE):
            return None
        try:
            smi = _import_amdsmi()
        except Exception as exc:  # ImportError, or KeyError/OSError without libamd_smi.so
            raise AmdsmiUnavailable(
                f"this machine has an AMD GPU but amdsmi cannot be imported ({type(exc).__name__}: "
                f"{exc}); install ROCm's amdsmi (pip install 'mlflow-wattsup[amd]' or ROCm's own "
                "package) to measure AMD GPU energy"
            ) from None
    try:
        smi.amdsmi_init(smi.AmdSmiInitFlags.INIT_AMD_GPUS)
    except Exception as exc:
        if _error_code(exc) == STATUS_UNEXPECTED_DATA or os.path.exists(KFD_DEVICE):
            raise _unavailable(exc) from None  # an AMD GPU is here: say why it cannot be read
        return None  # no driver loaded, no GPU: not an error for a CPU machine
    try:
        meter = _open(smi)
    except Exception as exc:
        with contextlib.suppress(Exception):
            smi.amdsmi_shut_down()
        raise _unavailable(exc) from None
    if meter is None:
        with contextlib.suppress(Exception):
            smi.amdsmi_shut_down()
        return None
    meter.read(pids=())  # prime power integration and the processes' engine times
    return meter


def _open(smi: Any) -> AmdsmiMeter | None:
    handles = _hip_order(smi, list(smi.amdsmi_get_processor_handles()))
    if not handles:
        return None
    names = [_name(smi, h) for h in handles]
    uuids = [_uuid(smi, h) for h in handles]
    fields, watts = zip(*(_power_field(smi, h) for h in handles), strict=True)
    notes: list[str] = []
    gpus: list[_AmdGpu] = []
    seen: set[int] = set()
    for i in visible_hip_indices(len(handles), uuids, os.environ):
        reporter, dies = i, [i]
        if "MI250" in names[i].upper():  # two dies; the even one reports both (see module doc)
            even = i - i % 2
            odd = even + 1
            if odd < len(handles) and "MI250" in names[odd].upper() and not watts[odd]:  # N/A or 0 W
                reporter, dies = even, [even, odd]
                notes.append(
                    f"GPU {even} and GPU {odd} are the two dies of one {names[even]}: AMD reports "
                    f"their power and energy together on GPU {even}; they are metered as one device."
                )
        if reporter in seen:
            continue
        seen.add(reporter)
        h = handles[reporter]
        g = _AmdGpu(reporter, h, names[reporter], [handles[d] for d in dies])
        g.power_field = fields[reporter]
        g.max_power_w = _power_cap_w(smi, h)
        try:
            g.start_uj = _energy_uj(smi.amdsmi_get_energy_count(h))
            g.has_counter = True
        except Exception:
            g.has_counter = False  # not supported (a VM guest) or an old library
        gpus.append(g)
    if not gpus:
        return None
    return AmdsmiMeter(smi, gpus, _driver(smi, handles[0]), list(dict.fromkeys(notes)))
