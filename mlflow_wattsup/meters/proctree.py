"""CPU time and memory of a process tree, counting children that already exited.

For a process P the kernel keeps ``utime+stime`` (P's own CPU seconds) and ``cutime+cstime``
(the CPU seconds of every child P has waited for, and of *their* waited-for children). So at any
moment the CPU seconds of the tree rooted at R are

    sum over live (or zombie) processes L in the tree of  utime + stime + cutime + cstime

with no double count: a reaped child is no longer in the tree, and its time is in its parent's
``cutime``. Pipelines that run hundreds of short programs (recon-all) are counted completely,
where summing only live processes' own time undercounts such runs many times over.

Reading order matters for races: parents are read before their children (breadth first), so a
child reaped between the two reads is missed for one sample (an undercount that the next sample
or the exact ``wait4`` rusage at exit repairs) and never counted twice. :class:`ProcessTreeMeter`
therefore reports a running maximum.

Processes that leave the tree (orphans re-parented to init) are lost unless the tracker is a
child subreaper (:func:`become_subreaper`), in which case their rusage arrives through ``wait4``
and is added with :meth:`ProcessTreeMeter.add_reaped`.

Containers: a Docker container's processes are the children of the runtime's daemon, not of
the command that started it, so no tree walk finds them. Their cgroup counts them instead
(:mod:`.cgroup`); :meth:`ProcessTreeMeter.attach` adds such a cgroup's CPU time and memory to the
tree's (``tracking/containers.py`` decides which cgroups belong to the run). A cgroup whose
processes are already in the tree (rootful Podman under a subreaper) is not attached: it would be
counted twice.

Machine-wide busy CPU seconds come from ``/proc/stat``.

On Linux everything is read from procfs directly (about 20 us per process); elsewhere psutil.
"""

from __future__ import annotations

import ctypes
import os
import time
from dataclasses import dataclass
from typing import Any, Protocol

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_HAVE_PROC = os.path.exists("/proc/self/stat")


@dataclass(frozen=True)
class TreeReading:
    """The tracked tree at one instant.

    ``cpu_s``: CPU seconds (user+system) used by the tree since the meter started, children that
    already exited included, and of the attached cgroups (containers). ``rss_bytes``: resident
    memory summed over live processes (shared pages are counted once per process) and attached
    cgroups. ``pids``: the live processes of the tree (not the containers'). ``container_cpu_s``:
    the part of ``cpu_s`` from attached cgroups. ``cgroups``: the attached cgroups' paths (as in
    ``/proc/PID/cgroup``), whose processes are the run's too (e.g. on a GPU).
    """

    monotonic_s: float
    cpu_s: float
    rss_bytes: int
    pids: tuple[int, ...]
    container_cpu_s: float = 0.0
    cgroups: tuple[str, ...] = ()


@dataclass(frozen=True)
class MachineReading:
    """Whole machine: busy CPU seconds since boot (all CPUs), memory in use, logical CPUs."""

    monotonic_s: float
    busy_cpu_s: float
    mem_used_bytes: int
    mem_total_bytes: int
    logical_cpus: int


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm (field 2) may contain spaces and parentheses: split after the last ')'
    return data[data.rfind(b")") + 2 :].decode().split()


