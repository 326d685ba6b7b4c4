"""Controllable stand-ins for the process-tree and machine meters."""

import os
import time

from mlflow_wattsup.meters.proctree import MachineMeter, TreeReading

CLK_TCK = os.sysconf("SC_CLK_TCK")


class FakeTree:
    def __init__(self, pids=(12345,)):
        self.cpu_s = 0.0
        self.rss_bytes = 0
        self.pids = tuple(pids)

    def read(self):
        return TreeReading(time.monotonic(), self.cpu_s, self.rss_bytes, self.pids)

    def add_reaped(self, s):
        self.cpu_s += s


class FakeMachine(MachineMeter):
    """/proc/stat and /proc/meminfo files the test rewrites."""

    def __init__(self, tmp_path, mem_total=16 * 2**30):
        tmp_path.mkdir(parents=True, exist_ok=True)
        self.stat = tmp_path / "stat"
        self.meminfo = tmp_path / "meminfo"
        self.busy_s = 1000.0
        self.mem_total = mem_total
        self.mem_used = 4 * 2**30
        self.write()
        super().__init__(str(self.stat), str(self.meminfo))

    def write(self):
        busy = int(round(self.busy_s * CLK_TCK))
        # user nice system idle iowait irq softirq steal guest guest_nice
        self.stat.write_text(f"cpu  {busy - 30} 10 10 99999 5 4 3 3 0 0\ncpu0 1 2 3 4\n")
        self.meminfo.write_text(
            f"MemTotal:       {self.mem_total // 1024} kB\nMemFree:        1 kB\n"
            f"MemAvailable:   {(self.mem_total - self.mem_used) // 1024} kB\n"
        )

    def add_busy(self, s):
        self.busy_s += s
        self.write()
