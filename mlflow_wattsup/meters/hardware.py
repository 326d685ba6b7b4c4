"""What this machine is: CPU model and topology, memory. Read once and cached (cheap to call)."""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass


@dataclass(frozen=True)
class CpuInfo:
    """``model``: the CPU's marketing name as the OS reports it. ``logical_cpus``: CPUs this OS
    sees. ``sockets`` and ``threads_per_socket``: topology from /proc/cpuinfo (``physical id``,
    ``siblings``). ``virtual``: the ``hypervisor`` flag is set (a VM; the host chip has more
    threads than we see)."""

    model: str
    logical_cpus: int
    sockets: int
    threads_per_socket: int
    virtual: bool


def parse_cpuinfo(text: str) -> CpuInfo:
    """Parse the text of ``/proc/cpuinfo``."""
    model = ""
    physical_ids: set[str] = set()
    siblings = 0
    processors = 0
    virtual = False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            processors += 1
        elif key in ("model name", "Model Name", "cpu model") and not model:
            model = value
        elif key == "physical id":
            physical_ids.add(value)
        elif key == "siblings" and not siblings:
            siblings = int(value) if value.isdigit() else 0
        elif key == "flags" and " hypervisor" in f" {value} ":
            virtual = True
    logical = processors or (os.cpu_count() or 1)
    sockets = max(1, len(physical_ids))
    return CpuInfo(
        model=model or platform.processor() or "unknown",
        logical_cpus=logical,
        sockets=sockets,
        threads_per_socket=siblings or max(1, logical // sockets),
        virtual=virtual,
    )


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    try:
        with open("/proc/cpuinfo") as f:
            return parse_cpuinfo(f.read())
    except OSError:
        n = os.cpu_count() or 1
        return CpuInfo(platform.processor() or "unknown", n, 1, n, False)


@functools.lru_cache(maxsize=1)
def total_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import psutil

    return int(psutil.virtual_memory().total)
