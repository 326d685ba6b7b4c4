"""A fake of the pynvml API surface that mlflow_wattsup.meters.nvml uses.

Each GPU has a power (W) and, if ``counter`` is True, an energy counter in mJ that the test
advances with ``advance(seconds)``; power-only GPUs raise NVMLError_NotSupported for the counter.
Faults, as real drivers show them: ``frozen`` (the counter stops moving), ``power=False`` (power
NotSupported, as on a vGPU), ``power_limit_w`` (the enforced power limit, W; NotSupported when
None); the test may also set ``energy_mj`` directly (a counter that runs backwards or jumps).
"""

from dataclasses import dataclass, field
from types import SimpleNamespace


class NVMLError(Exception):
    def __init__(self, value=999):
        self.value = value
        super().__init__(f"NVML error {value}")


class NVMLError_NotSupported(NVMLError):
    def __init__(self):
        super().__init__(3)


@dataclass
class FakeGpu:
    name: str
    uuid: str
    power_w: float
    counter: bool = True
    energy_mj: int = 5_000_000
    procs: list = field(default_factory=list)  # [(pid, used_mem_bytes)]
    util: list = field(default_factory=list)  # [(pid, sm_util)] samples returned once
    fail: bool = False
    frozen: bool = False  # the energy counter stands still
    power: bool = True  # False: nvmlDeviceGetPowerUsage is NotSupported
    power_limit_w: float | None = None


class FakeNvml:
    NVMLError = NVMLError

    def __init__(self, gpus, driver="550.54.15", init_error=False):
        self.gpus = list(gpus)
        self.driver = driver
        self.init_error = init_error
        self.shutdown_calls = 0
        self._ts = 1000

    # the test's controls
    def advance(self, seconds: float) -> None:
        for g in self.gpus:
            if g.counter and not g.frozen:
                g.energy_mj += int(round(g.power_w * seconds * 1000))

    # pynvml API
    def nvmlInit(self):
        if self.init_error:
            raise NVMLError(12)  # library not found

    def nvmlShutdown(self):
        self.shutdown_calls += 1

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.gpus[i]

    def nvmlDeviceGetName(self, h):
        return h.name

    def nvmlDeviceGetUUID(self, h):
        return h.uuid

    def nvmlSystemGetDriverVersion(self):
        return self.driver

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        if h.fail:
            raise NVMLError(15)  # GPU is lost
        if not h.counter:
            raise NVMLError_NotSupported()
        return h.energy_mj

    def nvmlDeviceGetPowerUsage(self, h):
        if h.fail:
            raise NVMLError(15)
        if not h.power:
            raise NVMLError_NotSupported()
        return int(h.power_w * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        if h.power_limit_w is None:
            raise NVMLError_NotSupported()
        return int(h.power_limit_w * 1000)

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=p, usedGpuMemory=m) for p, m in h.procs]

    def nvmlDeviceGetProcessUtilization(self, h, last_ts):
        if not h.util:
            raise NVMLError(6)  # not found: no samples
        self._ts += 1
        out = [SimpleNamespace(pid=p, smUtil=u, timeStamp=self._ts) for p, u in h.util]
        return out
