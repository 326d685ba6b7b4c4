"""Carbon intensity of electricity (g CO2eq per kWh) from offline tables, and carbon of energy.

Never reads the network. Sources, in order of precedence (:func:`resolve_intensity`):

1. an explicit value (argument or ``WATTSUP_CARBON_INTENSITY``): source ``user``;
2. a region (argument or ``WATTSUP_REGION``) looked up in the data files shipped with
   CodeCarbon (read in place, not copied):

   ========================  ===============================================================
   region form               table
   ========================  ===============================================================
   ``FRA``, ``France``       ``global_energy_mix.json``: ISO 3166 alpha-3 code or English
                             country name, its ``carbon_intensity`` (Our World in Data)
   ``US-CA``, ``USA/ohio``   ``usa_emissions.json``: EPA eGRID state rate, lbs/MWh converted
   ``CA-QC``, ``CAN/quebec`` ``canada_energy_mix.json`` generation mix (%) weighted by the
                             lifecycle factors of ``carbon_intensity_per_source.json``; types
                             without a factor count with 0 (CodeCarbon's own method for the
                             Nordic zones), so the value is a lower bound where they matter
   ``SE3``, ``NO4``, ``FI``  ``nordic_emissions.json`` bidding zones
   ``CN-BJ``                 ``china_provincial_emissions.json``
   ``gcp:europe-west1``      ``cloud/impact.csv`` (provider:region)
   ========================  ===============================================================

3. otherwise the world average of ``carbon_intensity_per_source.json``, with a warning.

Carbon of a run: ``carbon_g = energy_kwh * pue * intensity_g_per_kwh`` where ``energy_kwh`` is
IT energy (CPU+GPU+RAM) and PUE (power usage effectiveness, >= 1) scales it to facility energy.
"""

from __future__ import annotations

import csv
import functools
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

from mlflow_wattsup.meters.estimator import codecarbon_data_dir
from mlflow_wattsup.meters.units import kwh

REGION_ENV = "WATTSUP_REGION"
INTENSITY_ENV = "WATTSUP_CARBON_INTENSITY"
PUE_ENV = "WATTSUP_PUE"
LBS_PER_MWH_TO_G_PER_KWH = 453.59237 / 1000.0

# ISO 3166-2:CA subdivision codes -> the province names used as keys in canada_energy_mix.json.
_CANADA_CODES = {
    "AB": "alberta",
    "BC": "british columbia",
    "MB": "manitoba",
    "NB": "new brunswick",
    "NL": "newfoundland and labrador",
    "NS": "nova scotia",
    "NT": "northwest territories",
    "NU": "nunavut",
    "ON": "ontario",
    "PE": "prince edward island",
    "QC": "quebec",
    "SK": "saskatchewan",
    "YT": "yukon",
}
# canada_energy_mix.json source names -> carbon_intensity_per_source.json keys
_CANADA_SOURCES = {
    "naturalGas": "natural_gas",
    "petroleum": "petroleum",
    "coal": "coal",
    "biomass": "biomass",
    "nuclear": "nuclear",
    "solar": "solar",
    "wind": "wind",
    "hydro": "hydroelectricity",
}


class CarbonConfigError(ValueError):
    """Unusable region, intensity or PUE; ``str(exc)`` is a one-line message."""


@dataclass(frozen=True)
class CarbonIntensity:
    """``g_per_kwh``: grams CO2eq per kWh. ``source``: where the value came from.
    ``region``: the region it applies to (``""`` when none was given). ``warning``: set when the
    value is a fallback the user should know about."""

    g_per_kwh: float
    source: str
    region: str = ""
    warning: str | None = None


def carbon_g(energy_kwh: float, intensity_g_per_kwh: float, pue: float = 1.0) -> float:
    """Grams CO2eq of ``energy_kwh`` of IT energy at the given intensity and PUE."""
    return energy_kwh * pue * intensity_g_per_kwh


def _data() -> Path:
    base = codecarbon_data_dir()
    if base is None:
        raise CarbonConfigError(
            "CodeCarbon's data files were not found; install codecarbon (pip install codecarbon) "
            "or give the intensity explicitly (--carbon-intensity / WATTSUP_CARBON_INTENSITY)"
        )
    return base


