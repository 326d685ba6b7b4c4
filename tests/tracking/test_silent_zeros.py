"""Silent zeros and impossible values: a counter that stands still, runs backwards or jumps is
detected, said once, and the figure falls back to the next source with its tag (issue 22)."""

import os
import time

import pytest
from support.fakes.nvml import FakeGpu, FakeNvml
from support.fakes.procfs import FakeMachine, FakeTree
from support.fakes.sysfs import two_socket_tree

from mlflow_wattsup.meters.estimator import CpuPowerModel
from mlflow_wattsup.meters.rapl import open_rapl
from mlflow_wattsup.tracking.tracker import Tracker

W = CpuPowerModel(5.0, "user-w-per-thread")
HOUR = 3600.0  # the sampler thread never fires: the test drives sample()
STALL_S = 0.2  # a counter still for this long while busy is stalled (5 s by default)


def make(tmp_path, **kw):
    tree = kw.pop("tree", FakeTree(pids=(os.getpid(),)))
    machine = kw.pop("machine", FakeMachine(tmp_path))
    kw.setdefault("rapl", False)
    kw.setdefault("nvml", False)
    kw.setdefault("amdsmi", False)
    t = Tracker(tree, interval_s=HOUR, machine=machine, cpu_model=W, stall_s=STALL_S, **kw)
    return t.start(), tree, machine


def busy_interval(tree, machine, fake=None, seconds=0.12, cpu_s=1.0):
    time.sleep(seconds)
    tree.cpu_s += cpu_s
    machine.add_busy(cpu_s)
    if fake is not None:
        fake.advance(seconds)


def ours(g):
    g.procs = [(os.getpid(), 1)]  # our process is the GPU's only one
    return g


def test_nvml_counter_that_stands_still_falls_back_to_power(tmp_path):
    g = ours(FakeGpu("NVIDIA A100", "GPU-a", 200.0, frozen=True))
    fake = FakeNvml([g])
    t, tree, machine = make(tmp_path, nvml=fake)
    for _ in range(4):
        busy_interval(tree, machine, fake)
        t.sample()
    tot = t.stop()
    # today: 0 J with source nvml-energy, a confident zero
    assert tot.sources.gpu == "nvml-power"
    assert tot.energy.gpu_j == pytest.approx(200.0 * tot.duration_s, rel=0.05)
    assert tot.energy.gpu_j > 0
    assert "did not move" in tot.warnings["gpu"] and "integrated power" in tot.warnings["gpu"]
    assert tot.warnings["gpu"].count("did not move") == 1  # said once


def test_nvml_counter_running_backwards_falls_back_to_power(tmp_path):
    g = ours(FakeGpu("NVIDIA A100", "GPU-a", 100.0))
    fake = FakeNvml([g])
    t, tree, machine = make(tmp_path, nvml=fake)
    busy_interval(tree, machine, fake)
    t.sample()
    g.energy_mj -= 3_000_000  # a driver reload resets the counter
    busy_interval(tree, machine, fake)
    t.sample()
    tot = t.stop()
    assert tot.sources.gpu == "nvml-power"
    assert "backwards" in tot.warnings["gpu"]
    assert 0 < tot.energy.gpu_j == pytest.approx(100.0 * tot.duration_s, rel=0.05)


def test_nvml_counter_jumping_beyond_the_power_cap_falls_back_to_power(tmp_path):
    g = ours(FakeGpu("NVIDIA H100", "GPU-a", 300.0, power_limit_w=700.0))
    fake = FakeNvml([g])
    t, tree, machine = make(tmp_path, nvml=fake)
    busy_interval(tree, machine, fake)
    t.sample()
    g.energy_mj += 2**32  # 4.3 MJ in a tenth of a second: no board draws that
    busy_interval(tree, machine, fake)
    t.sample()
    tot = t.stop()
    assert tot.sources.gpu == "nvml-power"
    assert "power cap" in tot.warnings["gpu"]
    assert tot.energy.gpu_j == pytest.approx(300.0 * tot.duration_s, rel=0.05)


def test_gpu_with_neither_counter_nor_power_is_unmeasured_not_zero(tmp_path):
    g = ours(FakeGpu("GRID A100-4C", "GPU-v", 0.0, counter=False, power=False))  # a vGPU
    t, tree, machine = make(tmp_path, nvml=FakeNvml([g]))
    busy_interval(tree, machine)
    t.sample()
    tot = t.stop()
    assert tot.sources.gpu == "unmeasured"  # today: nvml-power with 0 J
    assert "neither an energy counter nor power" in tot.warnings["gpu"]


