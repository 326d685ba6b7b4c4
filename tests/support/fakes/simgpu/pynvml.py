"""A simulated ``pynvml`` (nvidia-ml-py) for machines without a GPU: torch work on the CPU stands
in for GPU work, so ``benchmarks/gpu_check.py`` runs end to end before a GPU machine is lent.

Put this folder first on ``PYTHONPATH`` (with ``tests`` and the repository) and set
``WATTSUP_SIM_GPU_ROOT`` to the PID whose process tree does the work: every Python process of the
test then imports this module as ``pynvml`` (and ``sitecustomize.py`` beside it lets
mlflow_wattsup see a driver), so the check script and the ``wattsup`` processes it starts read the
same simulated device.

GPU 0 ("Simulated H100"): its power follows the CPU use of the processes of that tree whose
program (first three arguments) names one of ``WATTSUP_SIM_GPU_MARKERS`` (comma-separated, default
``gpu_check.py,segmentation``): ``IDLE_W`` + (``MAX_W`` - ``IDLE_W``) x min(1, their CPU-seconds
per second); its energy counter (mJ) integrates that power. One state serves every process (a JSON
file under a lock, ``WATTSUP_SIM_GPU_STATE``), so counters read by different processes agree, as
a real driver's do; its running processes are those marked processes, and per-process utilisation
samples are their own CPU use since the caller's timestamp. GPU 1 is idle at ``IDLE_W``. Power
limit ``CAP_W``.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import threading
import time
from types import SimpleNamespace

from support.fakes.nvml import NVMLError, NVMLError_NotSupported  # noqa: F401 - pynvml's names

from mlflow_wattsup.meters.proctree import ProcessTreeMeter

ROOT_ENV = "WATTSUP_SIM_GPU_ROOT"
STATE_ENV = "WATTSUP_SIM_GPU_STATE"  # the driver's state file (default: in the temp folder, per root)
MARKERS_ENV = "WATTSUP_SIM_GPU_MARKERS"
IDLE_W, MAX_W, CAP_W = 60.0, 400.0, 450.0
UPDATE_S = 0.02  # the simulated driver updates its figures at most this often
_CLK = os.sysconf("SC_CLK_TCK")

UUIDS = ("GPU-5157ab00-0000-4000-8000-000000000000", "GPU-5157ab01-0000-4000-8000-000000000001")
NAMES = ("Simulated H100 (CPU stand-in)", "Simulated idle GPU")


def _proc_cpu_s(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK  # its own time: a reaped child's is not GPU work
    except (OSError, IndexError, ValueError):
        return None


def _program(pid: int) -> str:
    """What the process runs: its first three arguments (``python script.py`` or ``python -m
    module``), not the command it was given to run (``wattsup run -- python gpu_check.py`` is not
    GPU work; its child is)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return " ".join(a.decode(errors="replace") for a in f.read().split(b"\0")[:3])
    except OSError:
        return ""


class _Device:
    def __init__(self, index: int):
        self.index = index
        self.name = NAMES[index]
        self.uuid = UUIDS[index]


