import os
import time

import pytest
from support.fakes.nvml import FakeGpu, FakeNvml
from support.fakes.procfs import FakeMachine, FakeTree
from support.fakes.sysfs import two_socket_tree

from mlflow_wattsup.meters.estimator import CpuPowerModel, RamPowerModel
from mlflow_wattsup.meters.rapl import open_rapl
from mlflow_wattsup.tracking.tracker import Tracker

W = CpuPowerModel(5.0, "user-w-per-thread")
HOUR = 3600.0  # an interval so long the sampler thread never fires: the test drives sample()


def make(tmp_path, **kw):
    tree = kw.pop("tree", FakeTree())
    machine = kw.pop("machine", FakeMachine(tmp_path))
    kw.setdefault("rapl", False)
    kw.setdefault("nvml", False)
    t = Tracker(tree, interval_s=HOUR, machine=machine, cpu_model=W, **kw)
    return t.start(), tree, machine


def test_machine_busy_parsing(tmp_path):
    m = FakeMachine(tmp_path)
    r = m.read()
    assert r.busy_cpu_s == pytest.approx(1000.0)
    assert r.mem_used_bytes == 4 * 2**30 and r.mem_total_bytes == 16 * 2**30


def test_rapl_energy_is_attributed_by_cpu_share(tmp_path):
    fake = two_socket_tree(tmp_path / "rapl")
    t, tree, machine = make(tmp_path, rapl=open_rapl(tmp_path / "rapl"))
    assert t.sources.cpu == "rapl" and t.sources.ram == "rapl"
    # interval 1: the tree used 1 of the machine's 4 busy CPU-seconds; packages used 40 J
    tree.cpu_s += 1.0
    machine.add_busy(4.0)
    fake.add("intel-rapl:0", 25_000_000)
    fake.add("intel-rapl:1", 15_000_000)
    tree.rss_bytes = 2**30  # 1 GiB of the 4 GiB in use
    fake.add("intel-rapl:0:1", 8_000_000)
    t.sample()
    # interval 2: the tree alone was busy (share clamps at 1)
    tree.cpu_s += 2.0
    machine.add_busy(1.99)
    fake.add("intel-rapl:0", 10_000_000)
    t.sample()
    tot = t.stop()
    assert tot.machine_energy.cpu_j == pytest.approx(50.0)
    assert tot.energy.cpu_j == pytest.approx(40.0 * 0.25 + 10.0, rel=1e-3)
    # DRAM: machine 8 J; run share = mean rss / mean used over the interval = 0.5 GiB / 4 GiB
    assert tot.machine_energy.ram_j == pytest.approx(8.0)
    assert tot.energy.ram_j == pytest.approx(8.0 * 0.5 / 4.0)
    assert tot.cpu_s == pytest.approx(3.0)


def test_estimate_is_exact_whatever_the_number_of_samples(tmp_path):
    results = []
    for n in (1, 10):
        t, tree, machine = make(tmp_path / str(n))
        for _ in range(n):
            tree.cpu_s += 6.0 / n
            machine.add_busy(9.0 / n)
            t.sample()
        results.append(t.stop())
    for tot in results:
        assert tot.energy.cpu_j == pytest.approx(5.0 * 6.0)
        assert tot.machine_energy.cpu_j == pytest.approx(5.0 * 9.0)
        assert tot.sources.cpu == "estimate"


def test_estimated_ram_uses_w_per_gb_of_tree_memory(tmp_path):
    tree = FakeTree()
    tree.rss_bytes = 2_000_000_000  # constant 2 GB from the start
    t, tree, machine = make(tmp_path, tree=tree, ram_model=RamPowerModel(0.5))
    time.sleep(0.2)
    t.sample()
    tot = t.stop()
    assert tot.energy.ram_j == pytest.approx(0.5 * 2.0 * tot.duration_s, rel=0.05)
    assert tot.sources.ram == "estimate"


def test_gpu_energy_times_process_share(tmp_path):
    g0 = FakeGpu("A100", "GPU-a", 200.0)
    g1 = FakeGpu("A100", "GPU-b", 100.0)
    fake = FakeNvml([g0, g1])
    ours = os.getpid()  # a PID that exists here, so NVML's PIDs are mappable to our tree
    tree = FakeTree(pids=(ours,))
    t, _, _ = make(tmp_path, tree=tree, nvml=fake)
    g0.procs = [(ours, 10), (999_999_999, 30)]  # a quarter of GPU 0's memory is ours
    g1.procs = []  # GPU 1 idle: not ours
    fake.advance(10.0)
    t.sample()
    tot = t.stop()
    assert tot.machine_energy.gpu_j == pytest.approx(3000.0)
    assert tot.energy.gpu_j == pytest.approx(2000.0 * 0.25)
    assert tot.sources.gpu == "nvml-energy" and tot.sources.attribution_gpu == "process"


