"""A fake cgroup filesystem with the real layout (see mlflow_wattsup.meters.cgroup): a mount table
(``mountinfo``), the mounted hierarchies under a temp folder, and ``/proc/PID/cgroup`` files."""

from __future__ import annotations

from pathlib import Path


class FakeCgroups:
    """``version``: ``v1`` (cpuacct and memory controllers, and a named systemd hierarchy), ``v2``
    (one unified hierarchy, memory enabled), or ``hybrid`` (v1 controllers plus an unified tree
    without controllers, as on this project's machines). ``mount_root``: the cgroup the mounts
    show as their root (``/`` on a host)."""

    def __init__(self, root: Path, version: str = "hybrid", mount_root: str = "/"):
        self.root = Path(root)
        self.version = version
        self.proc = self.root / "proc"
        self.fs = self.root / "sys" / "fs" / "cgroup"
        self.mountinfo = self.root / "mountinfo"
        self.mount_root = mount_root
        lines = []
        n = 30
        if version in ("v1", "hybrid"):
            for ctl in ("cpu,cpuacct", "memory", "name=systemd"):
                point = self.fs / ctl.replace("name=", "")
                point.mkdir(parents=True, exist_ok=True)
                lines.append(f"{n} 25 0:{n} {mount_root} {point} rw,nosuid - cgroup cgroup rw,{ctl}")
                n += 1
        if version in ("v2", "hybrid"):
            point = self.fs / "unified" if version == "hybrid" else self.fs
            point.mkdir(parents=True, exist_ok=True)
            lines.append(f"{n} 25 0:{n} {mount_root} {point} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate")
        lines.append(f"{n + 1} 25 0:{n + 1} / {self.root}/tmp rw - tmpfs tmpfs rw")
        self.mountinfo.write_text("\n".join(lines) + "\n")

    def _hierarchies(self) -> list[str]:
        v1 = ["cpu,cpuacct", "memory", "systemd"] if self.version in ("v1", "hybrid") else []
        return v1 + (["v2"] if self.version in ("v2", "hybrid") else [])

    def _dir(self, hierarchy: str, path: str) -> Path:
        rel = path[len(self.mount_root.rstrip("/")) :].strip("/")
        if hierarchy == "v2":
            base = self.fs / "unified" if self.version == "hybrid" else self.fs
        else:
            base = self.fs / hierarchy
        return base / rel

    def add(self, pid: int, path: str, *, cpu_s: float = 0.0, rss: int = 0, mapped: int = 0) -> None:
        """Process ``pid`` in cgroup ``path`` (every hierarchy), with its counters."""
        lines = []
        if self.version in ("v1", "hybrid"):
            lines += [f"12:memory:{path}", f"4:cpu,cpuacct:{path}", f"1:name=systemd:{path}"]
        if self.version in ("v2", "hybrid"):
            lines.append(f"0::{path}")
        (self.proc / str(pid)).mkdir(parents=True, exist_ok=True)
        (self.proc / str(pid) / "cgroup").write_text("\n".join(lines) + "\n")
        for h in self._hierarchies():
            self._dir(h, path).mkdir(parents=True, exist_ok=True)
        self.set(path, cpu_s=cpu_s, rss=rss, mapped=mapped)

    def set(self, path: str, *, cpu_s: float, rss: int = 0, mapped: int = 0) -> None:
        """Write the counters in place (kept-open files see the new values)."""
        if self.version in ("v1", "hybrid"):
            _rewrite(self._dir("cpu,cpuacct", path) / "cpuacct.usage", f"{int(round(cpu_s * 1e9))}\n")
            _rewrite(
                self._dir("memory", path) / "memory.stat",
                f"cache 999\nrss {rss}\nmapped_file {mapped}\ntotal_cache 4096\ntotal_rss {rss}\n"
                f"total_mapped_file {mapped}\ntotal_swap 0\n",
            )
        if self.version in ("v2", "hybrid"):
            usec = int(round(cpu_s * 1e6))
            _rewrite(
                self._dir("v2", path) / "cpu.stat",
                f"usage_usec {usec}\nuser_usec {usec * 3 // 4}\nsystem_usec {usec // 4}\n",
            )
            if self.version == "v2":  # the hybrid's unified tree has no memory controller
                _rewrite(
                    self._dir("v2", path) / "memory.stat",
                    f"anon {rss}\nfile 8192\nkernel 100\nfile_mapped {mapped}\nshmem 0\n",
                )

    def remove(self, path: str) -> None:
        """The runtime removed the cgroup (the container ended)."""
        import shutil

        for h in self._hierarchies():
            d = self._dir(h, path)
            if d.exists() and d != self._dir(h, self.mount_root):
                shutil.rmtree(d)


def _rewrite(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        f.seek(0)
        f.truncate()
        f.write(text)