class _Sim:
    """The simulated driver: one state for every process of the test (a JSON file under a lock, as
    a real driver is one for all its clients), updated by whichever process asks."""

    def __init__(self):
        root = int(os.environ.get(ROOT_ENV) or os.getpid())
        self.tree = ProcessTreeMeter(root)
        self.markers = [m for m in os.environ.get(MARKERS_ENV, "gpu_check.py,segmentation").split(",") if m]
        self.path = os.environ.get(STATE_ENV) or os.path.join(
            tempfile.gettempdir(), f"wattsup-simgpu-{root}.json"
        )
        self.cmd: dict[int, bool] = {}
        self.lock = threading.Lock()

    def _marked(self, pid: int) -> bool:
        if pid not in self.cmd:
            self.cmd[pid] = any(m in _program(pid) for m in self.markers)
        return self.cmd[pid]

    def _marked_cpu(self) -> dict[str, float]:
        out = {}
        for pid in self.tree.read().pids:
            if self._marked(pid):
                cpu = _proc_cpu_s(pid)
                if cpu is not None:
                    out[str(pid)] = cpu
        return out

    def state(self, force: bool = False) -> dict:
        """The driver's state, brought up to date (at most every ``UPDATE_S`` unless ``force``)."""
        with self.lock, open(self.path, "a+") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.seek(0)
            text = f.read()
            now = time.monotonic()
            if not text:
                st = {
                    "t": now,
                    "cpu": self._marked_cpu(),
                    "power_w": IDLE_W,
                    "energy_j": [0.0, 0.0],
                    "hist": [],
                }
                st["hist"].append([int(time.time() * 1e6), st["cpu"]])
            else:
                st = json.loads(text)
                dt = now - st["t"]
                if dt < UPDATE_S and not force:
                    return st
                cpu = self._marked_cpu()
                used = sum(max(0.0, c - st["cpu"].get(pid, c)) for pid, c in cpu.items())
                if dt > 0:
                    st["power_w"] = IDLE_W + (MAX_W - IDLE_W) * min(1.0, used / dt)
                    st["energy_j"][0] += st["power_w"] * dt
                    st["energy_j"][1] += IDLE_W * dt
                st["t"], st["cpu"] = now, cpu
                stamp = int(time.time() * 1e6)
                if force or stamp - st["hist"][-1][0] >= 100_000:
                    st["hist"].append([stamp, cpu])
                    del st["hist"][:-600]
            f.seek(0)
            f.truncate()
            f.write(json.dumps(st))
            return st


_sim: _Sim | None = None


def _state() -> _Sim:
    if _sim is None:
        raise NVMLError(1)  # NVML_ERROR_UNINITIALIZED
    return _sim


def nvmlInit():
    global _sim
    if _sim is None:
        _sim = _Sim()


def nvmlShutdown():
    pass  # the simulated driver keeps its counters, as a real one does


def nvmlSystemGetDriverVersion():
    return "580.159.04-sim"


def nvmlDeviceGetCount():
    _state()
    return 2


def nvmlDeviceGetHandleByIndex(i):
    _state()
    if i not in (0, 1):
        raise NVMLError(2)  # NVML_ERROR_INVALID_ARGUMENT
    return _Device(i)


def nvmlDeviceGetName(h):
    return h.name


def nvmlDeviceGetUUID(h):
    return h.uuid


def nvmlDeviceGetTotalEnergyConsumption(h):
    return int(_state().state()["energy_j"][h.index] * 1000)


def nvmlDeviceGetPowerUsage(h):
    return int((_state().state()["power_w"] if h.index == 0 else IDLE_W) * 1000)


def nvmlDeviceGetEnforcedPowerLimit(h):
    return int(CAP_W * 1000)


def nvmlDeviceGetComputeRunningProcesses(h):
    if h.index != 0:
        return []
    return [SimpleNamespace(pid=int(p), usedGpuMemory=2**30) for p in _state().state()["cpu"]]


def nvmlDeviceGetProcessUtilization(h, last_ts):
    if h.index != 0:
        raise NVMLError(6)  # NVML_ERROR_NOT_FOUND: no samples
    hist = _state().state(force=True)["hist"]
    since = next(((t, c) for t, c in hist if t >= last_ts), hist[0])
    now_t, now_c = hist[-1]
    dt = max(1e-6, (now_t - since[0]) / 1e6)
    samples = []
    for pid, c in now_c.items():
        used = max(0.0, c - since[1].get(pid, 0.0))  # a process newer than the snapshot: all of it
        util = int(round(min(100.0, 100.0 * used / dt)))
        samples.append(SimpleNamespace(pid=int(pid), smUtil=util, timeStamp=now_t))
    if not samples:
        raise NVMLError(6)
    return samples
