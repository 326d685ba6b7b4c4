"""Intel/AMD RAPL energy counters through the Linux powercap sysfs interface.

Layout read (``root`` defaults to ``/sys/class/powercap``, overridable with the
``WATTSUP_POWERCAP_ROOT`` environment variable so containers and tests can point elsewhere)::

    intel-rapl:0/name                 "package-0"
    intel-rapl:0/energy_uj            cumulative energy, microjoules
    intel-rapl:0/max_energy_range_uj  value at which energy_uj wraps to 0
    intel-rapl:0/intel-rapl:0:0/name  "core" | "uncore" | "dram"
    intel-rapl:1/...                  second socket
    intel-rapl:2/name                 "psys" (platform zone, not summed)

Package zones (top level, name ``package-N``) and ``dram`` subzones are read; ``core`` and
``uncore`` are parts of the package and are not added again. Every counter is kept open and read
with ``pread`` (sub-microsecond), and wrap-around is undone with ``max_energy_range_uj``.

Since Linux 5.10 (CVE-2020-8694) ``energy_uj`` is readable only by root on most
distributions. :func:`open_rapl` then raises :class:`RaplUnavailable` whose message says how to
grant read access.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_POWERCAP_ROOT = "/sys/class/powercap"
POWERCAP_ROOT_ENV = "WATTSUP_POWERCAP_ROOT"


class RaplUnavailable(RuntimeError):
    """No usable RAPL counters; ``str(exc)`` is a one-line explanation for the user."""


@dataclass(frozen=True)
class RaplReading:
    """Cumulative energy since :class:`RaplMeter` was opened.

    ``package_j`` sums every socket's package zone and ``dram_j`` every dram zone, in joules;
    ``zones_j`` holds each zone by its sysfs directory name. ``monotonic_s`` is when it was read.
    """

    monotonic_s: float
    package_j: float
    dram_j: float | None
    zones_j: dict[str, float] = field(default_factory=dict)


@dataclass
class _Counter:
    name: str  # sysfs directory name, e.g. "intel-rapl:0:1"
    kind: str  # "package" or "dram"
    fd: int
    max_range_uj: int
    last_raw_uj: int
    total_uj: int = 0

    def advance(self) -> int:
        raw = int(os.pread(self.fd, 32, 0))
        delta = raw - self.last_raw_uj
        if delta < 0:  # the counter wrapped at max_energy_range_uj
            delta += self.max_range_uj
        self.last_raw_uj = raw
        self.total_uj += delta
        return self.total_uj


def powercap_root(root: str | os.PathLike | None = None) -> Path:
    """The powercap directory to read: ``root``, else ``$WATTSUP_POWERCAP_ROOT``, else sysfs."""
    return Path(root or os.environ.get(POWERCAP_ROOT_ENV) or DEFAULT_POWERCAP_ROOT)


def _zone_dirs(root: Path) -> list[Path]:
    """Top-level RAPL zones (``intel-rapl:N``) and their subzones, sorted by name."""
    if not root.is_dir():
        return []
    tops = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    zones: list[Path] = []
    for top in tops:
        zones.append(top)
        zones.extend(sorted(p for p in top.glob(f"{top.name}:*") if p.is_dir()))
    return zones


def _read_text(path: Path) -> str:
    with open(path) as f:
        return f.read().strip()


def _grant_hint(path: Path) -> str:
    return (
        f"RAPL energy counters exist but are not readable ({path}: permission denied; root-only "
        "since Linux 5.10, CVE-2020-8694). To measure CPU energy instead of estimating it, "
        f"grant read access, e.g. 'sudo chmod a+r {path.parent.parent}/intel-rapl:*/energy_uj "
        f"{path.parent.parent}/intel-rapl:*/intel-rapl:*/energy_uj' (until reboot; a udev rule "
        "makes it permanent)."
    )


class RaplMeter:
    """Reads package and DRAM energy of every socket. Use :func:`open_rapl` to create one."""

    def __init__(self, counters: list[_Counter], root: Path):
        self._counters = counters
        self.root = root
        #: one-line hint when some (DRAM) counters exist but could not be read, else None
        self.denied_hint: str | None = None

    @property
    def zone_names(self) -> list[str]:
        return [c.name for c in self._counters]

    @property
    def has_dram(self) -> bool:
        return any(c.kind == "dram" for c in self._counters)

    @property
    def sockets(self) -> int:
        return sum(1 for c in self._counters if c.kind == "package")

    def read(self) -> RaplReading:
        """Cumulative joules since the meter was opened (``OSError`` if a counter vanished)."""
        now = time.monotonic()
        zones = {c.name: c.advance() / 1e6 for c in self._counters}
        package = sum(zones[c.name] for c in self._counters if c.kind == "package")
        dram = [zones[c.name] for c in self._counters if c.kind == "dram"]
        return RaplReading(now, package, sum(dram) if dram else None, zones)

    def close(self) -> None:
        for c in self._counters:
            try:
                os.close(c.fd)
            except OSError:
                pass
        self._counters = []

    def __del__(self):  # pragma: no cover - best effort
        self.close()


def open_rapl(root: str | os.PathLike | None = None) -> RaplMeter:
    """Open every readable package and dram counter under ``root``.

    Raises :class:`RaplUnavailable` when there are no zones, or when zones exist but cannot be
    read (the message then explains how to grant access).
    """
    base = powercap_root(root)
    counters: list[_Counter] = []
    denied: dict[str, Path] = {}  # kind -> first counter of that kind we may not read
    for zone in _zone_dirs(base):
        try:
            name = _read_text(zone / "name")
        except OSError:
            continue
        if zone.name.count(":") == 1:
            if not name.startswith("package"):
                continue  # psys and other platform zones overlap the packages
            kind = "package"
        elif name == "dram":
            kind = "dram"
        else:
            continue  # core/uncore are parts of the package
        energy = zone / "energy_uj"
        fd = None
        try:
            max_range = int(_read_text(zone / "max_energy_range_uj"))
            fd = _open_counter(energy)
            raw = int(os.pread(fd, 32, 0))
        except PermissionError:
            denied.setdefault(kind, energy)
        except (OSError, ValueError):
            pass
        else:
            counters.append(_Counter(zone.name, kind, fd, max_range, raw))
            continue
        if fd is not None:
            os.close(fd)
    if "package" in denied or not any(c.kind == "package" for c in counters):
        # A socket we cannot read would make the sum an undercount: use none of them.
        for c in counters:
            os.close(c.fd)
        if denied:
            raise RaplUnavailable(_grant_hint(next(iter(denied.values()))))
        raise RaplUnavailable(f"no RAPL package counters under {base}")
    if "dram" in denied:
        # Packages are readable, DRAM is not: measure the packages and leave RAM to the
        # estimator rather than report a partial DRAM sum.
        for c in [c for c in counters if c.kind == "dram"]:
            os.close(c.fd)
        counters = [c for c in counters if c.kind != "dram"]
    meter = RaplMeter(counters, base)
    meter.denied_hint = _grant_hint(denied["dram"]) if "dram" in denied else None
    return meter


def _open_counter(path: Path) -> int:
    """Open a counter for ``pread``; a seam for tests that simulate root-only files as root."""
    return os.open(path, os.O_RDONLY)
