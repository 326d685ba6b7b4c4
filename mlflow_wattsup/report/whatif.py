"""What-if carbon: the carbon runs would have had at another intensity or PUE, recomputed from
their logged energy with :func:`mlflow_wattsup.analysis.carbon.carbon_g`. Pure: no MLflow."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mlflow_wattsup.analysis.carbon import carbon_g, lookup_region, parse_number
from mlflow_wattsup.sink import keys

if TYPE_CHECKING:
    from mlflow_wattsup.report.model import RunRow


@dataclass(frozen=True)
class WhatIf:
    """Recompute carbon at ``intensity_g_per_kwh`` (g CO2eq/kWh) and ``pue`` (>= 1); ``label``
    says which values and where they came from, for the report's header and footnote."""

    intensity_g_per_kwh: float
    pue: float
    label: str

    def carbon_g(self, energy_kwh: float) -> float:
        """Grams CO2eq of ``energy_kwh`` of IT energy at this intensity and PUE."""
        return carbon_g(energy_kwh, self.intensity_g_per_kwh, self.pue)


def what_if(
    runs: Sequence[RunRow],
    carbon_intensity: float | str | None = None,
    region: str | None = None,
    pue: float | str | None = None,
) -> WhatIf | None:
    """The what-if to apply, or None when nothing is overridden. The intensity is
    ``carbon_intensity`` (g/kWh), else ``region``'s, else the one every run logged (with ``pue``
    alone); ``pue`` defaults to 1. Unusable values raise a ``ValueError`` with a one-line message."""
    if carbon_intensity is None and region is None and pue is None:
        return None
    if carbon_intensity is not None:
        intensity, source = parse_number(carbon_intensity, "carbon intensity (g/kWh)", 0.0), "given"
    elif region is not None:
        c = lookup_region(region)
        intensity, source = c.g_per_kwh, f"{c.region}, {c.source}"
    else:
        logged = {r.params.get(keys.CARBON_INTENSITY) for r in runs} - {None}
        if len(logged) != 1:
            raise ValueError(
                "--pue alone needs every run to share one logged intensity; "
                "give --carbon-intensity or --region too"
            )
        intensity, source = float(logged.pop()), "as logged"
    p = 1.0 if pue is None else parse_number(pue, "PUE", 1.0)
    return WhatIf(intensity, p, f"{intensity:.4g} g/kWh ({source}), PUE {p:g}")
