"""Value types and unit conversions shared by every layer (no MLflow, no I/O).

Energy is carried in joules everywhere inside the package; it becomes kWh or Wh only where it is
shown or logged (:data:`J_PER_KWH`, :data:`J_PER_WH`).
"""

from __future__ import annotations

from dataclasses import dataclass

J_PER_KWH = 3.6e6
J_PER_WH = 3.6e3


@dataclass(frozen=True)
class Energy:
    """Energy split by component, joules."""

    cpu_j: float = 0.0
    gpu_j: float = 0.0
    ram_j: float = 0.0

    @property
    def total_j(self) -> float:
        return self.cpu_j + self.gpu_j + self.ram_j

    @property
    def total_kwh(self) -> float:
        return self.total_j / J_PER_KWH

    def __sub__(self, other: Energy) -> Energy:
        return Energy(self.cpu_j - other.cpu_j, self.gpu_j - other.gpu_j, self.ram_j - other.ram_j)

    def __add__(self, other: Energy) -> Energy:
        return Energy(self.cpu_j + other.cpu_j, self.gpu_j + other.gpu_j, self.ram_j + other.ram_j)


def kwh(energy_j: float) -> float:
    """Joules -> kilowatt-hours."""
    return energy_j / J_PER_KWH


def wh(energy_j: float) -> float:
    """Joules -> watt-hours."""
    return energy_j / J_PER_WH
