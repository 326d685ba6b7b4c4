"""CPU time and memory of one control group (a container's), cgroup v1 and v2.

A container runtime puts every container in a cgroup of its own, and the kernel counts that
cgroup's CPU time for every process that ever ran in it, exited ones included:

cgroup v1
    ``cpuacct.usage`` of the ``cpuacct`` controller: nanoseconds (user + system).
    Memory: ``memory.stat`` of the ``memory`` controller, ``total_rss + total_mapped_file``.
cgroup v2
    ``cpu.stat`` ``usage_usec``: microseconds (user + system); present in every v2 cgroup, with or
    without the ``cpu`` controller. Memory: ``memory.stat`` ``anon + file_mapped`` (only where the
    ``memory`` controller is enabled for the cgroup).

Memory is the resident figure (anonymous plus mapped file pages), what ``/proc/PID/stat``'s RSS
counts for a process; the page cache the container filled is not in it.

Where a cgroup is in both (a v1/v2 hybrid host puts a container in every v1 controller and in the
unified tree), v1's ``cpuacct`` is read unless ``prefer="v2"``.

Where the files are: ``/proc/PID/cgroup`` names the cgroup of a process in each hierarchy
(``N:controllers:/path``; ``0::/path`` is v2) and ``/proc/self/mountinfo`` where each hierarchy is
mounted (and from which of its cgroups: the mount's root). Both paths are parameters, so tests can
build a fake tree.

When the runtime removes the cgroup (it does when the container stops: measured with Docker 20.10,
about 10 ms after the container's first process exits, with or without ``--rm``), its files fail
(``ENOENT``; ``ENODEV`` for one opened before): :meth:`CgroupMeter.read` then returns the last
reading, marked ``gone``. Whoever needs the final figure reads when the container's first
process exits (``tracking/containers.py`` waits on a pidfd for it).
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

V1 = "v1"
V2 = "v2"


class CgroupUnavailable(Exception):
    """The cgroup cannot be read here (no such process, hierarchy not mounted, no permission):
    the message says which, in one line."""


@dataclass(frozen=True)
class Mount:
    """One mounted cgroup hierarchy. ``controllers`` empty for v2; ``root`` is the cgroup the mount
    shows (``/`` on a host; a container sees its own cgroup as its root)."""

    version: str
    controllers: frozenset[str]
    root: str
    mountpoint: str


@dataclass(frozen=True)
class CgroupLocation:
    """Where one cgroup's counters are.

    ``path``: the cgroup as ``/proc/PID/cgroup`` names it in the hierarchy the CPU time is read from
    (e.g. ``/docker/<id>``). ``cpu_file``: ``cpuacct.usage`` (v1, ns) or ``cpu.stat`` (v2, µs).
    ``memory_file``: a ``memory.stat`` (v1 or v2 keys), or None. ``paths``: the cgroup's path in
    every hierarchy the process is in (for matching other processes, e.g. NVML's).
    """

    version: str
    path: str
    cpu_file: str
    memory_file: str | None
    paths: frozenset[str]


@dataclass(frozen=True)
class CgroupReading:
    """One cgroup at one instant.

    ``cpu_s``: CPU seconds (user + system) used by every process that ran in the cgroup since it
    was created. ``memory_bytes``: resident memory of its processes now (bytes; 0 once the cgroup is
    gone; None where no memory controller covers it). ``gone``: the cgroup no longer exists and the
    figures are the last ones read.
    """

    cpu_s: float
    memory_bytes: int | None
    gone: bool = False


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/PID/cgroup`` as {controller: path}; the v2 hierarchy under the key ``""``; named v1
    hierarchies as ``name=<name>``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if not controllers:
            out[""] = path
            continue
        for c in controllers.split(","):
            out[c] = path
    return out


def read_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[Mount]:
    """The cgroup hierarchies mounted here (``/proc/self/mountinfo``)."""
    mounts: list[Mount] = []
    try:
        with open(mountinfo) as f:
            lines = f.read().splitlines()
    except OSError:
        return mounts
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3:
            continue
        fstype, super_opts = tail[0], tail[2]
        root, point = _unescape(fields[3]), _unescape(fields[4])
        if fstype == "cgroup2":
            mounts.append(Mount(V2, frozenset(), root, point))
        elif fstype == "cgroup":
            opts = super_opts.split(",")
            ctl = frozenset(
                o for o in opts if o not in ("rw", "ro") and ("=" not in o or o.startswith("name="))
            )
            mounts.append(Mount(V1, ctl, root, point))
    return mounts


def _unescape(s: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")


def _dir(mount: Mount, path: str) -> str | None:
    """The directory of cgroup ``path`` under ``mount``; None if the mount does not show it."""
    root = mount.root.rstrip("/")
    if root and not (path == root or path.startswith(root + "/")):
        return None
    rel = path[len(root) :].lstrip("/")
    return os.path.join(mount.mountpoint, rel) if rel else mount.mountpoint


def locate(
    pid: int,
    *,
    proc_root: str = "/proc",
    mountinfo: str = "/proc/self/mountinfo",
    prefer: str | None = None,
) -> CgroupLocation:
    """The cgroup process ``pid`` is in, and where its counters are. Raises
    :class:`CgroupUnavailable` with the reason."""
    try:
        with open(f"{proc_root}/{pid}/cgroup") as f:
            groups = parse_proc_cgroup(f.read())
    except FileNotFoundError:
        raise CgroupUnavailable(f"process {pid} does not exist here") from None
    except OSError as exc:
        raise CgroupUnavailable(f"cannot read {proc_root}/{pid}/cgroup ({exc.strerror})") from None
    mounts = read_mounts(mountinfo)
    v1_cpu = next((m for m in mounts if m.version == V1 and "cpuacct" in m.controllers), None)
    v1_mem = next((m for m in mounts if m.version == V1 and "memory" in m.controllers), None)
    v2 = next((m for m in mounts if m.version == V2), None)

    cands: list[tuple[str, str, str]] = []  # (version, path, cpu file)
    if v1_cpu is not None and "cpuacct" in groups:
        d = _dir(v1_cpu, groups["cpuacct"])
        if d is not None:
            cands.append((V1, groups["cpuacct"], os.path.join(d, "cpuacct.usage")))
    if v2 is not None and "" in groups:
        d = _dir(v2, groups[""])
        if d is not None:
            cands.append((V2, groups[""], os.path.join(d, "cpu.stat")))
    if prefer is not None:
        cands = [c for c in cands if c[0] == prefer]
    errors = []
    for version, path, cpu_file in cands:
        try:
            _read_cpu_s(version, cpu_file)
        except OSError as exc:
            errors.append(f"{cpu_file}: {exc.strerror}")
            continue
        memory = None
        if v1_mem is not None and "memory" in groups:
            d = _dir(v1_mem, groups["memory"])
            if d is not None and os.path.exists(os.path.join(d, "memory.stat")):
                memory = os.path.join(d, "memory.stat")
        if memory is None and v2 is not None and "" in groups:
            d = _dir(v2, groups[""])
            if d is not None and os.path.exists(os.path.join(d, "memory.stat")):
                memory = os.path.join(d, "memory.stat")
        return CgroupLocation(version, path, cpu_file, memory, frozenset(groups.values()))
    if errors:
        raise CgroupUnavailable(f"cannot read the cgroup of process {pid}: {'; '.join(errors)}")
    want = f"cgroup {prefer}" if prefer else "a cgroup hierarchy with CPU accounting"
    raise CgroupUnavailable(f"process {pid}: {want} is not mounted here (or does not show its cgroup)")


def _read_cpu_s(version: str, path: str) -> float:
    """CPU seconds from ``cpuacct.usage`` (v1, ns) or ``cpu.stat`` ``usage_usec`` (v2, µs)."""
    data = _read_bytes(path)
    if version == V1:
        return int(data) / 1e9
    for line in data.splitlines():
        if line.startswith(b"usage_usec "):
            return int(line.split()[1]) / 1e6
    raise OSError(0, f"no usage_usec in {path}")


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


_MEMORY_KEYS = {V1: (b"total_rss", b"total_mapped_file"), V2: (b"anon", b"file_mapped")}


def read_memory_bytes(path: str) -> int:
    """Resident bytes from a ``memory.stat`` (v1 ``total_rss + total_mapped_file``, v2
    ``anon + file_mapped``; the file's keys say which)."""
    values = {}
    for line in _read_bytes(path).splitlines():
        k, _, v = line.partition(b" ")
        values[k] = v
    keys = _MEMORY_KEYS[V1] if b"total_rss" in values else _MEMORY_KEYS[V2]
    return sum(int(values.get(k, b"0")) for k in keys)


class CgroupMeter:
    """The counters of one cgroup, read on demand (thread-safe).

    Once the cgroup is gone (its files fail: ``ENOENT``, or ``ENODEV`` for a file opened before
    the removal) readings return the last figures, marked ``gone``; CPU seconds never decrease.
    """

    def __init__(self, location: CgroupLocation):
        self.location = location
        self._lock = threading.Lock()
        self._cpu_s = 0.0
        self._memory: int | None = None
        self.gone = False
        self.read()

    def read(self) -> CgroupReading:
        with self._lock:
            if not self.gone:
                try:
                    self._cpu_s = max(self._cpu_s, _read_cpu_s(self.location.version, self.location.cpu_file))
                except (OSError, ValueError, StopIteration):
                    self.gone = True
            if self.gone:
                return CgroupReading(self._cpu_s, 0 if self._memory is not None else None, True)
            if self.location.memory_file is not None:
                try:
                    self._memory = read_memory_bytes(self.location.memory_file)
                except (OSError, ValueError):
                    self._memory = 0
            return CgroupReading(self._cpu_s, self._memory, False)

    def close(self) -> None:
        """Stop reading: later readings return the last figures."""
        with self._lock:
            self.gone = True


def proc_cgroup_paths(pid: int, proc_root: str = "/proc") -> frozenset[str]:
    """The cgroup paths of process ``pid`` in every hierarchy; empty if it cannot be read."""
    try:
        with open(f"{proc_root}/{pid}/cgroup") as f:
            return frozenset(parse_proc_cgroup(f.read()).values())
    except OSError:
        return frozenset()


def within(paths: frozenset[str] | set[str], groups) -> bool:
    """Whether any of ``paths`` is one of the cgroups ``groups`` or below one."""
    for p in paths:
        for g in groups:
            if p == g or p.startswith(g.rstrip("/") + "/"):
                return True
    return False


class RunProcesses:
    """``pid in ours``: one of the run's PIDs, or a process in one of the run's cgroups (a
    container it started; checked once per PID: make one per reading). Used by the GPU meters to
    tell the run's GPU processes."""

    def __init__(self, pids: set[int], cgroups: tuple[str, ...], proc_root: str):
        self.pids = pids
        self.cgroups = cgroups
        self.proc_root = proc_root
        self._seen: dict[int, bool] = {}

    def __contains__(self, pid: int) -> bool:
        if pid in self.pids:
            return True
        if not self.cgroups:
            return False
        if pid not in self._seen:
            self._seen[pid] = within(proc_cgroup_paths(pid, self.proc_root), self.cgroups)
        return self._seen[pid]
