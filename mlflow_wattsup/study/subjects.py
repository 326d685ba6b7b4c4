"""A study's subjects, from a BIDS dataset or a TSV file, and the
dataset's identity (a SHA-256 over subject ids, relative paths and file sizes).

BIDS: every ``sub-*/[ses-*/]anat/*_T1w.nii[.gz]`` (one per subject and session; a subject with
sessions becomes ``sub-01_ses-1``, with several T1w runs the first in name order); reference
segmentations from ``reference_dir`` by ``reference_pattern``, a glob relative to that folder
where ``{subject}`` (``sub-01``), ``{session}`` (``ses-1`` or empty) and ``{id}`` (the study's
subject id) are filled in; it must match at most one file.

TSV (``participants.tsv`` style, tab separated, header row): ``subject`` (or ``participant_id``),
``t1``, optional ``reference``; relative paths are taken from the TSV's folder.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path


class SubjectsError(ValueError):
    """Unusable subject list; ``str(exc)`` is one line naming the file and the fix."""


@dataclass(frozen=True)
class Subject:
    id: str
    t1: Path
    reference: Path | None = None


def from_bids(
    root: str | Path, reference_dir: str | Path | None = None, reference_pattern: str = ""
) -> list[Subject]:
    root = Path(root).absolute()
    if not root.is_dir():
        raise SubjectsError(f"BIDS dataset {root}: no such folder")
    found: dict[str, Subject] = {}
    for t1 in sorted(root.glob("sub-*/anat/*_T1w.nii*")) + sorted(root.glob("sub-*/ses-*/anat/*_T1w.nii*")):
        if not t1.name.endswith((".nii", ".nii.gz")):
            continue
        rel = t1.relative_to(root).parts
        subject = rel[0]
        session = rel[1] if rel[1].startswith("ses-") else ""
        sid = f"{subject}_{session}" if session else subject
        if sid in found:
            continue
        ref = None
        if reference_dir is not None and reference_pattern:
            ref = _reference(Path(reference_dir).absolute(), reference_pattern, subject, session, sid)
        found[sid] = Subject(sid, t1, ref)
    if not found:
        raise SubjectsError(f"BIDS dataset {root}: no sub-*/[ses-*/]anat/*_T1w.nii[.gz] file")
    return list(found.values())


def _reference(base: Path, pattern: str, subject: str, session: str, sid: str) -> Path | None:
    try:
        glob = pattern.format(subject=subject, session=session, id=sid)
    except (KeyError, IndexError, ValueError):
        raise SubjectsError(
            f"reference pattern {pattern!r}: only {{subject}}, {{session}} and {{id}} can be filled in"
        ) from None
    hits = sorted(p for p in base.glob(glob.replace("//", "/")) if p.is_file())
    if len(hits) > 1:
        raise SubjectsError(
            f"reference pattern {glob!r} in {base} matches {len(hits)} files ({hits[0].name}, {hits[1].name}, ...): "
            "make it match one"
        )
    return hits[0] if hits else None


def from_tsv(path: str | Path) -> list[Subject]:
    path = Path(path).absolute()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise SubjectsError(f"subjects file {path}: {exc.strerror or exc}") from None
    table = list(csv.reader(text.splitlines(), delimiter="\t"))
    header = [h.strip() for h in table[0]] if table else []
    rows = [dict(zip(header, r, strict=False)) for r in table[1:]]
    id_col = "subject" if "subject" in header else "participant_id" if "participant_id" in header else None
    if id_col is None or "t1" not in header:
        raise SubjectsError(
            f"subjects file {path}: needs tab-separated columns 'subject' (or 'participant_id') and 't1', "
            f"found {', '.join(header) or 'no header'}"
        )
    out, seen = [], set()
    for n, row in enumerate(rows, start=2):
        sid = (row.get(id_col) or "").strip()
        if not sid:
            continue
        if sid in seen:
            raise SubjectsError(f"subjects file {path}, line {n}: subject {sid!r} appears twice")
        seen.add(sid)
        t1 = _file(path, n, "t1", row.get("t1"))
        if t1 is None:
            raise SubjectsError(f"subjects file {path}, line {n}: empty t1 for {sid!r}")
        out.append(Subject(sid, t1, _file(path, n, "reference", row.get("reference"))))
    if not out:
        raise SubjectsError(f"subjects file {path}: no subject rows")
    return out


def _file(tsv: Path, line: int, column: str, value: str | None) -> Path | None:
    value = (value or "").strip()
    if not value or value.lower() in ("n/a", "na"):
        return None
    p = Path(value).expanduser()
    p = p if p.is_absolute() else tsv.parent / p
    if not p.exists():
        raise SubjectsError(f"subjects file {tsv}, line {line}: {column} {value!r} does not exist ({p})")
    return p


def load(
    source: str | Path, reference_dir: str | Path | None = None, reference_pattern: str = ""
) -> list[Subject]:
    """A folder is read as BIDS, a file as TSV."""
    return from_bids(source, reference_dir, reference_pattern) if Path(source).is_dir() else from_tsv(source)


def dataset_sha256(subjects: list[Subject], root: str | Path) -> str:
    """Identity of the subject list: ids, paths relative to ``root`` and file sizes (not the
    bytes: reading a cohort's images would cost minutes)."""
    root = Path(root).absolute()
    h = hashlib.sha256()
    for s in sorted(subjects, key=lambda s: s.id):
        parts = [s.id]
        for p in (s.t1, s.reference):
            if p is None:
                parts += ["", ""]
                continue
            try:
                rel = str(p.relative_to(root))
            except ValueError:
                rel = str(p)
            parts += [rel, str(p.stat().st_size)]
        h.update(("\t".join(parts) + "\n").encode())
    return h.hexdigest()
