"""FastSurfer segmentation log formats (``<sd>/<sid>/scripts/deep-seg.log``, also on stdout).

FastSurfer 2.x (``run_prediction.py``, logger format ``[INFO: file.py:  line]: message``)::

    [INFO: inference.py:  200]: Loading checkpoint /fastsurfer/checkpoints/aparc_vinn_coronal_v2.0.0.pkl
    [INFO: inference.py:  270]: Inference on 256 batches for coronal successful
    [INFO: inference.py:  310]: Coronal inference on /data/T1.nii.gz finished in 61.2412 seconds
    [INFO: run_prediction.py:  ...]: Saving segmentation ... / Successfully saved image as .../aparc.DKTatlas+aseg.deep.mgz

FastSurfer 1.x (``eval.py``)::

    Loading Axial Net from ../checkpoints/Axial_Weights_FastSurferCNN/ckpts/Epoch_30_training_state.pkl
    Axial View Tested in 3804.5118 seconds
    Saving Segmentation to ../data/sub-0128/aparc.DKTatlas+aseg.deep.mgz

Lines carry no clock time: a plane's stage is ``[seen - duration, seen]`` where ``seen`` is when the
line appeared; view aggregation runs from the end of the last plane to the save message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PLANES = ("coronal", "sagittal", "axial")
_V2_DONE = re.compile(
    r"(?P<plane>Coronal|Sagittal|Axial) inference on .* finished in (?P<s>[\d.]+) seconds", re.I
)
_V1_DONE = re.compile(r"(?P<plane>Coronal|Sagittal|Axial) View Tested in (?P<s>[\d.]+) seconds", re.I)
_CKPT = re.compile(r"Loading (?:checkpoint|(?:Coronal|Sagittal|Axial) Net from) (?P<path>\S+)", re.I)
_SAVED = re.compile(
    r"(Successfully saved image|Saving Segmentation|Saving segmentation|Saving prediction)", re.I
)


@dataclass(frozen=True)
class PlaneDone:
    plane: str  # coronal | sagittal | axial
    duration_s: float


@dataclass(frozen=True)
class Checkpoint:
    path: str

    @property
    def plane(self) -> str | None:
        low = self.path.lower()
        return next((p for p in PLANES if p in low), None)


@dataclass(frozen=True)
class Saved:
    line: str


def parse_line(line: str) -> PlaneDone | Checkpoint | Saved | None:
    m = _V2_DONE.search(line) or _V1_DONE.search(line)
    if m:
        return PlaneDone(m["plane"].lower(), float(m["s"]))
    m = _CKPT.search(line)
    if m:
        return Checkpoint(m["path"])
    if _SAVED.search(line):
        return Saved(line)
    return None
