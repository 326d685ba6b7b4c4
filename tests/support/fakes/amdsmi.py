"""A fake of the ``amdsmi`` surface that mlflow_wattsup.meters.amdsmi uses, written from amdsmi's
own API (``py-interface/amdsmi_interface.py`` 6.3-7.0.2, ``include/amd_smi/amdsmi.h``):

- ``amdsmi_init(AmdSmiInitFlags.INIT_AMD_GPUS)``, ``amdsmi_shut_down()``; errors are
  ``AmdSmiLibraryException(err_code)`` (``get_error_code()``), a subclass of ``AmdSmiException``;
- ``amdsmi_get_processor_handles()`` in amdsmi's (PCI bus) order;
- ``amdsmi_get_gpu_enumeration_info(h)`` -> ``{"hip_id", "hip_uuid", "drm_card", ...}`` (6.4+);
- ``amdsmi_get_gpu_asic_info(h)["market_name"]``, ``amdsmi_get_gpu_device_uuid(h)``,
  ``amdsmi_get_gpu_driver_info(h)["driver_version"]``;
- ``amdsmi_get_energy_count(h)`` -> ``{"energy_accumulator", "counter_resolution" (uJ per count),
  "timestamp" (ns)}`` (``"power"`` instead of ``"energy_accumulator"`` before 6.2.1);
  ``AMDSMI_STATUS_NOT_SUPPORTED`` (2) on VM guests;
- ``amdsmi_get_power_info(h)`` -> ``{"socket_power", "current_socket_power",
  "average_socket_power", ...}`` in watts, ``"N/A"`` where the firmware reports none (0xFFFF);
- ``amdsmi_get_power_cap_info(h)`` -> ``{"power_cap", "default_power_cap", "min_power_cap",
  "max_power_cap"}`` in microwatts;
- ``amdsmi_get_gpu_process_list(h)`` -> ``[{"name", "pid", "mem", "engine_usage": {"gfx", "enc"}
  (ns, cumulative), "memory_usage": {"gtt_mem", "cpu_mem", "vram_mem"} (bytes)}, ...]``.

Each :class:`FakeAmdGpu` has a power (W) and an energy counter the test advances with
``advance(seconds)``; faults as reported on real boards: ``frozen``, ``energy_counts`` set by the
test (backwards, jumps), ``counter=False`` (a VM guest), ``current``/``average`` power fields
``None`` (reported as ``N/A``: MI300X has no average, MI250X no current), the odd die of an MI250X
reporting nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

STATUS_NOT_SUPPORTED = 2
STATUS_NOT_INIT = 32
STATUS_DRIVER_NOT_LOADED = 34
STATUS_UNEXPECTED_DATA = 43


class AmdSmiException(Exception):
    pass


class AmdSmiLibraryException(AmdSmiException):
    def __init__(self, err_code):
        super().__init__(err_code)
        self.err_code = abs(err_code)

    def get_error_code(self):
        return self.err_code

    def __str__(self):
        return f"Error code:\n\t{self.err_code}"


class AmdSmiInitFlags(IntEnum):
    INIT_ALL_PROCESSORS = 0xFFFFFFFF
    INIT_AMD_CPUS = 1 << 0
    INIT_AMD_GPUS = 1 << 1


@dataclass
class FakeAmdGpu:
    market_name: str
    uuid: str
    power_w: float
    hip_id: int | None = None  # None: same as the position in amdsmi's list
    counter: bool = True
    resolution_uj: float = 15.3  # microjoules per count (MI200/MI300 report 15.3 uJ)
    energy_counts: int = 10_000_000
    frozen: bool = False
    current: bool = True  # current_socket_power reported
    average: bool = True  # average_socket_power reported
    power_cap_w: float | None = 560.0
    procs: list = field(default_factory=list)  # dicts: pid, gfx_ns, vram_bytes
    old_energy_key: bool = False  # amdsmi < 6.2.1: the count is under "power"

    def add_energy_j(self, joules: float) -> None:
        self.energy_counts += int(round(joules * 1e6 / self.resolution_uj))


class FakeAmdsmi:
    AmdSmiException = AmdSmiException
    AmdSmiLibraryException = AmdSmiLibraryException
    AmdSmiInitFlags = AmdSmiInitFlags

    def __init__(self, gpus, init_error: int | None = None, enumeration: bool = True):
        self.gpus = list(gpus)
        self.init_error = init_error
        self.initialised = False
        self.shutdown_calls = 0
        if not enumeration:  # amdsmi 6.3 has no amdsmi_get_gpu_enumeration_info
            self.amdsmi_get_gpu_enumeration_info = None

    # the test's controls
    def advance(self, seconds: float) -> None:
        for g in self.gpus:
            if g.counter and not g.frozen:
                g.add_energy_j(g.power_w * seconds)

    def _check(self, h):
        if not self.initialised:
            raise AmdSmiLibraryException(STATUS_NOT_INIT)
        if h not in self.gpus:
            raise AmdSmiLibraryException(1)  # AMDSMI_STATUS_INVAL

    # amdsmi API
    def amdsmi_init(self, flag=AmdSmiInitFlags.INIT_AMD_GPUS):
        if self.init_error is not None:
            raise AmdSmiLibraryException(self.init_error)
        self.initialised = True

    def amdsmi_shut_down(self):
        self.initialised = False
        self.shutdown_calls += 1

    def amdsmi_get_processor_handles(self):
        if not self.initialised:
            raise AmdSmiLibraryException(STATUS_NOT_INIT)
        return list(self.gpus)

    def amdsmi_get_gpu_enumeration_info(self, h):
        self._check(h)
        hip = h.hip_id if h.hip_id is not None else self.gpus.index(h)
        return {"drm_render": 128 + hip, "drm_card": hip, "hsa_id": hip, "hip_id": hip, "hip_uuid": h.uuid}

    def amdsmi_get_gpu_asic_info(self, h):
        self._check(h)
        return {
            "market_name": h.market_name,
            "vendor_id": "0x1002",
            "vendor_name": "Advanced Micro Devices Inc.",
        }

    def amdsmi_get_gpu_device_uuid(self, h):
        self._check(h)
        return h.uuid.removeprefix("GPU-")

    def amdsmi_get_gpu_driver_info(self, h):
        self._check(h)
        return {"driver_name": "amdgpu", "driver_version": "6.10.5", "driver_date": "2015/01/01 00:00"}

    def amdsmi_get_energy_count(self, h):
        self._check(h)
        if not h.counter:
            raise AmdSmiLibraryException(STATUS_NOT_SUPPORTED)
        key = "power" if h.old_energy_key else "energy_accumulator"
        return {
            key: h.energy_counts,
            "counter_resolution": h.resolution_uj,
            "timestamp": 1_700_000_000_000_000_000,
        }

    def amdsmi_get_power_info(self, h):
        self._check(h)
        watts = int(round(h.power_w))
        return {
            "socket_power": watts if (h.current or h.average) else "N/A",
            "current_socket_power": watts if h.current else "N/A",
            "average_socket_power": watts if h.average else "N/A",
            "gfx_voltage": 800,
            "soc_voltage": 800,
            "mem_voltage": 1200,
            "power_limit": int(h.power_cap_w or 0),
        }

    def amdsmi_get_power_cap_info(self, h):
        self._check(h)
        if h.power_cap_w is None:
            raise AmdSmiLibraryException(STATUS_NOT_SUPPORTED)
        cap_uw = int(h.power_cap_w * 1e6)
        return {
            "power_cap": cap_uw,
            "default_power_cap": cap_uw,
            "dpm_cap": 0,
            "min_power_cap": 0,
            "max_power_cap": cap_uw,
        }

    def amdsmi_get_gpu_process_list(self, h):
        self._check(h)
        return [
            {
                "name": f"python{p['pid']}",
                "pid": p["pid"],
                "mem": p.get("vram_bytes", 0),
                "engine_usage": {"gfx": p.get("gfx_ns", 0), "enc": 0},
                "memory_usage": {"gtt_mem": 0, "cpu_mem": 0, "vram_mem": p.get("vram_bytes", 0)},
                "cu_occupancy": "N/A",
            }
            for p in h.procs
        ]


def proc(pid: int, gfx_ns: int = 0, vram_bytes: int = 0) -> dict:
    """A process on a fake GPU (its cumulative GFX engine time and VRAM)."""
    return {"pid": pid, "gfx_ns": gfx_ns, "vram_bytes": vram_bytes}


def mi250x_pair(index: int = 0) -> list[FakeAmdGpu]:
    """The two dies of an MI250X as amdsmi lists them: the even one reports both dies' power and
    energy, the odd one neither (0 W, no counter movement, power fields N/A)."""
    even = FakeAmdGpu("AMD Instinct MI250X", f"GPU-250{index}a", 300.0, current=False)
    odd = FakeAmdGpu(
        "AMD Instinct MI250X", f"GPU-250{index}b", 0.0, current=False, average=False, frozen=True
    )
    return [even, odd]
