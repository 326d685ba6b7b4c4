"""Segmentation quality: per-label Dice and volumes of two integer label volumes.

One pass over the voxels, in chunks (cache-sized, about 2 MB of extra memory each) split over up
to two threads (``np.bincount`` releases the GIL). Per chunk, either one histogram of the joint
index ``pred * n + ref`` (the confusion matrix, when there are at most 1,024 label indices) or
three histograms (labels in the prediction, in the reference, and where both agree). From them,
for every label L: ``Dice(L) = 2 |P=L and R=L| / (|P=L| + |R=L|)``. No one-hot volumes, no pass
per label.

Label values may be any integers (FreeSurfer IDs pass 2000; aparc.a2009s 11000+): values in a
moderate range are counted directly, others (negative, or a range over 2^24) are first mapped to
dense indices. Float volumes are accepted only when every value is integral.

Conventions: background (0) is excluded unless asked; a label present in one volume only scores
0; a label in neither is omitted (and listed in ``DiceResult.absent`` if it was requested).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mlflow_wattsup.analysis.labels import metric_name

CHUNK = 1 << 18  # voxels per chunk: 2 MB as int64, stays in cache
JOINT_MAX = 1024  # up to this many label indices, count the confusion matrix directly (8 MB)
DIRECT_RANGE = 1 << 24  # count values directly when max - min is below this
AFFINE_TOL_MM = 1e-3


class DiceInputError(ValueError):
    """Unusable input volumes; ``str(exc)`` is one line naming the files and what differs."""


@dataclass(frozen=True)
class LabelScore:
    label: int
    name: str
    dice: float
    voxels_pred: int
    voxels_ref: int
    intersection: int
    voxel_volume_mm3: float = 1.0

    @property
    def volume_pred_mm3(self) -> float:
        return self.voxels_pred * self.voxel_volume_mm3

    @property
    def volume_ref_mm3(self) -> float:
        return self.voxels_ref * self.voxel_volume_mm3

    @property
    def volume_diff(self) -> float | None:
        """Relative volume difference (pred - ref) / ref; None when the reference lacks the label."""
        return (self.voxels_pred - self.voxels_ref) / self.voxels_ref if self.voxels_ref else None


@dataclass(frozen=True)
class DiceResult:
    scores: tuple[LabelScore, ...]
    voxel_volume_mm3: float = 1.0
    absent: tuple[int, ...] = ()  # requested labels found in neither volume
    names_source: str = ""
    merge: str = ""

    @property
    def mean(self) -> float:
        """Unweighted mean Dice over ``scores`` (NaN when there are none)."""
        return float(np.mean([s.dice for s in self.scores])) if self.scores else float("nan")

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.scores]

    def by_name(self) -> dict[str, float]:
        return {s.name: s.dice for s in self.scores}

    def to_csv(self) -> str:
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(
            [
                "label",
                "name",
                "dice",
                "voxels_pred",
                "voxels_ref",
                "intersection",
                "volume_pred_mm3",
                "volume_ref_mm3",
                "volume_diff",
            ]
        )
        for s in self.scores:
            w.writerow(
                [
                    s.label,
                    s.name,
                    repr(s.dice),
                    s.voxels_pred,
                    s.voxels_ref,
                    s.intersection,
                    s.volume_pred_mm3,
                    s.volume_ref_mm3,
                    "" if s.volume_diff is None else s.volume_diff,
                ]
            )
        return out.getvalue()


def _as_labels(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind == "b":
        return a.astype(np.uint8)
    if a.dtype == np.uint64:  # numpy mixes uint64 with signed integers as float64: make it int64
        if a.size and int(a.max()) > np.iinfo(np.int64).max:
            raise DiceInputError(f"{what} has label values above 2^63-1: not a label volume")
        return a.astype(np.int64)
    if a.dtype.kind in "iu":
        return a
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise DiceInputError(f"{what} has NaN or infinite values: not a label volume")
        if not np.all(np.mod(a, 1) == 0):
            raise DiceInputError(f"{what} has non-integer values: not a label volume")
        return a.astype(np.int64)
    raise DiceInputError(f"{what} has dtype {a.dtype}: expected integer labels")


def _histograms(pf: np.ndarray, rf: np.ndarray, n: int, mapping: np.ndarray | None, offset: int):
    """(count_pred, count_ref, count_both) over dense indices 0..n-1 for one slice of voxels.

    Up to ``JOINT_MAX`` indices, one histogram of ``pred * n + ref`` (the confusion matrix) gives
    all three; beyond, three histograms (pred, ref, and pred where equal) keep memory at O(n).
    """
    joint = n <= JOINT_MAX
    if joint:
        cm = np.zeros(n * n, np.int64)
    else:
        cp = np.zeros(n, np.int64)
        cr = np.zeros(n, np.int64)
        cb = np.zeros(n + 1, np.int64)
    for s in range(0, pf.size, CHUNK):
        a = pf[s : s + CHUNK]
        b = rf[s : s + CHUNK]
        if mapping is not None:
            a = mapping[a.astype(np.intp) - offset]
            b = mapping[b.astype(np.intp) - offset]
        elif offset or joint:
            a = a.astype(np.intp) - offset
            b = b.astype(np.intp) - offset if offset else b
        if joint:
            a *= n
            a += b
            cm += np.bincount(a, minlength=n * n)
        else:
            cp += np.bincount(a, minlength=n)
            cr += np.bincount(b, minlength=n)
            cb += np.bincount(np.where(a == b, a, n), minlength=n + 1)
    if joint:
        m = cm.reshape(n, n)
        return m.sum(axis=1), m.sum(axis=0), np.diagonal(m).copy()
    return cp, cr, cb[:n]


def overlap_counts(
    pred: np.ndarray,
    ref: np.ndarray,
    merge: Sequence[tuple[int, int, int]] | None = None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(labels, voxels in pred, voxels in ref, voxels in both) for every label in either volume.

    ``merge``: (first, last, target) ranges applied to both volumes first.
    """
    pred = _as_labels(pred, "prediction")
    ref = _as_labels(ref, "reference")
    if pred.shape != ref.shape:
        raise DiceInputError(f"shapes differ: prediction {pred.shape}, reference {ref.shape}")
    pf = pred.reshape(-1)
    rf = ref.reshape(-1)
    if pf.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty, empty
    lo = int(min(pf.min(), rf.min()))
    hi = int(max(pf.max(), rf.max()))
    values: np.ndarray | None = None  # dense index -> label value, when not direct
    mapping: np.ndarray | None = None
    offset = 0
    if hi - lo < DIRECT_RANGE:
        n = hi - lo + 1
        offset = lo
        if merge:
            mapping = np.arange(n, dtype=np.int64)
            vals = np.arange(lo, hi + 1)
            targets = vals.copy()
            for first, last, target in merge:
                targets[(vals >= first) & (vals <= last)] = target
            values, mapping = np.unique(targets, return_inverse=True)
            n = len(values)
    else:
        uniq = np.unique(
            np.concatenate(
                [np.unique(pf[s : s + (1 << 22)]) for s in range(0, pf.size, 1 << 22)]
                + [np.unique(rf[s : s + (1 << 22)]) for s in range(0, rf.size, 1 << 22)]
            )
        )
        targets = uniq.copy()
        for first, last, target in merge or ():
            targets[(uniq >= first) & (uniq <= last)] = target
        values, inverse = np.unique(targets, return_inverse=True)
        n = len(values)
        pf = np.searchsorted(uniq, pf)  # dense index of each voxel's value (new arrays: sparse path)
        rf = np.searchsorted(uniq, rf)
        mapping = inverse.astype(np.int64)
        offset = 0
    workers = max(1, min(threads or 2, os.cpu_count() or 1, pf.size // CHUNK))
    if workers == 1:
        cp, cr, cb = _histograms(pf, rf, n, mapping, offset)
    else:
        bounds = np.linspace(0, pf.size, workers + 1).astype(np.int64)
        with ThreadPoolExecutor(workers) as pool:
            parts = list(
                pool.map(
                    lambda i: _histograms(
                        pf[bounds[i] : bounds[i + 1]], rf[bounds[i] : bounds[i + 1]], n, mapping, offset
                    ),
                    range(workers),
                )
            )
        cp, cr, cb = (sum(x) for x in zip(*parts, strict=False))
    present = np.flatnonzero(cp + cr)
    labels = values[present] if values is not None else present + offset
    return labels.astype(np.int64), cp[present], cr[present], cb[present]


def dice(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: Sequence[int] | None = None,
    names: Mapping[int, str] | None = None,
    include_background: bool = False,
    merge: Sequence[tuple[int, int, int]] | None = None,
    voxel_volume_mm3: float = 1.0,
    names_source: str = "",
    merge_name: str = "",
) -> DiceResult:
    """Per-label Dice, volumes and volume differences of two label volumes (see module doc)."""
    if names is None:
        from mlflow_wattsup.analysis.labels import default_names

        names, names_source = default_names()
    found, n_pred, n_ref, n_both = overlap_counts(pred, ref, merge)
    index = {int(v): i for i, v in enumerate(found)}
    wanted = [int(v) for v in labels] if labels is not None else [int(v) for v in found]
    if not include_background and labels is None:
        wanted = [v for v in wanted if v != 0]
    scores = []
    absent = []
    for v in dict.fromkeys(wanted):
        i = index.get(v)
        if i is None:
            absent.append(v)
            continue
        denom = int(n_pred[i] + n_ref[i])
        scores.append(
            LabelScore(
                v,
                metric_name(v, names),
                2.0 * int(n_both[i]) / denom,
                int(n_pred[i]),
                int(n_ref[i]),
                int(n_both[i]),
                voxel_volume_mm3,
            )
        )
    return DiceResult(tuple(scores), voxel_volume_mm3, tuple(absent), names_source, merge_name)


# -- files ------------------------------------------------------------------------------------


@dataclass
class LabelVolume:
    path: Path
    data: np.ndarray
    affine: np.ndarray
    zooms: tuple[float, ...] = field(default_factory=tuple)


def load_label_volume(path: str | os.PathLike) -> LabelVolume:
    """Read a label volume (.mgz, .mgh, .nii, .nii.gz) without scaling to float."""
    import nibabel as nib

    p = Path(path)
    if not p.exists():
        raise DiceInputError(f"{p}: no such file")
    try:
        img = nib.load(str(p))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel raises many kinds on bad files
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DiceInputError(f"{p}: cannot read as an image ({msg})") from None
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DiceInputError(f"{p}: expected a 3D label volume, got shape {data.shape}")
    return LabelVolume(
        p,
        _as_labels(data, str(p)),
        np.asarray(img.affine, float),
        tuple(float(z) for z in img.header.get_zooms()[:3]),
    )


def check_same_grid(a: LabelVolume, b: LabelVolume) -> None:
    """One-line error naming both files when shapes or affines differ (we never resample)."""
    if a.data.shape != b.data.shape:
        raise DiceInputError(
            f"{a.path} is {'x'.join(map(str, a.data.shape))} but {b.path} is "
            f"{'x'.join(map(str, b.data.shape))}: "
            "resample one onto the other's grid first (e.g. mri_vol2vol --regheader), we never resample"
        )
    diff = float(np.max(np.abs(a.affine - b.affine)))
    if diff > AFFINE_TOL_MM:
        raise DiceInputError(
            f"{a.path} and {b.path} have different affines (largest difference {diff:.4g}): they are not "
            "on the same grid; resample one onto the other first, we never resample"
        )


def dice_files(pred_path, ref_path, **kw) -> DiceResult:
    """Dice of two label files on the same grid; voxel volume from the reference's header."""
    pred = load_label_volume(pred_path)
    ref = load_label_volume(ref_path)
    check_same_grid(pred, ref)
    kw.setdefault("voxel_volume_mm3", float(np.prod(ref.zooms)) if ref.zooms else 1.0)
    return dice(pred.data, ref.data, **kw)
