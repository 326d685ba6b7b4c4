"""FastSurfer's segmentation log (``<sd>/<sid>/scripts/deep-seg.log``), read as FastSurfer 2.x writes it.

``run_fastsurfer.sh --seg_only`` (2.3, 2.4) runs several programs one after the other and logs all
of them into the same file, which it *appends to* (``>>`` / ``tee -a``, and a FileHandler with
mode ``"a"`` since 2.1): a re-run on the same subject adds to the old text (the caller tails from
the current end). Before each program the script echoes its command line into the log::

    /venv/bin/python /fastsurfer/FastSurferCNN/run_prediction.py --t1 ... --seg_log ...   (asegdkt)
    /venv/bin/python /fastsurfer/recon_surf/N4_bias_correct.py --in ... --rescale ...    (biasfield)
    /venv/bin/python /fastsurfer/FastSurferCNN/segstats.py --segfile ...                 (segstats)
    /venv/bin/python /fastsurfer/CerebNet/run_prediction.py --t1 ...                     (cerebnet)
    /venv/bin/python /fastsurfer/HypVINN/run_prediction.py --sd ... --t1 ...             (hypvinn)

Python log records are ``[%(levelname)s: %(filename)s: %(lineno)4d]: %(message)s``. The ones we use:

* ``Using device: cpu`` (``common.py``): the device FastSurfer resolved (``auto`` falls back to cpu);
* ``Loading checkpoint /abs/aparc_vinn_coronal_v2.0.0.pkl`` (asegdkt and HypVINN ``inference.py``;
  CerebNet loads its checkpoints without a log line);
* asegdkt ``Coronal inference on <img> finished in 61.2412 seconds``;
  HypVINN ``coronal Inference on <sid> finished in 70.1 seconds`` (lower-case plane, capital I);
* ``Successfully saved image   as <file>.`` (several spaces) after view aggregation (and earlier for
  the conformed input, which is why view aggregation ends at the first save *after* the last plane).

FastSurfer 1.x (``eval.py``: ``Axial View Tested in 3804.5118 seconds``, ``Loading Axial Net from
<path>``) is still read. Lines carry no clock time: a plane's stage is ``[seen - duration, seen]``
where ``seen`` is when the line appeared.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PLANES = ("coronal", "sagittal", "axial")
# the programs run_fastsurfer.sh echoes into deep-seg.log before running them -> our module name
MODULE_SCRIPTS = {
    "FastSurferCNN/run_prediction.py": "asegdkt",
    "recon_surf/N4_bias_correct.py": "biasfield",
    "FastSurferCNN/segstats.py": "segstats",
    "CerebNet/run_prediction.py": "cerebnet",
    "HypVINN/run_prediction.py": "hypvinn",
    "FastSurferCNN/data_loader/conform.py": "conform_t2",
    "recon_surf/talairach-reg.sh": "talairach",
}
# networks: module -> checkpoint file name stem in FastSurfer's checkpoint_paths.yaml
CHECKPOINT_FILES = {
    "asegdkt": {p: f"aparc_vinn_{p}_v2.0.0.pkl" for p in PLANES},
    "cerebnet": {p: f"CerebNet_{p}_v1.0.0.pkl" for p in PLANES},
    "hypvinn": {p: f"HypVINN_{p}_v1.1.0.pkl" for p in PLANES},
}
_CKPT_MODULE = (("aparc_vinn", "asegdkt"), ("hypvinn", "hypvinn"), ("cerebnet", "cerebnet"))

_RECORD = re.compile(r"^\[(?:INFO|WARNING|ERROR|DEBUG|CRITICAL): ")
_COMMAND = re.compile(
    r"(?:^|[\s/'\"])(?P<script>" + "|".join(map(re.escape, MODULE_SCRIPTS)) + r")(?:\s|'|\"|$)"
)
_ASEG_DONE = re.compile(
    r"\b(?P<plane>Coronal|Sagittal|Axial) inference on .* finished in (?P<s>[\d.]+) seconds"
)
_HYP_DONE = re.compile(
    r"\b(?P<plane>coronal|sagittal|axial) Inference on .* finished in (?P<s>[\d.]+) seconds"
)
_V1_DONE = re.compile(r"(?P<plane>Coronal|Sagittal|Axial) View Tested in (?P<s>[\d.]+) seconds", re.I)
_CKPT = re.compile(r"Loading (?:checkpoint|(?:Coronal|Sagittal|Axial) Net from) (?P<path>\S+)", re.I)
_DEVICE = re.compile(r"\]: Using device: (?P<device>\S+)")
_SAVED = re.compile(r"(Successfully saved image|Saving Segmentation to)\s", re.I)


@dataclass(frozen=True)
class ModuleStart:
    """run_fastsurfer.sh echoed the command line of one of its programs."""

    module: str


@dataclass(frozen=True)
class PlaneDone:
    plane: str  # coronal | sagittal | axial
    duration_s: float
    module: str = "asegdkt"  # asegdkt | hypvinn


@dataclass(frozen=True)
class Checkpoint:
    path: str

    @property
    def plane(self) -> str | None:
        low = self.path.lower()
        return next((p for p in PLANES if p in low), None)

    @property
    def module(self) -> str | None:
        """The network the file belongs to, from FastSurfer's file names (None if renamed)."""
        low = self.path.rsplit("/", 1)[-1].lower()
        return next((m for key, m in _CKPT_MODULE if key in low), None)


