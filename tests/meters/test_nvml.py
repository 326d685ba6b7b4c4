import os

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


def test_real_nvml_if_present():
    m = nvml.open_nvml()
    if m is None:
        pytest.skip("no NVIDIA GPU/driver here")
    assert m.read().energy_j >= 0


test_real_nvml_if_present = pytest.mark.gpu(test_real_nvml_if_present)
