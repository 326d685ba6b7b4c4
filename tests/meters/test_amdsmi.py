"""AMD GPUs through amdsmi, against a fake written from amdsmi's API (tests/support/fakes/amdsmi.py)."""

import os
import sys
import textwrap
import time

import pytest
from support.fakes.amdsmi import FakeAmdGpu, FakeAmdsmi, mi250x_pair, proc
from support.fakes.procfs import FakeMachine, FakeTree

from mlflow_wattsup.meters import amdsmi
from mlflow_wattsup.meters.estimator import CpuPowerModel
from mlflow_wattsup.tracking.tracker import Tracker


@pytest.fixture(autouse=True)
def no_visibility_env(monkeypatch):
    for name in ("ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)


def mi300x(n=1, **kw):
    # MI300X reports current_socket_power but not average_socket_power (N/A)
    return [
        FakeAmdGpu("AMD Instinct MI300X", f"GPU-300{i}", 500.0, average=False, power_cap_w=750.0, **kw)
        for i in range(n)
    ]


def test_energy_counter_is_accumulator_times_resolution(monkeypatch):
    fake = FakeAmdsmi(mi300x())
    t = [100.0]
    monkeypatch.setattr(amdsmi.time, "monotonic", lambda: t[0])
    m = amdsmi.open_amdsmi(fake)
    assert m.names == ["AMD Instinct MI300X"] and m.source == "amdsmi-energy"
    assert m.driver_version == "6.10.5"
    for _ in range(10):
        t[0] += 1.0
        fake.advance(1.0)
        r = m.read()
    g = r.gpus[0]
    assert g.counter_j == pytest.approx(5000.0, rel=1e-5)  # 500 W x 10 s, counted in 15.3 uJ steps
    assert g.energy_j == g.counter_j
    assert g.power_w == 500.0  # current_socket_power (average is N/A on MI300X)
    assert g.power_energy_j == pytest.approx(5000.0)
    assert g.max_power_w == 750.0  # power_cap is in microwatts


def test_counter_under_the_old_key_before_amdsmi_6_2_1():
    gpu = FakeAmdGpu("AMD Instinct MI100", "GPU-100", 200.0, old_energy_key=True)
    fake = FakeAmdsmi([gpu])
    m = amdsmi.open_amdsmi(fake)
    gpu.add_energy_j(30.0)
    assert m.read().gpus[0].counter_j == pytest.approx(30.0, rel=1e-5)


def test_mi250x_without_current_power_uses_average_power(monkeypatch):
    even, _ = mi250x_pair()
    fake = FakeAmdsmi([even])
    t = [0.0]
    monkeypatch.setattr(amdsmi.time, "monotonic", lambda: t[0])
    m = amdsmi.open_amdsmi(fake)
    t[0] += 2.0
    r = m.read().gpus[0]
    assert r.power_w == 300.0 and r.power_energy_j == pytest.approx(600.0)


def test_vm_guest_without_counter_is_power_only():
    fake = FakeAmdsmi(mi300x(counter=False))
    m = amdsmi.open_amdsmi(fake)
    assert m.source == "amdsmi-power"
    assert m.read().gpus[0].counter_j is None


def test_mi250x_die_pair_is_metered_once_through_the_even_die():
    fake = FakeAmdsmi(mi250x_pair())
    m = amdsmi.open_amdsmi(fake)
    assert m.names == ["AMD Instinct MI250X"]  # two dies, one device
    assert "two dies" in m.notes[0] and "together on GPU 0" in m.notes[0]


def test_only_the_odd_mi250x_die_visible_reads_the_pair_through_the_even_die(monkeypatch):
    even, odd = mi250x_pair()
    odd.procs = [proc(os.getpid(), gfx_ns=0, vram_bytes=1)]
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "1")
    fake = FakeAmdsmi([even, odd])
    m = amdsmi.open_amdsmi(fake)
    fake.advance(1.0)
    r = m.read(pids=[os.getpid()]).gpus[0]
    assert r.index == 0 and r.counter_j == pytest.approx(300.0, rel=1e-5)
    assert r.share == 1.0  # the odd die's process list counts


