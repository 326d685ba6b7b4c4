"""FreeSurfer label names and label merges.

Names come from ``$FREESURFER_HOME/FreeSurferColorLUT.txt`` when it exists (or a LUT file the
user gives), else from the built-in table below: the aseg labels and the Desikan-Killiany / DKT
cortical labels (``ctx-lh-*`` = 1000 + index, ``ctx-rh-*`` = 2000 + index) that FreeSurfer's
``aseg.mgz``/``aparc+aseg.mgz`` and FastSurfer's ``aparc.DKTatlas+aseg.deep.mgz`` contain.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

ASEG = {
    0: "Unknown",
    2: "Left-Cerebral-White-Matter",
    3: "Left-Cerebral-Cortex",
    4: "Left-Lateral-Ventricle",
    5: "Left-Inf-Lat-Vent",
    7: "Left-Cerebellum-White-Matter",
    8: "Left-Cerebellum-Cortex",
    10: "Left-Thalamus",
    11: "Left-Caudate",
    12: "Left-Putamen",
    13: "Left-Pallidum",
    14: "3rd-Ventricle",
    15: "4th-Ventricle",
    16: "Brain-Stem",
    17: "Left-Hippocampus",
    18: "Left-Amygdala",
    24: "CSF",
    26: "Left-Accumbens-area",
    28: "Left-VentralDC",
    30: "Left-vessel",
    31: "Left-choroid-plexus",
    41: "Right-Cerebral-White-Matter",
    42: "Right-Cerebral-Cortex",
    43: "Right-Lateral-Ventricle",
    44: "Right-Inf-Lat-Vent",
    46: "Right-Cerebellum-White-Matter",
    47: "Right-Cerebellum-Cortex",
    49: "Right-Thalamus",
    50: "Right-Caudate",
    51: "Right-Putamen",
    52: "Right-Pallidum",
    53: "Right-Hippocampus",
    54: "Right-Amygdala",
    58: "Right-Accumbens-area",
    60: "Right-VentralDC",
    62: "Right-vessel",
    63: "Right-choroid-plexus",
    72: "5th-Ventricle",
    77: "WM-hypointensities",
    78: "Left-WM-hypointensities",
    79: "Right-WM-hypointensities",
    80: "non-WM-hypointensities",
    81: "Left-non-WM-hypointensities",
    82: "Right-non-WM-hypointensities",
    85: "Optic-Chiasm",
    251: "CC_Posterior",
    252: "CC_Mid_Posterior",
    253: "CC_Central",
    254: "CC_Mid_Anterior",
    255: "CC_Anterior",
}

# Desikan-Killiany cortical parcels in FreeSurfer's index order (1000 + i / 2000 + i).
# The DKT atlas (FastSurfer) uses the same indices without 1, 4, 32 and 33.
CORTICAL = [
    "unknown",
    "bankssts",
    "caudalanteriorcingulate",
    "caudalmiddlefrontal",
    "corpuscallosum",
    "cuneus",
    "entorhinal",
    "fusiform",
    "inferiorparietal",
    "inferiortemporal",
    "isthmuscingulate",
    "lateraloccipital",
    "lateralorbitofrontal",
    "lingual",
    "medialorbitofrontal",
    "middletemporal",
    "parahippocampal",
    "paracentral",
    "parsopercularis",
    "parsorbitalis",
    "parstriangularis",
    "pericalcarine",
    "postcentral",
    "posteriorcingulate",
    "precentral",
    "precuneus",
    "rostralanteriorcingulate",
    "rostralmiddlefrontal",
    "superiorfrontal",
    "superiorparietal",
    "superiortemporal",
    "supramarginal",
    "frontalpole",
    "temporalpole",
    "transversetemporal",
    "insula",
]
DKT_INDICES = [i for i in range(len(CORTICAL)) if i not in (0, 1, 4, 32, 33)]


def builtin_names() -> dict[int, str]:
    names = dict(ASEG)
    for i, n in enumerate(CORTICAL):
        names[1000 + i] = f"ctx-lh-{n}"
        names[2000 + i] = f"ctx-rh-{n}"
    return names


#: Named merge maps: {name: list of (first, last, target)} applied to both volumes before Dice.
MERGES: dict[str, list[tuple[int, int, int]]] = {
    # cortical parcels -> cortex: compare aparc+aseg / aparc.DKTatlas+aseg against aseg
    "aseg": [(1000, 1999, 3), (2000, 2999, 42)],
    # FastSurfer's aseg conventions (aseg.auto_noCCseg): corpus callosum -> white matter,
    # vessels -> white matter, 5th ventricle -> CSF, optic chiasm -> background
    "fastsurfer-aseg": [
        (1000, 1999, 3),
        (2000, 2999, 42),
        (251, 255, 0),
        (30, 30, 2),
        (62, 62, 41),
        (72, 72, 24),
        (80, 80, 77),
        (85, 85, 0),
    ],
}


class LabelError(ValueError):
    """A LUT or merge specification could not be read; ``str(exc)`` is one line."""


def read_lut(path: str | os.PathLike) -> dict[int, str]:
    """Read a FreeSurfer colour LUT (``ID Name R G B A`` per line, ``#`` comments) or FastSurfer's
    TSV variant (with a header)."""
    names: dict[int, str] = {}
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        raise LabelError(f"cannot read label table {path}: {exc.strerror or exc}") from None
    for line in text.splitlines():
        parts = line.split("#", 1)[0].split()
        if len(parts) >= 2 and re.fullmatch(r"-?\d+", parts[0]):
            names[int(parts[0])] = parts[1]
    if not names:
        raise LabelError(f"{path} has no 'ID Name ...' lines: not a FreeSurfer colour LUT")
    return names


def default_names() -> tuple[dict[int, str], str]:
    """(names, source): FreeSurfer's LUT when ``$FREESURFER_HOME`` has one, else built-in."""
    fs = os.environ.get("FREESURFER_HOME")
    if fs:
        lut = Path(fs) / "FreeSurferColorLUT.txt"
        if lut.is_file():
            try:
                return read_lut(lut), str(lut)
            except LabelError:
                pass
    return builtin_names(), "builtin (aseg + Desikan/DKT)"


_KEY_OK = re.compile(r"[^A-Za-z0-9_\-.]")


def metric_name(label: int, names: Mapping[int, str]) -> str:
    """``Left-Hippocampus`` for 17; ``label_1234`` when unnamed; safe as an MLflow key part."""
    name = names.get(label)
    return _KEY_OK.sub("_", name) if name else f"label_{label}"


def parse_merge(spec: str) -> list[tuple[int, int, int]]:
    """A merge map from a name (``aseg``, ``fastsurfer-aseg``) or ``FIRST[-LAST]:TARGET,...``
    (e.g. ``1000-1999:3,2000-2999:42,80:77``)."""
    spec = spec.strip()
    if spec in MERGES:
        return list(MERGES[spec])
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        m = re.fullmatch(r"(-?\d+)(?:-(-?\d+))?:(-?\d+)", item)
        if not m:
            raise LabelError(
                f"merge item {item!r} is not FIRST[-LAST]:TARGET (or use a named map: {', '.join(MERGES)})"
            )
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) else first
        if last < first:
            raise LabelError(f"merge item {item!r}: range ends before it starts")
        out.append((first, last, int(m.group(3))))
    if not out:
        raise LabelError(f"empty merge map {spec!r}")
    return out
