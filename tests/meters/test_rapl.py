import time

import pytest
from support.fakes.sysfs import two_socket_tree

from mlflow_wattsup.meters import rapl


def test_two_sockets_package_and_dram_summed_core_and_psys_ignored(tmp_path):
    fake = two_socket_tree(tmp_path)
    m = rapl.open_rapl(tmp_path)
    assert m.sockets == 2 and m.has_dram
    assert sorted(m.zone_names) == ["intel-rapl:0", "intel-rapl:0:1", "intel-rapl:1", "intel-rapl:1:1"]
    first = m.read()
    assert first.package_j == 0 and first.dram_j == 0
    fake.add("intel-rapl:0", 3_000_000)  # 3 J
    fake.add("intel-rapl:1", 5_000_000)  # 5 J
    fake.add("intel-rapl:0:1", 1_000_000)
    fake.add("intel-rapl:1:1", 500_000)
    fake.add("intel-rapl:0:0", 99_000_000)  # core is inside the package: must not add
    fake.add("intel-rapl:2", 99_000_000)  # psys overlaps the packages: must not add
    r = m.read()
    assert r.package_j == pytest.approx(8.0)
    assert r.dram_j == pytest.approx(1.5)
    assert r.zones_j["intel-rapl:1"] == pytest.approx(5.0)
    m.close()


def test_wrap_around_uses_max_energy_range(tmp_path):
    fake = two_socket_tree(tmp_path, wrap_zone="intel-rapl:1")
    m = rapl.open_rapl(tmp_path)
    m.read()
    fake.add("intel-rapl:1", 4_000_000)  # crosses 1e9 uJ: raw value drops to 3_000_000
    assert fake.get("intel-rapl:1") == 3_000_000
    r = m.read()
    assert r.zones_j["intel-rapl:1"] == pytest.approx(4.0)
    fake.add("intel-rapl:1", 2_000_000)
    assert m.read().zones_j["intel-rapl:1"] == pytest.approx(6.0)


def test_env_var_sets_root(tmp_path, monkeypatch):
    two_socket_tree(tmp_path)
    monkeypatch.setenv("WATTSUP_POWERCAP_ROOT", str(tmp_path))
    assert rapl.powercap_root() == tmp_path
    assert rapl.open_rapl().sockets == 2


def test_no_zones_is_unavailable(tmp_path):
    with pytest.raises(rapl.RaplUnavailable, match="no RAPL package counters"):
        rapl.open_rapl(tmp_path / "missing")


def _deny(paths, monkeypatch):
    """Simulate root-only energy_uj (the tests may run as root, where chmod 000 does not bite)."""
    real = rapl._open_counter

    def fake_open(path):
        if str(path) in {str(p) for p in paths}:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(rapl, "_open_counter", fake_open)


def test_unreadable_package_counter_explains_how_to_grant_access(tmp_path, monkeypatch):
    fake = two_socket_tree(tmp_path)
    _deny([fake.paths["intel-rapl:1"]], monkeypatch)
    with pytest.raises(rapl.RaplUnavailable) as info:
        rapl.open_rapl(tmp_path)
    msg = str(info.value)
    assert "\n" not in msg
    assert "permission denied" in msg and "chmod a+r" in msg and "CVE-2020-8694" in msg
    # one socket readable, one not: nothing is used, rather than a silent undercount


def test_unreadable_dram_keeps_packages_and_drops_dram(tmp_path, monkeypatch):
    fake = two_socket_tree(tmp_path)
    _deny([fake.paths["intel-rapl:1:1"]], monkeypatch)
    m = rapl.open_rapl(tmp_path)
    assert m.sockets == 2 and not m.has_dram
    assert m.denied_hint and "chmod" in m.denied_hint
    assert m.read().dram_j is None


@pytest.mark.rapl
def test_real_powercap_moves_while_busy_and_plausibly(tmp_path):
    """On real RAPL: every package zone rises while this process works for a second, by more than
    nothing and less than 1 kW per package can give; and a tracker over that work keeps RAPL as its
    source (a readable but frozen counter would make it fall back and warn)."""
    from support.fakes.procfs import FakeTree

    from mlflow_wattsup.meters.estimator import CpuPowerModel
    from mlflow_wattsup.tracking.tracker import Tracker

    try:
        m = rapl.open_rapl(rapl.DEFAULT_POWERCAP_ROOT)
    except rapl.RaplUnavailable as exc:
        pytest.skip(f"no readable RAPL here: {exc}")
    a = m.read()
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        sum(range(10**5))
    b = m.read()
    dt = b.monotonic_s - a.monotonic_s
    for zone, j in b.zones_j.items():
        if not zone.count(":") == 1:
            continue  # DRAM may legitimately barely move
        assert 0 < j - a.zones_j[zone] < 1000.0 * dt, f"{zone}: {j - a.zones_j[zone]} J in {dt:.2f} s"
    m.close()
    t = Tracker(
        FakeTree(), interval_s=0.5, cpu_model=CpuPowerModel(5.0, "w"), nvml=False, slurm=False
    ).start()
    end = time.monotonic() + 1.5
    while time.monotonic() < end:
        sum(range(10**5))
    tot = t.stop()
    assert tot.sources.cpu == "rapl" and "cpu" not in tot.warnings, tot
    assert tot.machine_energy.cpu_j > 0