@pytest.mark.parametrize(
    "env, expected",
    [
        ({}, [0, 1, 2, 3]),
        ({"HIP_VISIBLE_DEVICES": "2,0"}, [2, 0]),
        ({"CUDA_VISIBLE_DEVICES": "3"}, [3]),  # HIP honours CUDA's variable when its own is unset
        ({"HIP_VISIBLE_DEVICES": "1", "CUDA_VISIBLE_DEVICES": "3"}, [1]),
        ({"ROCR_VISIBLE_DEVICES": "1,2,3", "HIP_VISIBLE_DEVICES": "0"}, [1]),  # HIP indexes ROCr's list
        ({"ROCR_VISIBLE_DEVICES": "GPU-cccc,0"}, [2, 0]),
        ({"ROCR_VISIBLE_DEVICES": ""}, []),
        ({"HIP_VISIBLE_DEVICES": "0,9,1"}, [0]),  # an invalid entry ends the list
    ],
)
def test_rocr_then_hip_visible_devices(env, expected):
    uuids = ["GPU-aaaa1111", "GPU-bbbb2222", "GPU-cccc3333", "GPU-dddd4444"]
    assert amdsmi.visible_hip_indices(4, uuids, env) == expected


def test_hip_order_follows_hip_id_not_amdsmi_order(monkeypatch):
    a = FakeAmdGpu("AMD Instinct MI300X", "GPU-a", 100.0, hip_id=1)
    b = FakeAmdGpu("AMD Instinct MI325X", "GPU-b", 100.0, hip_id=0)
    monkeypatch.setenv("HIP_VISIBLE_DEVICES", "0")
    assert amdsmi.open_amdsmi(FakeAmdsmi([a, b])).names == ["AMD Instinct MI325X"]


def test_empty_visibility_hides_every_gpu(monkeypatch):
    monkeypatch.setenv("ROCR_VISIBLE_DEVICES", "")
    fake = FakeAmdsmi(mi300x())
    assert amdsmi.open_amdsmi(fake) is None
    assert fake.shutdown_calls == 1


def test_share_from_gfx_engine_time_since_the_last_read():
    me, other = os.getpid(), os.getppid()
    [gpu] = mi300x()
    gpu.procs = [proc(me, gfx_ns=1_000), proc(other, gfx_ns=5_000)]
    m = amdsmi.open_amdsmi(FakeAmdsmi([gpu]))  # opening primes the engine times
    gpu.procs = [proc(me, gfx_ns=1_000 + 300), proc(other, gfx_ns=5_000 + 900)]
    assert m.read(pids=[me]).gpus[0].share == pytest.approx(0.25)


def test_share_by_vram_when_no_engine_time_moved_and_none_when_pids_are_foreign():
    me, other = os.getpid(), os.getppid()
    [gpu] = mi300x()
    gpu.procs = [proc(me, vram_bytes=3), proc(other, vram_bytes=1)]
    m = amdsmi.open_amdsmi(FakeAmdsmi([gpu]))
    assert m.read(pids=[me]).gpus[0].share == pytest.approx(0.75)
    gpu.procs = []
    assert m.read(pids=[me]).gpus[0].share == 0.0
    gpu.procs = [proc(4_000_000)]  # beyond pid_max: a container's PID namespace
    assert m.read(pids=[me]).gpus[0].share is None


def test_no_driver_is_none_not_an_error(monkeypatch):
    monkeypatch.setattr(amdsmi, "KFD_DEVICE", "/nonexistent/kfd")
    assert amdsmi.open_amdsmi(FakeAmdsmi(mi300x(), init_error=34)) is None  # driver not loaded
    assert amdsmi.open_amdsmi() is None  # no /dev/kfd: amdsmi is not even imported


def test_library_older_than_the_gpu_says_what_to_do():
    with pytest.raises(amdsmi.AmdsmiUnavailable, match="older than the GPU.*MI300X.*newer ROCm"):
        amdsmi.open_amdsmi(FakeAmdsmi(mi300x(), init_error=43))


