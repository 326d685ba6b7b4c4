"""GPU processes of a container (not the run's descendants) matched by their cgroup."""

import os
import subprocess
import sys

import pytest
from support.fakes.cgroupfs import FakeCgroups
from support.fakes.nvml import FakeGpu, FakeNvml

from mlflow_wattsup.meters import nvml

CONTAINER = "/docker/" + "ab" * 32


@pytest.fixture
def two_processes():
    """Two live processes that are not ours: one 'in the container', one not."""
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]) for _ in range(2)]
    yield [p.pid for p in procs]
    for p in procs:
        p.kill()
        p.wait()


def meter_with(tmp_path, procs, util=()):
    fake = FakeNvml([FakeGpu("NVIDIA H100", "GPU-h100", power_w=300.0, procs=procs, util=list(util))])
    m = nvml.open_nvml(fake)
    cg = FakeCgroups(tmp_path, "hybrid")
    m.proc_root = str(cg.proc)
    return m, cg


def test_container_process_on_the_gpu_is_ours_by_its_cgroup(tmp_path, two_processes):
    inside, outside = two_processes
    m, cg = meter_with(tmp_path, [(inside, 3 * 2**30), (outside, 1 * 2**30)])
    cg.add(inside, CONTAINER + "/sub")  # a cgroup below the container's counts too
    cg.add(outside, "/user.slice/other")
    assert m.read(pids=[os.getpid()], cgroups=[CONTAINER]).gpus[0].share == pytest.approx(0.75)
    assert m.read(pids=[os.getpid()]).gpus[0].share == 0.0  # without the cgroup: not ours
    assert m.read(pids=[os.getpid()], cgroups=["/docker/other"]).gpus[0].share == 0.0


def test_utilisation_samples_matched_by_cgroup_too(tmp_path, two_processes):
    inside, outside = two_processes
    m, cg = meter_with(tmp_path, [], util=[(inside, 60), (outside, 20)])
    cg.add(inside, CONTAINER)
    cg.add(outside, "/")
    assert m.read(pids=[], cgroups=[CONTAINER]).gpus[0].share == pytest.approx(0.75)