def test_gpu_power_reading_zero_while_our_process_runs_on_it_is_unmeasured(tmp_path):
    g = ours(FakeGpu("Tesla K80", "GPU-k", 0.0, counter=False))  # pre-Volta, power reads 0 W
    fake = FakeNvml([g])
    t, tree, machine = make(tmp_path, nvml=fake)
    for _ in range(3):
        busy_interval(tree, machine, fake)
        t.sample()
    tot = t.stop()
    assert tot.sources.gpu == "unmeasured"
    assert "reads 0 W" in tot.warnings["gpu"]


def test_one_still_interval_shorter_than_the_stall_time_is_not_a_stall(tmp_path):
    g = ours(FakeGpu("NVIDIA A100", "GPU-a", 100.0))
    fake = FakeNvml([g])
    t, tree, machine = make(tmp_path, nvml=fake)
    t.sample()  # the counter has not moved yet (the driver updates it in steps)
    fake.advance(1.0)
    t.sample()
    tot = t.stop()
    assert tot.sources.gpu == "nvml-energy" and "gpu" not in tot.warnings
    assert tot.machine_energy.gpu_j == pytest.approx(100.0)


def test_rapl_readable_but_frozen_from_the_start_is_estimated(tmp_path):
    two_socket_tree(tmp_path / "rapl")  # counters exist and read fine, but never move
    t, tree, machine = make(tmp_path, rapl=open_rapl(tmp_path / "rapl"))
    for _ in range(3):
        busy_interval(tree, machine, cpu_s=2.0)
        t.sample()
    tot = t.stop()
    # today: 0 J with source rapl
    assert tot.sources.cpu == "estimate" and tot.sources.ram == "estimate"
    assert tot.energy.cpu_j == pytest.approx(5.0 * 6.0)
    assert "RAPL package counters did not move" in tot.warnings["cpu"]
    assert "RAPL DRAM counters did not move" in tot.warnings["ram"]


def test_rapl_that_freezes_mid_run_is_estimated_from_its_last_movement(tmp_path):
    fake = two_socket_tree(tmp_path / "rapl")
    t, tree, machine = make(tmp_path, rapl=open_rapl(tmp_path / "rapl"))
    busy_interval(tree, machine, cpu_s=1.0)
    fake.add("intel-rapl:0", 7_000_000)  # 7 J measured while it works
    fake.add("intel-rapl:0:1", 1_000_000)
    t.sample()
    for _ in range(3):  # then it stands still while the CPUs work 2 s per interval
        busy_interval(tree, machine, cpu_s=2.0)
        t.sample()
    tot = t.stop()
    assert tot.sources.cpu == "rapl+estimate"
    assert tot.energy.cpu_j == pytest.approx(7.0 + 5.0 * 6.0)  # measured, then estimated
    assert tot.warnings["cpu"].count("did not move") == 1


def test_frozen_dram_alone_falls_back_to_the_ram_estimate(tmp_path):
    fake = two_socket_tree(tmp_path / "rapl")
    t, tree, machine = make(tmp_path, rapl=open_rapl(tmp_path / "rapl"))
    for _ in range(3):
        busy_interval(tree, machine, cpu_s=1.0)
        fake.add("intel-rapl:0", 5_000_000)  # packages move, DRAM zones do not
        t.sample()
    tot = t.stop()
    assert tot.sources.cpu == "rapl" and tot.sources.ram == "estimate"
    assert tot.machine_energy.cpu_j == pytest.approx(15.0)
    assert tot.energy.ram_j >= 0 and "RAPL DRAM counters" in tot.warnings["ram"]


@pytest.mark.parametrize(
    "source, words",
    [
        ("amdsmi-energy", "GPU measured (amdsmi energy counter)"),
        ("amdsmi-power", "GPU measured (amdsmi power samples, integrated)"),
        ("unmeasured", "GPU **not measured**"),
        ("nvml-energy+unmeasured", "GPU measured (NVML energy counter), partly **not measured**"),
    ],
)
def test_the_run_description_says_how_the_gpu_figure_was_obtained(source, words):
    from mlflow_wattsup.report import run_note as description

    tags = {"wattsup.source.cpu": "rapl", "wattsup.source.gpu": source, "wattsup.source.ram": "rapl"}
    text = description.run_markdown({"energy_kwh": 1e-3, "energy_gpu_kwh": 1e-3, "carbon_g": 0.4}, {}, tags)
    assert words in text
