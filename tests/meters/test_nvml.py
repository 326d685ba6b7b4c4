import os
import time

import pytest
from support.fakes.nvml import FakeGpu, FakeNvml

from mlflow_wattsup.meters import nvml


def gpus():
    return [
        FakeGpu("NVIDIA A100-SXM4-40GB", "GPU-aaaa-1111", power_w=250.0, counter=True),
        FakeGpu("Tesla P100-PCIE-16GB", "GPU-bbbb-2222", power_w=100.0, counter=False),
    ]


def test_energy_counter_and_power_only_gpu(monkeypatch):
    fake = FakeNvml(gpus())
    t = [100.0]
    monkeypatch.setattr(nvml.time, "monotonic", lambda: t[0])
    m = nvml.open_nvml(fake)
    assert m.names == ["NVIDIA A100-SXM4-40GB", "Tesla P100-PCIE-16GB"]
    assert m.source == "nvml-power"  # not every GPU has a counter
    for _ in range(10):
        t[0] += 1.0
        fake.advance(1.0)
        r = m.read()
    assert r.gpus[0].energy_j == pytest.approx(2500.0)  # counter: 250 W x 10 s
    assert r.gpus[1].energy_j == pytest.approx(1000.0)  # integrated power: 100 W x 10 s
    assert r.energy_j == pytest.approx(3500.0)


def test_counter_only_source_is_nvml_energy():
    m = nvml.open_nvml(FakeNvml([gpus()[0]]))
    assert m.source == "nvml-energy"


def test_no_driver_is_none_not_error():
    assert nvml.open_nvml(FakeNvml(gpus(), init_error=True)) is None


def test_no_devices_is_none():
    assert nvml.open_nvml(FakeNvml([])) is None


@pytest.mark.parametrize(
    "env, expected",
    [
        (None, [0, 1, 2]),
        ("", []),
        ("2,0", [2, 0]),
        ("1,-1,0", [1]),  # an invalid entry ends the list, as in CUDA
        ("1,7", [1]),
        ("GPU-cccc", [2]),
        ("GPU-aaaa-1111,1", [0, 1]),
    ],
)
def test_cuda_visible_devices(env, expected):
    uuids = ["GPU-aaaa-1111", "GPU-bbbb-2222", "GPU-cccc-3333"]
    assert nvml.visible_indices(3, uuids, env) == expected


def test_respects_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    m = nvml.open_nvml(FakeNvml(gpus()))
    assert m.names == ["Tesla P100-PCIE-16GB"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert nvml.open_nvml(FakeNvml(gpus())) is None


def test_share_from_process_utilisation():
    me, other = os.getpid(), os.getppid()
    g = gpus()[0]
    g.util = [(me, 30), (other, 90)]
    m = nvml.open_nvml(FakeNvml([g]))
    assert m.read(pids=[me]).gpus[0].share == pytest.approx(0.25)


def test_share_from_running_processes_memory_when_no_utilisation():
    me, other = os.getpid(), os.getppid()
    g = gpus()[0]
    g.procs = [(me, 3 * 2**30), (other, 1 * 2**30)]
    m = nvml.open_nvml(FakeNvml([g]))
    assert m.read(pids=[me]).gpus[0].share == pytest.approx(0.75)
    g.procs = [(me, 1)]
    assert m.read(pids=[me]).gpus[0].share == 1.0
    g.procs = [(other, 1)]
    assert m.read(pids=[me]).gpus[0].share == 0.0


def test_share_unknown_when_pids_are_from_another_namespace():
    g = gpus()[0]
    g.procs = [(4_000_000, 1)]  # beyond pid_max: not a PID of this namespace
    m = nvml.open_nvml(FakeNvml([g]))
    assert m.read(pids=[os.getpid()]).gpus[0].share is None


@pytest.mark.gpu
def test_real_nvml_moves_plausibly_and_the_tracker_trusts_it(tmp_path):
    """On a real GPU: every GPU reports a counter or power; over 2 s a powered GPU's energy rises,
    by no more than its power limit allows; power readings are within the limit; and a tracker
    over those 2 s neither warns nor falls back (no stall, jump or silent zero)."""
    from support.fakes.procfs import FakeMachine, FakeTree

    from mlflow_wattsup.meters.estimator import CpuPowerModel
    from mlflow_wattsup.tracking.tracker import Tracker

    m = nvml.open_nvml()
    if m is None:
        pytest.skip("no NVIDIA GPU/driver here")
    a = m.read()
    time.sleep(2.0)
    b = m.read()
    dt = b.monotonic_s - a.monotonic_s
    for g0, g1 in zip(a.gpus, b.gpus, strict=True):
        assert g1.counter_j is not None or g1.power_energy_j is not None, (
            f"GPU {g1.index}: no counter, no power"
        )
        delta_j = g1.energy_j - g0.energy_j
        assert delta_j > 0, f"GPU {g1.index}: energy did not move in {dt:.1f} s"
        if g1.max_power_w:
            assert delta_j <= g1.max_power_w * 1.5 * (dt + 1.0), f"GPU {g1.index}: {delta_j} J in {dt:.1f} s"
            assert g1.power_w is None or 0 < g1.power_w <= 2 * g1.max_power_w
    m.close()
    t = Tracker(
        FakeTree(pids=(os.getpid(),)), interval_s=0.5, machine=FakeMachine(tmp_path),
        cpu_model=CpuPowerModel(5.0, "user-w-per-thread"), rapl=False, slurm=False,
    ).start()  # fmt: skip
    time.sleep(2.5)
    tot = t.stop()
    assert tot.sources.gpu in ("nvml-energy", "nvml-power") and "gpu" not in tot.warnings, tot
    assert tot.machine_energy.gpu_j > 0