@functools.cache
def _json(rel: str) -> dict:
    with open(_data() / rel, encoding="utf-8") as f:
        return json.load(f)


def world_average() -> CarbonIntensity:
    per_source = _json("private_infra/carbon_intensity_per_source.json")
    return CarbonIntensity(
        float(per_source["world_average"]),
        "world-average (codecarbon carbon_intensity_per_source.json)",
        "",
        "no region or intensity given: using the world average "
        f"{float(per_source['world_average']):g} g/kWh; set --region or --carbon-intensity",
    )


def _country(key: str) -> CarbonIntensity | None:
    mix = _json("private_infra/global_energy_mix.json")
    k = key.strip()
    entry = mix.get(k.upper())
    if entry is None:
        for _code, e in mix.items():
            if str(e.get("country_name", "")).lower() == k.lower():
                entry = e
                break
    if entry is None or entry.get("carbon_intensity") is None:
        return None
    code = entry.get("iso_code", k.upper())
    return CarbonIntensity(
        float(entry["carbon_intensity"]),
        f"codecarbon global_energy_mix.json ({entry.get('year', '?')})",
        code,
    )


def _usa(state: str) -> CarbonIntensity | None:
    data = _json("private_infra/2023/usa_emissions.json")
    s = state.strip().lower()
    for name, e in data.items():
        if name.startswith("_") or not isinstance(e, dict):
            continue
        if s == name or s == str(e.get("regionCode", "")).lower():
            year = data.get("_source", {}).get("year", "?")
            return CarbonIntensity(
                float(e["emissions"]) * LBS_PER_MWH_TO_G_PER_KWH,
                f"codecarbon usa_emissions.json (EPA eGRID {year}, lbs/MWh converted)",
                f"US-{e.get('regionCode', name)}",
            )
    return None


def _canada(province: str) -> CarbonIntensity | None:
    data = _json("private_infra/2023/canada_energy_mix.json")
    p = province.strip().lower()
    name = _CANADA_CODES.get(p.upper(), p)
    mix = data.get(name)
    if mix is None:
        return None
    factors = _json("private_infra/carbon_intensity_per_source.json")
    total = float(mix.get("total") or sum(v for k, v in mix.items() if k != "total"))
    weighted = sum(float(mix.get(k, 0.0)) * float(factors[f]) for k, f in _CANADA_SOURCES.items())
    code = next((c for c, n in _CANADA_CODES.items() if n == name), name)
    return CarbonIntensity(
        weighted / total,
        "codecarbon canada_energy_mix.json (2023) x carbon_intensity_per_source.json",
        f"CA-{code}",
    )


def _zone(rel: str, key: str) -> CarbonIntensity | None:
    data = _json(rel).get("data", {})
    k = key.strip().upper()
    entry = data.get(k)
    if entry is None:
        for code, e in data.items():
            if key.strip().lower() in [n.lower() for n in e.get("names", [])]:
                k, entry = code, e
                break
    if entry is None:
        return None
    return CarbonIntensity(
        float(entry["emission_factor"]),
        f"codecarbon {Path(rel).name} ({entry.get('year', '?')})",
        k,
    )


