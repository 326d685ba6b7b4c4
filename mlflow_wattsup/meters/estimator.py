"""Power models for machines without readable counters (VMs, containers, non-root users).

Everything computed here is an *estimate* and is labelled so by the tracker.

CPU model (linear in CPU time, no idle power)::

    power_w = w_per_thread * busy_threads        energy_j = w_per_thread * cpu_seconds

``w_per_thread`` is, in order of preference: given by the user (``WATTSUP_CPU_W_PER_THREAD``);
the package TDP given by the user (``WATTSUP_CPU_TDP_W``) divided by the threads per socket;
the TDP of the CPU model in CodeCarbon's table (``codecarbon/data/hardware/cpu_power.csv``)
divided by the threads per socket, on bare metal only; else CodeCarbon's default of 4 W per
thread. In a VM the host chip's thread count is unknown, so a table TDP cannot be divided
correctly and the default is used unless the user says otherwise.

Because the model is linear in CPU seconds, a run's share is exact whatever the sampling:
run CPU energy = ``w_per_thread * tree CPU seconds``.

RAM model: ``RAM_W_PER_GB`` = 0.3725 W per GB resident (Green Algorithms, Lannelongue et al.,
Adv. Sci. 2021), applied to the tracked tree's resident memory (run) and to memory in use
(machine).
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mlflow_wattsup.meters.hardware import CpuInfo, cpu_info

#: CodeCarbon's fallback for CPUs it does not know (``DEFAULT_POWER_PER_CORE``), W per thread.
DEFAULT_W_PER_THREAD = 4.0
#: Memory power per GB resident (Green Algorithms).
RAM_W_PER_GB = 0.3725
CPU_W_PER_THREAD_ENV = "WATTSUP_CPU_W_PER_THREAD"
CPU_TDP_ENV = "WATTSUP_CPU_TDP_W"


class EstimatorConfigError(ValueError):
    """A user-supplied estimator parameter is unusable; ``str(exc)`` is one line."""


@dataclass(frozen=True)
class CpuPowerModel:
    """``w_per_thread``: watts per fully busy logical CPU. ``basis`` says where it came from
    (``user-w-per-thread``, ``user-tdp``, ``codecarbon-tdp``, ``default``); ``tdp_w`` and
    ``matched_model`` are set when a TDP was used."""

    w_per_thread: float
    basis: str
    tdp_w: float | None = None
    matched_model: str | None = None
    note: str | None = None

    def energy_j(self, cpu_s: float) -> float:
        return self.w_per_thread * cpu_s

    def params(self) -> dict[str, str]:
        """The estimate's parameters (names without a prefix; the MLflow layer adds its own), so a
        reader can recompute the estimate."""
        out = {
            "cpu_model": "w_per_thread x cpu_seconds",
            "cpu_w_per_thread": f"{self.w_per_thread:.4g}",
            "cpu_basis": self.basis,
        }
        if self.tdp_w is not None:
            out["cpu_tdp_w"] = f"{self.tdp_w:g}"
        if self.matched_model:
            out["cpu_tdp_match"] = self.matched_model
        return out


@dataclass(frozen=True)
class RamPowerModel:
    w_per_gb: float = RAM_W_PER_GB

    def power_w(self, resident_bytes: float) -> float:
        return self.w_per_gb * resident_bytes / 1e9

    def params(self) -> dict[str, str]:
        return {
            "ram_model": "w_per_gb x resident_gb",
            "ram_w_per_gb": f"{self.w_per_gb:g}",
        }


def codecarbon_data_dir() -> Path | None:
    """CodeCarbon's ``data`` folder, found without importing codecarbon (its import is slow)."""
    spec = importlib.util.find_spec("codecarbon")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "data"
    return path if path.is_dir() else None