def test_gpu_whole_device_when_pids_cannot_be_mapped(tmp_path):
    g0 = FakeGpu("H100", "GPU-a", 300.0)
    g0.procs = [(4_000_000, 1)]
    fake = FakeNvml([g0])
    t, _, _ = make(tmp_path, nvml=fake)
    fake.advance(2.0)
    t.sample()
    tot = t.stop()
    assert tot.energy.gpu_j == pytest.approx(600.0)
    assert tot.sources.attribution_gpu == "device"


def test_rapl_vanishing_mid_run_falls_back_and_warns_once(tmp_path):
    fake = two_socket_tree(tmp_path / "rapl")
    t, tree, machine = make(tmp_path, rapl=open_rapl(tmp_path / "rapl"))
    tree.cpu_s += 1.0
    machine.add_busy(1.0)
    fake.add("intel-rapl:0", 7_000_000)
    t.sample()
    fake.paths["intel-rapl:0"].write_text("gone\n")  # the counter stops making sense
    tree.cpu_s += 2.0
    machine.add_busy(2.0)
    t.sample()
    t.sample()
    tot = t.stop()
    assert tot.sources.cpu == "rapl+estimate"
    assert list(tot.warnings) == ["cpu"] and "RAPL read failed" in tot.warnings["cpu"]
    assert tot.energy.cpu_j == pytest.approx(7.0 + 5.0 * 2.0)


def test_nvml_failure_mid_run_keeps_measuring_cpu(tmp_path):
    g0 = FakeGpu("A100", "GPU-a", 100.0)
    fake = FakeNvml([g0])
    t, tree, machine = make(tmp_path, nvml=fake)
    fake.advance(1.0)
    t.sample()
    g0.fail = True
    tree.cpu_s += 1.0
    machine.add_busy(1.0)
    t.sample()
    tot = t.stop()
    assert "gpu" in tot.warnings and tot.energy.cpu_j == pytest.approx(5.0)
    assert tot.machine_energy.gpu_j == pytest.approx(100.0)


def test_nested_stages_and_log_stages(tmp_path):
    t, tree, machine = make(tmp_path)
    with t.stage("autorecon1"):
        tree.cpu_s += 1.0
        with t.stage("skull strip"):
            tree.cpu_s += 2.0
    with t.stage("autorecon1"):
        tree.cpu_s += 0.5
    tree.cpu_s += 4.0
    t.sample()
    tot = t.stop()
    st = {s.name: s for s in t.stages}
    assert set(st) == {"autorecon1", "autorecon1.skull_strip"}
    assert st["autorecon1"].count == 2
    assert st["autorecon1"].energy.cpu_j == pytest.approx(5.0 * 3.5)
    assert st["autorecon1.skull_strip"].energy.cpu_j == pytest.approx(10.0)
    # a stage known only from timestamps (a pipeline's log) interpolates the cumulative energy
    whole = t.add_stage("whole", 0.0, tot.duration_s + 1)
    assert whole.energy.cpu_j == pytest.approx(tot.energy.cpu_j)
    with pytest.raises(ValueError):
        t.add_stage("backwards", 2.0, 1.0)


def test_sampler_thread_emits_strictly_increasing_steps(tmp_path):
    samples = []
    t = Tracker(
        FakeTree(),
        interval_s=0.25,
        machine=FakeMachine(tmp_path),
        rapl=False,
        nvml=False,
        cpu_model=W,
        on_sample=samples.append,
    ).start()
    deadline = time.monotonic() + 30
    while len(samples) < 2:  # two from the sampler thread (at most one a second), then stop's
        assert time.monotonic() < deadline, f"the sampler thread emitted {len(samples)} samples in 30 s"
        time.sleep(0.05)
    t.stop()
    steps = [s.step for s in samples]
    assert len(steps) >= 3 and steps == sorted(set(steps))
    assert all(s.power_w >= 0 for s in samples)


def test_real_process_tree_counts_exited_children():
    import subprocess
    import sys

    t = Tracker(interval_s=HOUR, rapl=False, nvml=False, cpu_model=W).start()
    for _ in range(3):
        subprocess.run([sys.executable, "-c", "sum(range(3 * 10**6))"], check=True)
    tot = t.stop()
    # three children of ~0.1 s each, all exited before stop(): counted through cutime
    assert tot.cpu_s > 0.15