def test_amdsmi_without_rocm_library_is_said_in_one_line_and_prints_nothing(tmp_path, monkeypatch, capfd):
    # amdsmi 7.0.2 without libamd_smi.so: prints two lines to stdout, then raises KeyError
    pkg = tmp_path / "amdsmi"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        textwrap.dedent(
            """
            print("/opt/rocm/lib/libamd_smi.so: cannot open shared object file: No such file or directory")
            print("Unable to find libamd_smi.so library try installing amd-smi-lib from your package manager")
            _libraries = {}
            _libraries["libamd_smi.so"].amdsmi_free_name_value_pairs
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "amdsmi", raising=False)
    kfd = tmp_path / "kfd"
    kfd.touch()
    monkeypatch.setattr(amdsmi, "KFD_DEVICE", str(kfd))
    with pytest.raises(amdsmi.AmdsmiUnavailable) as info:
        amdsmi.open_amdsmi()
    assert "KeyError" in str(info.value) and "\n" not in str(info.value)
    assert capfd.readouterr().out == ""


# -- through the tracker: sources, attribution, faulty counters ---------------------------------

W = CpuPowerModel(5.0, "user-w-per-thread")


def tracked(tmp_path, fake):
    tree = FakeTree(pids=(os.getpid(),))
    t = Tracker(
        tree, interval_s=3600.0, machine=FakeMachine(tmp_path), cpu_model=W, rapl=False, nvml=False,
        amdsmi=fake, stall_s=0.2,
    )  # fmt: skip
    return t.start(), tree


def test_tracker_attributes_amd_energy_by_share_and_tags_amdsmi_energy(tmp_path):
    me = os.getpid()
    [gpu] = mi300x()
    gpu.procs = [proc(me, gfx_ns=0), proc(os.getppid(), gfx_ns=0)]
    fake = FakeAmdsmi([gpu])
    t, _ = tracked(tmp_path, fake)
    fake.advance(1.0)  # 500 J (more at once would be beyond what the 750 W cap allows)
    gpu.procs = [proc(me, gfx_ns=3_000_000), proc(os.getppid(), gfx_ns=1_000_000)]
    t.sample()
    tot = t.stop()
    assert tot.sources.gpu == "amdsmi-energy" and "gpu" not in tot.warnings
    assert tot.machine_energy.gpu_j == pytest.approx(500.0, rel=1e-5)
    assert tot.energy.gpu_j == pytest.approx(500.0 * 0.75, rel=1e-5)


@pytest.mark.parametrize(
    "fault, said",
    [
        ("backwards", "backwards"),
        ("jump", "power cap"),  # ROCm/amdsmi#38: the counter runs far faster than the board can draw
        ("frozen", "did not move"),
    ],
)
def test_faulty_amd_counter_falls_back_to_power_polling(tmp_path, fault, said):
    [gpu] = mi300x()
    gpu.procs = [proc(os.getpid(), vram_bytes=1)]
    fake = FakeAmdsmi([gpu])
    t, tree = tracked(tmp_path, fake)
    time.sleep(0.1)
    fake.advance(0.1)
    t.sample()
    if fault == "backwards":
        gpu.energy_counts -= 10_000_000
    elif fault == "jump":
        gpu.add_energy_j(750.0 * 1000)  # 750 kJ in a tenth of a second from a 750 W board
    else:
        gpu.frozen = True
    for _ in range(3):
        time.sleep(0.1)
        fake.advance(0.1)
        t.sample()
    tot = t.stop()
    assert tot.sources.gpu == "amdsmi-power"
    assert said in tot.warnings["gpu"] and "integrated power" in tot.warnings["gpu"]
    assert tot.machine_energy.gpu_j == pytest.approx(500.0 * tot.duration_s, rel=0.05)


def test_tracker_says_why_an_amd_gpu_cannot_be_read(tmp_path):
    fake = FakeAmdsmi(mi300x(), init_error=43)
    t, _ = tracked(tmp_path, fake)
    assert t.gpu is None and any("newer ROCm" in n for n in t.notes)
    assert t.stop().sources.gpu == "none"
