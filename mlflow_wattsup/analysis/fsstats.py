"""FreeSurfer-format stats files, read without FreeSurfer (nibabel has no reader for them).

Two kinds, both ``#``-commented headers followed by a whitespace-separated table whose columns
are named by the ``# ColHeaders`` line:

* volume stats, written by FreeSurfer's ``mri_segstats`` (``stats/aseg.stats``) and FastSurfer's
  ``segstats.py`` (``stats/aseg+DKT.stats``, ``stats/aseg.stats``):
  ``Index SegId NVoxels Volume_mm3 StructName normMean ...``, volumes in mm^3;
* surface parcellation stats, written by ``mris_anatomical_stats`` for FreeSurfer
  (``stats/lh.aparc.DKTatlas.stats``) and for FastSurfer (``stats/lh.aparc.DKTatlas.mapped.stats``,
  its DKT labels mapped onto the surface): ``StructName NumVert SurfArea GrayVol ThickAvg
  ThickStd ...``, thickness in mm. A region with no vertex on that hemisphere has no row.

Header lines ``# Measure <name>, <key>, <description>, <value>, <unit>`` (eTIV, BrainSegVol,
MeanThickness...) are kept by their key (the second field: the first repeats, e.g. ``Cortex``
for NumVert, WhiteSurfArea and MeanThickness). A malformed file raises :class:`StatsFormatError`
whose message is one line naming the file and line.

Pure functions over files; no MLflow, no pandas.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

HEMIS = ("lh", "rh")
#: volume stats in a subject directory, in order of preference (surface-corrected aseg first)
VOLUME_FILES = ("stats/aseg.stats", "stats/aseg+DKT.stats")
#: DKT parcellation stats per hemisphere, in order of preference (FastSurfer's own mapped DKT first)
PARC_FILES = ("stats/{hemi}.aparc.DKTatlas.mapped.stats", "stats/{hemi}.aparc.DKTatlas.stats")


class StatsFormatError(ValueError):
    """A stats file that cannot be read; ``str(exc)`` is one line: ``file:line: what (fix)``."""


@dataclass(frozen=True)
class Measure:
    """One ``# Measure`` header line."""

    name: str  # first field, e.g. ``BrainSeg``, ``Cortex``
    key: str  # second field, e.g. ``BrainSegVol``, ``MeanThickness``, ``eTIV``
    description: str
    value: float
    unit: str  # ``mm^3``, ``mm``, ``unitless``...


@dataclass
class StatsTable:
    """One stats file: its header, measures and table rows (numbers as floats)."""

    path: Path
    columns: list[str]
    rows: list[dict[str, float | str]]
    measures: dict[str, Measure] = field(default_factory=dict)
    header: dict[str, str] = field(default_factory=dict)  # ``# key value`` lines (first value kept)
    lines: dict[str, int] = field(default_factory=dict)  # StructName -> line number

    def column(self, name: str) -> dict[str, float]:
        """``StructName -> value`` of one numeric column (NaN values left out)."""
        out = {}
        for row in self.rows:
            v = row[name]
            if isinstance(v, float) and not math.isnan(v):
                out[str(row["StructName"])] = v
        return out

    @property
    def program(self) -> str:
        return self.header.get("generating_program", "unknown")


_MEASURE = "Measure"
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^[-+]?(nan|inf)$", re.IGNORECASE)


def _fail(path: Path, lineno: int | None, what: str) -> StatsFormatError:
    where = f"{path}:{lineno}" if lineno else str(path)
    return StatsFormatError(f"{where}: {what}")


def _measure(path: Path, lineno: int, text: str) -> Measure:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) < 5:
        raise _fail(
            path,
            lineno,
            f"'# Measure' line has {len(parts)} comma-separated fields, expected 5 "
            "(name, key, description, value, unit)",
        )
    try:
        value = float(parts[-2])
    except ValueError:
        raise _fail(path, lineno, f"'# Measure {parts[1]}' value {parts[-2]!r} is not a number") from None
    return Measure(parts[0], parts[1], ", ".join(parts[2:-2]), value, parts[-1])