def normalise_cpu_name(name: str) -> str:
    """Reduce an OS CPU name and a table name to the same form.

    ``Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz`` -> ``intel xeon gold 6148``;
    ``AMD Ryzen 7 5800X 8-Core Processor`` -> ``amd ryzen 7 5800x``;
    ``12th Gen Intel(R) Core(TM) i7-1265U`` -> ``intel core i7-1265u``.
    """
    s = name.lower()
    s = re.sub(r"\((r|tm|c)\)|®|™", " ", s)
    s = re.sub(r"@\s*[\d.]+\s*[gm]hz", " ", s)
    s = re.sub(r"\b\d+(st|nd|rd|th) gen\b", " ", s)
    s = re.sub(r"\b(\d+|dual|quad|six|eight|twelve|sixteen)[- ]core\b", " ", s)
    s = re.sub(r"\bwith radeon.*$", " ", s)
    s = re.sub(r"\b(cpu|processor|apu)\b", " ", s)
    s = re.sub(r"\(oem only\)", " ", s)
    return " ".join(s.split())


@functools.lru_cache(maxsize=1)
def _tdp_rows() -> tuple[tuple[str, str, float], ...]:
    """CodeCarbon's CPU table as (name, lower-case name, TDP in W), in file order."""
    base = codecarbon_data_dir()
    if base is None:
        return ()
    rows = []
    try:
        with open(base / "hardware" / "cpu_power.csv", newline="", encoding="utf-8-sig") as f:
            for row in csv.DictReader(f):
                try:
                    rows.append((row["Name"], row["Name"].lower(), float(row["TDP"])))
                except (KeyError, TypeError, ValueError, AttributeError):
                    continue
    except OSError:
        return ()
    return tuple(rows)


def lookup_tdp(model: str) -> tuple[str, float] | None:
    """(table name, TDP in W) of the first table row whose normalised name equals ``model``'s,
    else None.

    No fuzzy matching: a wrong match would be a confident wrong number. Normalising only deletes
    text, so a row can match only if every word of the normalised model occurs in it: rows
    without them are skipped unnormalised (the lookup runs before a wrapped command starts).
    """
    target = normalise_cpu_name(model)
    words = target.split()
    if not words:
        return None
    for name, lower, tdp in _tdp_rows():
        if all(w in lower for w in words) and normalise_cpu_name(name) == target:
            return name, tdp
    return None


def _env_float(name: str) -> float | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise EstimatorConfigError(f"{name}={raw!r} is not a number of watts; set e.g. {name}=4") from None
    if not value > 0 or value != value or value == float("inf"):
        raise EstimatorConfigError(f"{name}={raw!r} must be a positive number of watts")
    return value


def cpu_power_model(
    cpu_w_per_thread: float | None = None,
    cpu_tdp_w: float | None = None,
    info: CpuInfo | None = None,
) -> CpuPowerModel:
    """Choose the CPU power model, see the module docstring for the order."""
    info = info or cpu_info()
    w = cpu_w_per_thread if cpu_w_per_thread is not None else _env_float(CPU_W_PER_THREAD_ENV)
    if w is not None:
        if not w > 0:
            raise EstimatorConfigError(f"CPU watts per thread must be positive, got {w}")
        return CpuPowerModel(w, "user-w-per-thread")
    tdp = cpu_tdp_w if cpu_tdp_w is not None else _env_float(CPU_TDP_ENV)
    if tdp is not None:
        if not tdp > 0:
            raise EstimatorConfigError(f"CPU TDP must be positive, got {tdp}")
        return CpuPowerModel(tdp / info.threads_per_socket, "user-tdp", tdp_w=tdp)
    match = lookup_tdp(info.model)
    if match and not info.virtual:
        name, table_tdp = match
        return CpuPowerModel(table_tdp / info.threads_per_socket, "codecarbon-tdp", table_tdp, name)
    if match:
        note = (
            f"CPU '{info.model}' has TDP {match[1]:g} W in CodeCarbon's table, but this is a VM "
            f"and the host chip's thread count is unknown; using {DEFAULT_W_PER_THREAD:g} W per "
            f"thread. Set {CPU_W_PER_THREAD_ENV} to override."
        )
    else:
        note = (
            f"CPU '{info.model}' is not in CodeCarbon's TDP table; using {DEFAULT_W_PER_THREAD:g} W "
            f"per thread. Set {CPU_TDP_ENV} (package TDP) or {CPU_W_PER_THREAD_ENV} to override."
        )
    return CpuPowerModel(DEFAULT_W_PER_THREAD, "default", note=note)
