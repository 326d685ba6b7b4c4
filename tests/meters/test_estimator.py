import pytest

from mlflow_wattsup.meters import estimator as est
from mlflow_wattsup.meters.hardware import CpuInfo, parse_cpuinfo

BARE = CpuInfo("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", 80, 2, 40, virtual=False)
VM = CpuInfo("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", 2, 1, 2, virtual=True)
UNKNOWN = CpuInfo("AMD EPYC", 2, 1, 2, virtual=True)


@pytest.mark.parametrize(
    "raw, table",
    [
        ("Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", "Intel Xeon Gold 6148"),
        ("AMD Ryzen 7 5800X 8-Core Processor", "AMD Ryzen 7 5800X"),
        ("Intel(R) Core(TM) i7-8650U CPU @ 1.90GHz", "Intel Core i7-8650U"),
        ("Intel(R) Xeon(R) CPU E5-2683 v4 @ 2.10GHz", "Intel Xeon E5-2683 v4"),
        ("AMD EPYC 7763 64-Core Processor", "AMD EPYC 7763"),
    ],
)
def test_cpu_names_match_codecarbon_table(raw, table):
    match = est.lookup_tdp(raw)
    assert match is not None and match[0] == table and match[1] > 0


def test_no_fuzzy_guess_for_unknown_model():
    assert est.lookup_tdp("AMD EPYC") is None
    assert est.lookup_tdp("Intel Xeon Gold 9999") is None


def test_bare_metal_known_model_uses_table_tdp_per_thread():
    m = est.cpu_power_model(info=BARE)
    assert m.basis == "codecarbon-tdp" and m.tdp_w == 150.0
    assert m.w_per_thread == pytest.approx(150.0 / 40)
    assert m.energy_j(10.0) == pytest.approx(37.5)
    assert m.params()["cpu_tdp_match"] == "Intel Xeon Gold 6148"


def test_vm_does_not_divide_host_tdp_by_guest_threads():
    m = est.cpu_power_model(info=VM)
    assert m.basis == "default" and m.w_per_thread == est.DEFAULT_W_PER_THREAD
    assert "VM" in m.note


def test_unknown_model_default_with_note():
    m = est.cpu_power_model(info=UNKNOWN)
    assert m.basis == "default" and "WATTSUP_CPU_TDP_W" in m.note


def test_user_overrides_in_order(monkeypatch):
    assert est.cpu_power_model(cpu_tdp_w=65, info=UNKNOWN).w_per_thread == pytest.approx(32.5)
    monkeypatch.setenv("WATTSUP_CPU_TDP_W", "100")
    assert est.cpu_power_model(info=UNKNOWN).basis == "user-tdp"
    monkeypatch.setenv("WATTSUP_CPU_W_PER_THREAD", "3")
    m = est.cpu_power_model(info=UNKNOWN)
    assert (m.basis, m.w_per_thread) == ("user-w-per-thread", 3.0)


@pytest.mark.parametrize("bad", ["abc", "-1", "0", "nan", "inf"])
def test_bad_env_is_one_line_error(monkeypatch, bad):
    monkeypatch.setenv("WATTSUP_CPU_TDP_W", bad)
    with pytest.raises(est.EstimatorConfigError) as info:
        est.cpu_power_model(info=UNKNOWN)
    assert "WATTSUP_CPU_TDP_W" in str(info.value) and "\n" not in str(info.value)


def test_ram_model():
    m = est.RamPowerModel()
    assert m.power_w(2e9) == pytest.approx(0.745)


def test_parse_cpuinfo_two_sockets():
    block = (
        "processor\t: {i}\nmodel name\t: Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz\n"
        "physical id\t: {s}\nsiblings\t: 40\nflags\t\t: fpu sse\n\n"
    )
    text = "".join(block.format(i=i, s=i // 40) for i in range(80))
    info = parse_cpuinfo(text)
    assert (info.logical_cpus, info.sockets, info.threads_per_socket, info.virtual) == (80, 2, 40, False)
    assert parse_cpuinfo(text.replace("fpu sse", "fpu hypervisor sse")).virtual