def read_stats(path: str | Path, required: tuple[str, ...] = ("StructName",)) -> StatsTable:
    """Read one stats file. ``required``: columns that must be in ``# ColHeaders``.

    Raises :class:`StatsFormatError` (missing file, no ``# ColHeaders``, a row whose field count
    differs from the headers, a non-number in a numeric column, a duplicate structure, fewer rows
    than ``# NRows`` says) and never returns a partial table."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise _fail(path, None, "no such file") from None
    except OSError as exc:
        raise _fail(path, None, f"unreadable ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # FreeSurfer writes ASCII; a stray byte must not hide the table
    columns: list[str] | None = None
    header_line = 0
    rows: list[dict[str, float | str]] = []
    lines: dict[str, int] = {}
    measures: dict[str, Measure] = {}
    header: dict[str, str] = {}
    nrows: tuple[int, int] | None = None
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            word, _, rest = body.partition(" ")
            rest = rest.strip()
            if word == _MEASURE:
                m = _measure(path, lineno, rest)
                measures.setdefault(m.key, m)
            elif word == "ColHeaders":
                columns = rest.split()
                header_line = lineno
                if not columns:
                    raise _fail(path, lineno, "'# ColHeaders' names no column")
                if len(set(columns)) != len(columns):
                    raise _fail(path, lineno, f"'# ColHeaders' repeats a column: {' '.join(columns)}")
                missing = [c for c in required if c not in columns]
                if missing:
                    raise _fail(
                        path,
                        lineno,
                        f"no {', '.join(missing)} column in '# ColHeaders {' '.join(columns)}': "
                        "not the kind of stats file expected here",
                    )
            elif word == "NRows":
                try:
                    nrows = (int(rest.split()[0]), lineno)
                except (ValueError, IndexError):
                    raise _fail(path, lineno, f"'# NRows {rest}' is not a count") from None
            elif word and rest and word not in header:
                header[word] = rest
            continue
        if columns is None:
            raise _fail(
                path, lineno, "table row before any '# ColHeaders' line (not a FreeSurfer stats file?)"
            )
        fields = stripped.split()
        if len(fields) != len(columns):
            raise _fail(
                path,
                lineno,
                f"{len(fields)} fields, but '# ColHeaders' (line {header_line}) names {len(columns)} "
                "(a truncated or hand-edited line?)",
            )
        row: dict[str, float | str] = {}
        for col, val in zip(columns, fields, strict=True):
            if col == "StructName":
                row[col] = val
            elif _NUMBER.match(val):
                row[col] = float(val)
            else:
                raise _fail(path, lineno, f"{col} is {val!r}, not a number")
        name = str(row.get("StructName", f"row{len(rows) + 1}"))
        if name in lines:
            raise _fail(path, lineno, f"structure {name} appears twice (also line {lines[name]})")
        lines[name] = lineno
        rows.append(row)
    if columns is None:
        raise _fail(path, None, "no '# ColHeaders' line: not a FreeSurfer stats file (or an empty one)")
    if nrows is not None and nrows[0] != len(rows):
        raise _fail(
            path,
            nrows[1],
            f"'# NRows {nrows[0]}' but the table has {len(rows)} row(s): the file is truncated or edited",
        )
    return StatsTable(path, columns, rows, measures, header, lines)


def read_volume_stats(path: str | Path) -> StatsTable:
    """``aseg.stats`` / ``aseg+DKT.stats`` (needs ``StructName`` and ``Volume_mm3``)."""
    return read_stats(path, ("StructName", "Volume_mm3"))


def read_parc_stats(path: str | Path) -> StatsTable:
    """``?h.aparc.DKTatlas[.mapped].stats`` (needs ``StructName`` and ``ThickAvg``)."""
    return read_stats(path, ("StructName", "ThickAvg"))


def volumes_mm3(table: StatsTable) -> dict[str, float]:
    """Structure name -> volume in mm^3."""
    return table.column("Volume_mm3")


def hemisphere(table: StatsTable) -> str:
    """``lh`` or ``rh``: from the ``# hemi`` header, else the file name's prefix."""
    h = table.header.get("hemi", "").split()
    if h and h[0] in HEMIS:
        return h[0]
    prefix = table.path.name.split(".", 1)[0]
    if prefix in HEMIS:
        return prefix
    raise _fail(
        table.path, None, "cannot tell the hemisphere: no '# hemi lh|rh' line and no lh./rh. file name"
    )


