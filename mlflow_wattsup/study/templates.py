"""A two-subject cohort from the MRI templates available offline, to try
``wattsup study`` in minutes.

``python -m mlflow_wattsup.study.templates DIR`` writes ``DIR/templates.tsv`` with

- ``colin27``: Debian ``mricron-data``'s Colin27 T1 with skull (``ch2.nii.gz``), reference its
  brain (``ch2bet.nii.gz``);
- ``mni152``: nilearn's MNI152 2009 T1 (1 mm, already skull-stripped) and its brain mask, written
  as NIfTI files into DIR.

Columns ``subject``, ``t1``, ``reference``: ``reference`` fills ``reference_mask`` of
``projects/segmentation#brain_extraction``. A template that is not installed is left out (with a
line saying how to get it).
"""

from __future__ import annotations

import sys
from pathlib import Path

COLIN_T1 = Path("/usr/share/mricron/templates/ch2.nii.gz")
COLIN_BRAIN = Path("/usr/share/mricron/templates/ch2bet.nii.gz")


def write(folder: str | Path) -> tuple[Path, list[str]]:
    """Write the cohort; returns (the TSV, notes about templates left out)."""
    folder = Path(folder).absolute()
    folder.mkdir(parents=True, exist_ok=True)
    rows, notes = [], []
    if COLIN_T1.exists() and COLIN_BRAIN.exists():
        rows.append(("colin27", str(COLIN_T1), str(COLIN_BRAIN)))
    else:
        notes.append("colin27 left out: apt-get install mricron-data")
    try:
        import nibabel as nib
        from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

        t1, mask = folder / "mni152_T1w.nii.gz", folder / "mni152_brainmask.nii.gz"
        if not t1.exists():
            nib.save(load_mni152_template(resolution=1), t1)
        if not mask.exists():
            nib.save(load_mni152_brain_mask(resolution=1), mask)
        rows.append(("mni152", str(t1), str(mask)))
    except ImportError:
        notes.append("mni152 left out: pip install nilearn")
    tsv = folder / "templates.tsv"
    tsv.write_text("subject\tt1\treference\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return tsv, notes


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m mlflow_wattsup.study.templates DIR", file=sys.stderr)
        return 2
    tsv, notes = write(argv[0])
    for n in notes:
        print(n, file=sys.stderr)
    print(tsv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
