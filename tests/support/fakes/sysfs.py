"""A fake powercap tree with the real layout (see mlflow_wattsup.meters.rapl)."""

from pathlib import Path


class FakeRapl:
    """``zones``: {dirname: (name, start_uj, max_range_uj)}. Counters are set with ``set`` and
    advanced with ``add``, written in place so kept-open fds see the new value."""

    def __init__(self, root: Path, zones: dict):
        self.root = Path(root)
        self.max = {}
        for dirname, (name, start, max_range) in zones.items():
            path = self._path(dirname).parent
            path.mkdir(parents=True, exist_ok=True)
            (path / "name").write_text(name + "\n")
            (path / "max_energy_range_uj").write_text(f"{max_range}\n")
            (path / "energy_uj").write_text(f"{start}\n")
            self.max[dirname] = max_range
        self.paths = {d: self._path(d) for d in zones}

    def _path(self, dirname):
        parts = dirname.split(":")
        base = self.root / dirname if len(parts) == 2 else self.root / ":".join(parts[:2]) / dirname
        return base / "energy_uj"

    def get(self, dirname) -> int:
        return int(self.paths[dirname].read_text())

    def set(self, dirname, value_uj: int) -> None:
        with open(self.paths[dirname], "r+") as f:
            f.seek(0)
            f.write(f"{value_uj}\n")
            f.truncate()

    def add(self, dirname, delta_uj: int) -> None:
        self.set(dirname, (self.get(dirname) + delta_uj) % self.max[dirname])


def two_socket_tree(root: Path, wrap_zone: str | None = None) -> FakeRapl:
    """Two packages with dram each, plus a psys zone and core subzones that must be ignored."""
    big = 262143328850
    zones = {
        "intel-rapl:0": ("package-0", 1_000_000, big),
        "intel-rapl:0:0": ("core", 500_000, big),
        "intel-rapl:0:1": ("dram", 200_000, big),
        "intel-rapl:1": ("package-1", 2_000_000, big),
        "intel-rapl:1:0": ("core", 700_000, big),
        "intel-rapl:1:1": ("dram", 300_000, big),
        "intel-rapl:2": ("psys", 9_000_000, big),
    }
    if wrap_zone:
        name, _, _ = zones[wrap_zone]
        zones[wrap_zone] = (name, 999_000_000, 1_000_000_000)  # 1 mJ below the wrap
    return FakeRapl(root, zones)