def region_name(hemi: str, struct: str) -> str:
    """FreeSurfer's volume-label name of a cortical parcel: ``ctx-lh-insula``."""
    return f"ctx-{hemi}-{struct}"


def thickness_mm(table: StatsTable) -> dict[str, float]:
    """``ctx-<hemi>-<region>`` -> mean cortical thickness (``ThickAvg``), mm."""
    hemi = hemisphere(table)
    return {region_name(hemi, k): v for k, v in table.column("ThickAvg").items()}


@dataclass
class SubjectStats:
    """What one subject directory's stats files give: volumes (mm^3), thickness (mm), the files
    read (relative to the subject directory), and why a part is missing."""

    subject_dir: Path
    volumes_mm3: dict[str, float] = field(default_factory=dict)
    thickness_mm: dict[str, float] = field(default_factory=dict)
    volume_file: str | None = None
    thickness_files: list[str] = field(default_factory=list)
    volume_missing: str | None = None  # why there are no volumes
    thickness_missing: str | None = None  # why there is no thickness (or only one hemisphere)


def find_volume_stats(subject_dir: str | Path, prefer: str | None = None) -> str | None:
    """The volume stats file of a subject directory, relative to it: ``prefer`` if present, else
    the first of :data:`VOLUME_FILES` that exists."""
    d = Path(subject_dir)
    order = ([prefer] if prefer else []) + list(VOLUME_FILES)
    return next((rel for rel in order if (d / rel).is_file()), None)


def find_parc_stats(subject_dir: str | Path, hemi: str) -> str | None:
    d = Path(subject_dir)
    return next((p.format(hemi=hemi) for p in PARC_FILES if (d / p.format(hemi=hemi)).is_file()), None)


NO_SURFACES = (
    "no surface stats (stats/{hemi}.aparc.DKTatlas.mapped.stats or stats/{hemi}.aparc.DKTatlas.stats): "
    "no surfaces were made (FastSurfer --seg_only, recon-all before autorecon3) or they failed"
)
NO_VOLUMES = (
    "no volume stats (stats/aseg.stats or stats/aseg+DKT.stats): the segmentation's stats were not "
    "computed (recon-all before autorecon2's segstats, FastSurfer without its asegdkt module)"
)


def read_subject(subject_dir: str | Path, prefer_volume: str | None = None) -> SubjectStats:
    """Volumes and thickness of one subject directory (FreeSurfer's or FastSurfer's layout).

    A missing file is not an error (it is said in ``volume_missing`` / ``thickness_missing``);
    a malformed one raises :class:`StatsFormatError`."""
    d = Path(subject_dir)
    out = SubjectStats(d)
    if not d.is_dir():
        out.volume_missing = out.thickness_missing = f"{d} is not a directory"
        return out
    rel = find_volume_stats(d, prefer_volume)
    if rel is None:
        out.volume_missing = NO_VOLUMES
    else:
        out.volume_file = rel
        out.volumes_mm3 = volumes_mm3(read_volume_stats(d / rel))
    missing = []
    for hemi in HEMIS:
        rel = find_parc_stats(d, hemi)
        if rel is None:
            missing.append(hemi)
            continue
        table = read_parc_stats(d / rel)
        if hemisphere(table) != hemi:
            raise _fail(table.path, None, f"says '# hemi {hemisphere(table)}' but its name is {hemi}.*")
        out.thickness_files.append(rel)
        out.thickness_mm.update(thickness_mm(table))
    if missing:
        hemis = "/".join(missing)
        out.thickness_missing = NO_SURFACES.format(hemi=missing[0] if len(missing) == 1 else "?h").replace(
            "no surface stats", f"no {hemis} surface stats"
        )
    return out
