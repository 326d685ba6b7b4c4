"""ProcessTreeMeter with attached cgroups (containers) and without our own helper processes."""

import os
import subprocess
import sys
import time

import pytest

from mlflow_wattsup.meters.cgroup import CgroupReading
from mlflow_wattsup.meters.proctree import ProcessTreeMeter


class Source:
    def __init__(self):
        self.reading = CgroupReading(0.0, 0)

    def read(self):
        return self.reading


def test_attached_cgroup_adds_cpu_and_memory_and_keeps_its_cpu_once_gone():
    tree = ProcessTreeMeter()
    src = Source()
    tree.attach("docker:abc", src, ("/docker/abc",))
    src.reading = CgroupReading(2.5, 100 * 2**20)
    r = tree.read()
    assert r.container_cpu_s == 2.5 and r.cpu_s >= 2.5
    assert r.rss_bytes >= 100 * 2**20 and r.cgroups == ("/docker/abc",)
    src.reading = CgroupReading(3.0, 0, gone=True)
    r = tree.read()
    assert r.container_cpu_s == 3.0 and r.cgroups == ()  # no processes left to match on a GPU
    tree.attach("docker:abc", Source())  # attaching the same container again changes nothing
    assert tree.read().container_cpu_s == 3.0


BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\ntime.sleep(30)"


def test_our_own_helpers_are_not_the_commands():
    # the command runs in a process group of its own; a helper of ours (MLflow's git, a runtime's
    # inspect) stays in ours and must not count as the command's
    tree = ProcessTreeMeter(children_of=os.getpid())
    helper = subprocess.Popen([sys.executable, "-c", BURN])
    command = subprocess.Popen([sys.executable, "-c", BURN], process_group=0)
    try:
        deadline = time.monotonic() + 30
        while tree.read().cpu_s < 0.4 and time.monotonic() < deadline:
            time.sleep(0.1)
        r = tree.read()
        assert command.pid in r.pids and helper.pid not in r.pids
        assert r.cpu_s == pytest.approx(0.45, abs=0.15)  # the command's 0.4 s and its start, not 0.8
    finally:
        for p in (helper, command):
            p.kill()
            p.wait()
