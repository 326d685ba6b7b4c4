import pytest

from mlflow_wattsup.analysis import carbon


@pytest.mark.parametrize(
    "region, code, lo, hi",
    [
        ("FRA", "FRA", 20, 120),
        ("france", "FRA", 20, 120),
        ("Canada", "CAN", 100, 250),
        ("CA-QC", "CA-QC", 20, 45),  # hydro-dominated mix x lifecycle factors
        ("CAN/quebec", "CA-QC", 20, 45),
        ("US-CA", "US-CA", 100, 400),
        ("usa/ohio", "US-OH", 300, 700),
        ("SE3", "SE3", 10, 60),
        ("CN-BJ", "CN-BJ", 300, 800),
        ("gcp:europe-west1", "gcp:europe-west1", 50, 300),
        ("Guinea-Bissau", "GNB", 100, 1000),
    ],
)
def test_regions_from_offline_tables(region, code, lo, hi):
    c = carbon.lookup_region(region)
    assert c.region == code and lo < c.g_per_kwh < hi
    assert c.source.startswith("codecarbon")


def test_us_state_converted_from_lbs_per_mwh():
    import json

    raw = json.loads((carbon._data() / "private_infra/2023/usa_emissions.json").read_text())["california"][
        "emissions"
    ]
    assert carbon.lookup_region("US-CA").g_per_kwh == pytest.approx(raw * 0.45359237)


def test_quebec_is_mix_weighted():
    factors = carbon._json("private_infra/carbon_intensity_per_source.json")
    mix = carbon._json("private_infra/2023/canada_energy_mix.json")["quebec"]
    expected = (
        mix["hydro"] * factors["hydroelectricity"]
        + mix["wind"] * factors["wind"]
        + mix["naturalGas"] * factors["natural_gas"]
        + mix["petroleum"] * factors["petroleum"]
        + mix["biomass"] * factors["biomass"]
        + mix["solar"] * factors["solar"]
    ) / mix["total"]
    assert carbon.lookup_region("CA-QC").g_per_kwh == pytest.approx(expected)


def test_precedence_explicit_then_region_then_world(monkeypatch):
    assert carbon.resolve_intensity(100, "FRA").source == "user"
    assert carbon.resolve_intensity(None, "FRA").region == "FRA"
    w = carbon.resolve_intensity()
    assert w.source.startswith("world-average") and w.g_per_kwh == 475 and w.warning
    monkeypatch.setenv("WATTSUP_REGION", "SE3")
    assert carbon.resolve_intensity().region == "SE3"
    monkeypatch.setenv("WATTSUP_CARBON_INTENSITY", "12.5")
    assert carbon.resolve_intensity().g_per_kwh == 12.5


def test_unknown_region_one_line_error():
    with pytest.raises(carbon.CarbonConfigError) as info:
        carbon.lookup_region("Atlantis")
    assert "Atlantis" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("bad", ["x", "-1", "nan", "inf"])
def test_bad_intensity(bad):
    with pytest.raises(carbon.CarbonConfigError):
        carbon.resolve_intensity(bad)


def test_pue(monkeypatch):
    assert carbon.resolve_pue() == (1.0, "default")
    assert carbon.resolve_pue(1.58) == (1.58, "user")
    with pytest.raises(carbon.CarbonConfigError):
        carbon.resolve_pue(0.9)
    monkeypatch.setenv("WATTSUP_PUE", "1.2")
    assert carbon.resolve_pue() == (1.2, "env")


def test_carbon_formula():
    assert carbon.carbon_g(2.0, 100.0, 1.5) == pytest.approx(300.0)


def test_list_regions_covers_every_table():
    regions = {r.region.split(" ")[0] for r in carbon.list_regions()}
    assert {"FRA", "US-CA", "CA-QC", "SE3", "CN-BJ", "gcp:europe-west1"} <= regions