@functools.lru_cache(maxsize=1)
def _cloud_rows() -> list[dict]:
    with open(_data() / "cloud" / "impact.csv", newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def _cloud(provider: str, region: str) -> CarbonIntensity | None:
    for row in _cloud_rows():
        if row["provider"].lower() == provider.lower() and row["region"].lower() == region.lower():
            return CarbonIntensity(
                float(row["impact"]),
                f"codecarbon cloud/impact.csv ({row.get('source') or row['provider']})",
                f"{row['provider']}:{row['region']}",
            )
    return None


def lookup_region(region: str) -> CarbonIntensity:
    """Intensity of a region (see the module docstring for the accepted forms).

    Raises :class:`CarbonConfigError` naming the region when it is not in the tables.
    """
    r = region.strip()
    found: CarbonIntensity | None = None
    if ":" in r:
        provider, _, name = r.partition(":")
        found = _cloud(provider, name)
    elif "/" in r or "-" in r:
        country, _, sub = r.replace("/", "-", 1).partition("-")
        country = country.upper()
        if country in ("US", "USA"):
            found = _usa(sub)
        elif country in ("CA", "CAN"):
            found = _canada(sub)
        elif country in ("CN", "CHN"):
            found = _zone("private_infra/2023/china_provincial_emissions.json", f"CN-{sub}")
    elif len(r) <= 3:
        found = _zone("private_infra/nordic_emissions.json", r)
    if found is None and ":" not in r:
        found = _country(r)  # also names with a hyphen, e.g. Guinea-Bissau
    if found is None:
        raise CarbonConfigError(
            f"unknown region {region!r}: use an ISO alpha-3 country code or name (FRA, Canada), "
            "US-XX / CA-XX / CN-XX subdivisions, a Nordic zone (SE3), or provider:region "
            "(gcp:europe-west1); 'wattsup regions' lists them all"
        )
    return found


def list_regions() -> list[CarbonIntensity]:
    """Every region the offline tables know, with its intensity."""
    out: list[CarbonIntensity] = []
    for code, e in sorted(_json("private_infra/global_energy_mix.json").items()):
        if e.get("carbon_intensity") is not None:
            c = _country(code)
            if c:
                out.append(CarbonIntensity(c.g_per_kwh, c.source, f"{code} ({e.get('country_name')})"))
    for name, e in sorted(_json("private_infra/2023/usa_emissions.json").items()):
        if not name.startswith("_") and isinstance(e, dict):
            c = _usa(name)
            if c:
                out.append(c)
    for code in sorted(_CANADA_CODES):
        c = _canada(code)
        if c:
            out.append(c)
    for rel in ("private_infra/nordic_emissions.json", "private_infra/2023/china_provincial_emissions.json"):
        for code in sorted(_json(rel).get("data", {})):
            c = _zone(rel, code)
            if c:
                out.append(c)
    for row in _cloud_rows():
        c = _cloud(row["provider"], row["region"])
        if c:
            out.append(c)
    return out


def parse_number(value: object, what: str, minimum: float) -> float:
    """A finite number >= ``minimum``, else :class:`CarbonConfigError` with a one-line message."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CarbonConfigError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < minimum:
        raise CarbonConfigError(f"{what} must be a finite number >= {minimum:g}, got {value!r}")
    return v


def resolve_intensity(intensity: float | str | None = None, region: str | None = None) -> CarbonIntensity:
    """The intensity to use: explicit value, else region, else world average (with warning)."""
    if intensity is None and os.environ.get(INTENSITY_ENV, "").strip():
        intensity = os.environ[INTENSITY_ENV]
    if region is None and os.environ.get(REGION_ENV, "").strip():
        region = os.environ[REGION_ENV]
    if intensity is not None:
        value = parse_number(intensity, "carbon intensity (g/kWh)", 0.0)
        return CarbonIntensity(value, "user", region or "")
    if region:
        return lookup_region(region)
    return world_average()


def resolve_pue(pue: float | str | None = None) -> tuple[float, str]:
    """(PUE, source): explicit value, else ``WATTSUP_PUE``, else 1.0 (IT energy only)."""
    if pue is None and os.environ.get(PUE_ENV, "").strip():
        return parse_number(os.environ[PUE_ENV], f"PUE ({PUE_ENV})", 1.0), "env"
    if pue is None:
        return 1.0, "default"
    return parse_number(pue, "PUE", 1.0), "user"


@dataclass(frozen=True)
class CarbonConfig:
    """The carbon settings of one run: intensity (with its source), PUE (with its source)."""

    intensity: CarbonIntensity
    pue: float
    pue_source: str

    @classmethod
    def resolve(
        cls,
        carbon_intensity: float | str | None = None,
        region: str | None = None,
        pue: float | str | None = None,
    ) -> CarbonConfig:
        """From the user's values, else the ``WATTSUP_*`` environment, else defaults (see
        :func:`resolve_intensity`, :func:`resolve_pue`); raises :class:`CarbonConfigError`."""
        value, source = resolve_pue(pue)
        return cls(resolve_intensity(carbon_intensity, region), value, source)

    def carbon_g(self, energy_j: float) -> float:
        """Grams CO2eq of ``energy_j`` joules of IT energy."""
        return carbon_g(kwh(energy_j), self.intensity.g_per_kwh, self.pue)