@dataclass(frozen=True)
class Device:
    device: str  # as FastSurfer wrote it: cpu, cuda, cuda:1, mps


@dataclass(frozen=True)
class Saved:
    line: str


Event = ModuleStart | PlaneDone | Checkpoint | Device | Saved


def parse_line(line: str) -> Event | None:
    """One deep-seg.log line -> an event, or None. Stateless: see :class:`DeepSegLog` for the
    module each event belongs to."""
    if not _RECORD.match(line):
        m = _COMMAND.search(line)
        if m and not line.lstrip().startswith(("INFO:", "WARNING:", "ERROR:")):
            return ModuleStart(MODULE_SCRIPTS[m["script"]])
    m = _ASEG_DONE.search(line)
    if m:
        return PlaneDone(m["plane"].lower(), float(m["s"]), "asegdkt")
    m = _HYP_DONE.search(line)
    if m:
        return PlaneDone(m["plane"], float(m["s"]), "hypvinn")
    m = _V1_DONE.search(line)
    if m:
        return PlaneDone(m["plane"].lower(), float(m["s"]), "asegdkt")
    m = _CKPT.search(line)
    if m:
        return Checkpoint(m["path"].rstrip("."))
    m = _DEVICE.search(line)
    if m:
        return Device(m["device"])
    if _SAVED.search(line):
        return Saved(line)
    return None


@dataclass(frozen=True)
class StageSpan:
    """A stage in tracker time (seconds after the run's start)."""

    name: str
    start_s: float
    end_s: float


class DeepSegLog:
    """Follows deep-seg.log as it grows and turns it into stages.

    Stages: one per program (``asegdkt``, ``biasfield``, ``segstats``, ``cerebnet``, ``hypvinn``,
    from its echoed command line to the next one or the end of the run); the asegdkt network's
    planes ``coronal``, ``sagittal``, ``axial`` (durations exactly as FastSurfer logged them) and
    ``view_aggregation`` (last plane to the first saved image after it); HypVINN's planes
    ``hypvinn.coronal`` etc. (nested stages are named ``outer.inner``). ``feed`` returns the
    stages closed by a line.
    """

    def __init__(self) -> None:
        self.module: str | None = None
        self.module_start: float | None = None
        self.modules: list[str] = []
        self.checkpoints: dict[str, dict[str, str]] = {}
        self.devices: list[str] = []
        self.planes: dict[str, dict[str, float]] = {}
        self._last_aseg_plane: float | None = None
        self._aggregated = False

    def feed(self, line: str, seen: float) -> list[StageSpan]:
        item = parse_line(line)
        out: list[StageSpan] = []
        if isinstance(item, ModuleStart):
            if (
                item.module == self.module
            ):  # "Log file for segmentation .../run_prediction.py", then the command
                return out
            out += self.close(seen)
            self.module, self.module_start = item.module, seen
            self.modules.append(item.module)
        elif isinstance(item, PlaneDone):
            module = "hypvinn" if self.module == "hypvinn" else item.module
            name = item.plane if module == "asegdkt" else f"{module}.{item.plane}"
            out.append(StageSpan(name, max(0.0, seen - item.duration_s), seen))
            self.planes.setdefault(module, {})[item.plane] = item.duration_s
            if module == "asegdkt":
                self._last_aseg_plane = seen
        elif isinstance(item, Checkpoint) and item.plane:
            module = self.module if self.module in CHECKPOINT_FILES else (item.module or "asegdkt")
            self.checkpoints.setdefault(module, {})[item.plane] = item.path
        elif isinstance(item, Device):
            self.devices.append(item.device)
        elif isinstance(item, Saved) and self._last_aseg_plane is not None and not self._aggregated:
            if self.module in (None, "asegdkt"):
                out.append(StageSpan("view_aggregation", self._last_aseg_plane, seen))
                self._aggregated = True
        return out

    def close(self, end: float) -> list[StageSpan]:
        """Close the running program's stage (at the next program, or the end of the run)."""
        if self.module is None or self.module_start is None:
            return []
        span = StageSpan(self.module, self.module_start, max(self.module_start, end))
        self.module, self.module_start = None, None
        return [span]

    @property
    def device(self) -> str | None:
        """The device the first network ran on, as FastSurfer logged it."""
        return self.devices[0] if self.devices else None


def device_kind(device: str) -> str:
    """``cuda``/``cuda:1`` -> ``gpu``; ``cpu`` -> ``cpu``; anything else (``mps``) unchanged."""
    d = device.lower()
    return "gpu" if d.startswith("cuda") else d
