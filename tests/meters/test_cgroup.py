"""The cgroup reader (meters/cgroup.py) on fake trees of each layout, and on this machine's own."""

import os

import pytest
from support.fakes.cgroupfs import FakeCgroups

from mlflow_wattsup.meters.cgroup import (
    CgroupMeter,
    CgroupUnavailable,
    locate,
    parse_proc_cgroup,
    proc_cgroup_paths,
    read_mounts,
    within,
)

CID = "3f2a1b4c5d6e" + "0" * 52
PATH = f"/docker/{CID}"


def where(fake):
    return {"proc_root": str(fake.proc), "mountinfo": str(fake.mountinfo)}


def test_proc_cgroup_parsed_per_controller():
    text = "12:memory:/a\n4:cpu,cpuacct:/b\n1:name=systemd:/c\n0::/d\n"
    assert parse_proc_cgroup(text) == {
        "memory": "/a",
        "cpu": "/b",
        "cpuacct": "/b",
        "name=systemd": "/c",
        "": "/d",
    }


def test_v1_cpuacct_nanoseconds_and_memory_stat(tmp_path):
    fake = FakeCgroups(tmp_path, "v1")
    fake.add(4242, PATH, cpu_s=2.5, rss=300 * 2**20, mapped=20 * 2**20)
    loc = locate(4242, **where(fake))
    assert (loc.version, loc.path) == ("v1", PATH)
    assert loc.cpu_file.endswith(f"cpu,cpuacct{PATH}/cpuacct.usage")
    r = CgroupMeter(loc).read()
    assert r.cpu_s == pytest.approx(2.5) and r.memory_bytes == 320 * 2**20 and not r.gone


def test_pure_v2_usage_usec_and_anon_plus_file_mapped(tmp_path):
    fake = FakeCgroups(tmp_path, "v2")
    path = f"/system.slice/docker-{CID}.scope"
    fake.add(7, path, cpu_s=1.25, rss=100, mapped=28)
    loc = locate(7, **where(fake))
    assert loc.version == "v2" and loc.cpu_file.endswith("cpu.stat")
    r = CgroupMeter(loc).read()
    assert r.cpu_s == pytest.approx(1.25) and r.memory_bytes == 128


def test_hybrid_reads_v1_unless_v2_is_preferred_memory_from_v1(tmp_path):
    fake = FakeCgroups(tmp_path, "hybrid")
    fake.add(9, PATH, cpu_s=3.0, rss=4096, mapped=0)
    assert locate(9, **where(fake)).version == "v1"
    loc2 = locate(9, prefer="v2", **where(fake))
    assert loc2.version == "v2" and "unified" in loc2.cpu_file
    assert loc2.memory_file is not None and "memory" in loc2.memory_file  # the unified tree has none
    assert CgroupMeter(loc2).read().cpu_s == pytest.approx(3.0)
    assert CgroupMeter(loc2).read().memory_bytes == 4096


def test_mount_root_of_a_nested_view(tmp_path):
    # inside a container the mounts show that container's cgroup as their root
    fake = FakeCgroups(tmp_path, "v1", mount_root="/outer")
    fake.add(11, "/outer/inner", cpu_s=0.5)
    loc = locate(11, **where(fake))
    assert loc.cpu_file == str(fake.fs / "cpu,cpuacct" / "inner" / "cpuacct.usage")


def test_counters_follow_and_the_last_figures_stay_once_removed(tmp_path):
    fake = FakeCgroups(tmp_path, "v1")
    fake.add(5, PATH, cpu_s=1.0, rss=1000)
    meter = CgroupMeter(locate(5, **where(fake)))
    fake.set(PATH, cpu_s=2.0, rss=2000)
    assert (meter.read().cpu_s, meter.read().memory_bytes) == (pytest.approx(2.0), 2000)
    fake.remove(PATH)
    r = meter.read()
    assert r.gone and r.cpu_s == pytest.approx(2.0) and r.memory_bytes == 0
    assert meter.gone


def test_cpu_seconds_never_go_back(tmp_path):
    fake = FakeCgroups(tmp_path, "v2")
    fake.add(5, PATH, cpu_s=2.0)
    meter = CgroupMeter(locate(5, **where(fake)))
    fake.set(PATH, cpu_s=1.0)
    assert meter.read().cpu_s == pytest.approx(2.0)


def test_what_cannot_be_read_says_why(tmp_path):
    fake = FakeCgroups(tmp_path, "v1")
    with pytest.raises(CgroupUnavailable, match="process 99 does not exist here"):
        locate(99, **where(fake))
    fake.add(6, PATH, cpu_s=1.0)
    with pytest.raises(CgroupUnavailable, match="cgroup v2 is not mounted"):
        locate(6, prefer="v2", **where(fake))
    (fake.fs / "cpu,cpuacct" / PATH.strip("/") / "cpuacct.usage").unlink()
    with pytest.raises(CgroupUnavailable, match="cannot read the cgroup of process 6"):
        locate(6, **where(fake))


def test_matching_a_process_to_a_cgroup(tmp_path):
    fake = FakeCgroups(tmp_path, "hybrid")
    fake.add(21, f"{PATH}/sub", cpu_s=0)
    fake.add(22, "/user.slice", cpu_s=0)
    assert within(proc_cgroup_paths(21, str(fake.proc)), [PATH])
    assert not within(proc_cgroup_paths(22, str(fake.proc)), [PATH])
    assert not within(frozenset({"/docker/3f2a1b4c5d6e-other"}), ["/docker/3f2a1b4c5d6e"])
    assert proc_cgroup_paths(404, str(fake.proc)) == frozenset()


@pytest.mark.skipif(not os.path.exists("/proc/self/cgroup"), reason="no /proc/self/cgroup (not Linux)")
def test_this_machines_own_hierarchies():
    mounts = read_mounts()
    if not mounts:
        pytest.skip("no cgroup hierarchy mounted here")
    found = {}
    for version in ("v1", "v2"):
        try:
            found[version] = CgroupMeter(locate(os.getpid(), prefer=version))
        except CgroupUnavailable:
            continue
    assert found, mounts
    before = {v: m.read().cpu_s for v, m in found.items()}
    t = os.times()
    while os.times().user + os.times().system - t.user - t.system < 0.05:
        pass
    for v, m in found.items():
        assert m.read().cpu_s > before[v], v  # our own CPU time is in our cgroup's (and its parents')