def _children_of(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


class _Source(Protocol):
    def read(self) -> Any: ...


@dataclass(frozen=True)
class _Attached:
    source: _Source
    cgroups: tuple[str, ...]


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _has_children_file() -> bool:
    return _HAVE_PROC and os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _ppid_map() -> dict[int, list[int]]:
    """parent -> children for every PID on the machine (slow path, ~1 ms)."""
    out: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        f = _stat_fields(int(name))
        if f:
            out.setdefault(int(f[1]), []).append(int(name))
    return out


class ProcessTreeMeter:
    """CPU seconds and memory of the process tree rooted at ``root_pid``.

    With ``children_of=PID`` the tree is instead every current child of PID (and their
    descendants) but not PID itself: this is how ``wattsup run`` counts its command together with
    the orphans it adopted as subreaper, without counting its own sampling and logging. When PID is
    this process, children in its own process group are its helpers (the command runs in a group
    of its own; MLflow's ``git``, a container runtime's ``inspect``), not the command's, and are
    left out.

    Attached cgroups (:meth:`attach`) add their CPU seconds and memory.
    """

    def __init__(self, root_pid: int | None = None, *, children_of: int | None = None):
        self.root_pid = os.getpid() if root_pid is None else root_pid
        self.children_of = children_of
        # our own helpers: only where the tree is our children (a launcher's ranks share its group)
        self._own_group = os.getpgrp() if children_of == os.getpid() else None
        self._fast_children = _has_children_file()
        self._reaped_s = 0.0
        self._max_s = 0.0
        self._baseline_s = 0.0
        self._attached: dict[str, _Attached] = {}
        first = self._raw()
        self._baseline_s = first[0]

    def _raw(self) -> tuple[float, int, tuple[int, ...]]:
        if not _HAVE_PROC:
            return self._raw_psutil()
        ticks = 0
        rss_pages = 0
        pids: list[int] = []
        ppids = None if self._fast_children else _ppid_map()
        if self.children_of is None:
            queue = [self.root_pid]
        else:
            queue = _children_of(self.children_of) if ppids is None else list(ppids.get(self.children_of, ()))
            if self._own_group is not None:
                queue = [p for p in queue if _pgid(p) != self._own_group]
        seen = set()
        while queue:
            pid = queue.pop(0)
            if pid in seen:
                continue
            seen.add(pid)
            f = _stat_fields(pid)
            if f is None:
                continue  # exited between listing and reading: picked up via its parent later
            # fields after comm: state=0 ppid=1 ... utime=11 stime=12 cutime=13 cstime=14 rss=21
            ticks += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
            rss_pages += int(f[21])
            pids.append(pid)
            queue.extend(_children_of(pid) if ppids is None else ppids.get(pid, ()))
        return ticks / _CLK_TCK, rss_pages * _PAGE, tuple(pids)

    def _raw_psutil(self) -> tuple[float, int, tuple[int, ...]]:  # pragma: no cover - non-Linux
        import psutil

        total, rss, pids = 0.0, 0, []
        try:
            if self.children_of is None:
                root = psutil.Process(self.root_pid)
                procs = [root] + root.children(recursive=True)
            else:
                procs = psutil.Process(self.children_of).children(recursive=True)
        except psutil.Error:
            return 0.0, 0, ()
        for p in procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system + t.children_user + t.children_system
                rss += p.memory_info().rss
                pids.append(p.pid)
            except psutil.Error:
                continue
        return total, rss, tuple(pids)

    def add_reaped(self, cpu_s: float) -> None:
        """Add the CPU seconds of a process reaped by the tracker (the root, or an orphan).

        After the root itself has been reaped its rusage is the exact total of the tree it
        waited for; pass it here and the meter's reading becomes exact.
        """
        self._reaped_s += cpu_s

    @property
    def reaped_cpu_s(self) -> float:
        """CPU seconds of the processes of the tree the tracker reaped (``wait4``)."""
        return self._reaped_s

    def attach(self, key: str, source: _Source, cgroups: tuple[str, ...] = ()) -> None:
        """Count a cgroup as part of the tree from now on: ``source.read()`` returns a
        :class:`~.cgroup.CgroupReading` (CPU seconds since the cgroup was created: all of it is
        added). ``cgroups``: its paths, for matching other processes to it. Attaching ``key``
        again is a no-op."""
        self._attached.setdefault(key, _Attached(source, tuple(cgroups)))

    def read(self) -> TreeReading:
        cpu_s, rss, pids = self._raw()
        extra_s, extra_mem, groups = 0.0, 0, []
        for a in list(self._attached.values()):
            r = a.source.read()
            extra_s += r.cpu_s
            extra_mem += r.memory_bytes or 0
            if not r.gone:
                groups.extend(a.cgroups)
        total = cpu_s - self._baseline_s + self._reaped_s + extra_s
        self._max_s = max(self._max_s, total)
        return TreeReading(time.monotonic(), self._max_s, rss + extra_mem, pids, extra_s, tuple(groups))


class MachineMeter:
    """Machine-wide busy CPU seconds (``/proc/stat``) and memory in use (``/proc/meminfo``).

    Busy = user + nice + system + irq + softirq + steal (guest time is already inside user).
    Paths are parameters so tests can feed fixed files.
    """

    def __init__(self, stat_path: str = "/proc/stat", meminfo_path: str = "/proc/meminfo"):
        self.stat_path = stat_path
        self.meminfo_path = meminfo_path
        self.logical_cpus = os.cpu_count() or 1
        if not os.path.exists(stat_path):  # pragma: no cover - non-Linux
            self.stat_path = None

    def read(self) -> MachineReading:
        now = time.monotonic()
        if self.stat_path is None:  # pragma: no cover - non-Linux
            import psutil

            t = psutil.cpu_times()
            busy = sum(getattr(t, k, 0.0) for k in ("user", "nice", "system", "irq", "softirq", "steal"))
            vm = psutil.virtual_memory()
            return MachineReading(now, busy, vm.total - vm.available, vm.total, self.logical_cpus)
        with open(self.stat_path, "rb") as f:
            line = f.readline().split()
        # cpu user nice system idle iowait irq softirq steal guest guest_nice
        vals = [int(v) for v in line[1:9]] + [0] * (8 - len(line[1:9]))
        busy_ticks = vals[0] + vals[1] + vals[2] + vals[5] + vals[6] + vals[7]
        total = avail = 0
        with open(self.meminfo_path, "rb") as f:
            for row in f:
                if row.startswith(b"MemTotal:"):
                    total = int(row.split()[1]) * 1024
                elif row.startswith(b"MemAvailable:"):
                    avail = int(row.split()[1]) * 1024
                    break
        return MachineReading(now, busy_ticks / _CLK_TCK, total - avail, total, self.logical_cpus)


def become_subreaper() -> bool:
    """Make this process the reaper of orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``).

    Then a daemonising grandchild is re-parented to us instead of init, stays in the tracked
    tree, and its CPU time reaches us through ``wait4``. Returns False where unsupported.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER = 36
    except (OSError, AttributeError):
        return False
