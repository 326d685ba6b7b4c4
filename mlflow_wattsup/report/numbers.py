"""Every number we show a reader, in one place: the comparison tables, the run and parent
descriptions, the agreement tables, the printed run summary. Pure: no MLflow.

The forms differ only where the page they go on does: a table says ``N/A`` where a description
says ``n/a``; the comparison table's counts stop at ``T`` (its FLOPs column has always read so);
agreement means have fixed decimals (mm^3 to 0.1, mm and coefficients to 0.001); CSV cells are raw.
"""

from __future__ import annotations

import math

from mlflow_wattsup.meters.units import wh

#: the suffixes of counts (params, FLOPs), largest first
SUFFIXES = (("P", 1e15), ("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3))


def fmt(x: float | None, *, big: bool = False, na: str = "n/a", largest: str = "P") -> str:
    """``x`` to 3 significant digits, ``na`` for None or NaN.

    Not ``big``: ``0``; thousands separated from 1,000 (``12,345``); an exponent only below 0.001
    (``1.23e-04``). ``big`` (counts): with k/M/G/T/P suffixes, up to ``largest`` (``88.1 k``,
    ``68.7 G``)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return na
    if big:
        for suffix, div in SUFFIXES[[s for s, _ in SUFFIXES].index(largest) :]:
            if abs(x) >= div:
                return f"{x / div:.3g} {suffix}"
        return f"{x:.3g}"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) >= 0.001 else f"{x:.2e}"


def energy_kwh(kwh: float) -> str:
    """kWh in words: in Wh below 1 kWh (most runs are Wh or less)."""
    return f"{fmt(kwh)} kWh" if abs(kwh) >= 1 else f"{fmt(kwh * 1000)} Wh"


def energy_j(energy_j: float) -> str:
    """Joules as Wh to 4 significant digits (the printed run summary)."""
    return f"{wh(energy_j):.4g} Wh"


def seconds(s: float) -> str:
    """A duration in words: ``15.2 s`` below two minutes, then ``4 min 05 s``, ``2 h 03 min``."""
    if s < 120:
        return f"{fmt(s)} s"
    s = int(round(s))
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    return f"{h} h {m:02d} min" if h else f"{m} min {sec:02d} s"


def clock(s: float) -> str:
    """A duration as a clock, ``H:MM:SS`` (whole seconds)."""
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def fixed(x: float | None, digits: int = 3, na: str = "n/a") -> str:
    """``digits`` decimals (``0.912``), ``na`` for None."""
    return na if x is None else f"{x:.{digits}f}"


def raw(x: float | None, digits: int | None = None) -> str:
    """A CSV cell: empty for None; every digit (``repr``), or ``digits`` significant ones."""
    if x is None:
        return ""
    return repr(x) if digits is None else f"{x:.{digits}g}"
