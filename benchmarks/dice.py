"""Dice speed and memory against SimpleITK's LabelOverlapMeasuresImageFilter, same run.

    python benchmarks/dice.py [--size 256] [--reps 5]

Two 256^3 label volumes with 98 FreeSurfer IDs (aseg + DKT cortical parcels; regions of 8^3
voxels, the prediction shifted by one voxel and 5% of voxels relabelled) in uint8 (dense 0..98),
int16 and int32. For each: our ``overlap_counts``+Dice time (best of ``reps``) and its peak extra
memory (tracemalloc), SimpleITK's filter time (best of ``reps``, images already built, 2 threads
as ITK defaults here), the ratio ours / SimpleITK, and the largest Dice difference over every
label (must be <= 1e-9). Target: ratio <= 1.0 and extra memory < 200 MB.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc

import numpy as np


def volumes(size: int, dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from mlflow_wattsup.analysis.labels import ASEG, DKT_INDICES

    ids = np.array(
        sorted(
            [k for k in ASEG if k < 100][:36]
            + [1000 + i for i in DKT_INDICES][:31]
            + [2000 + i for i in DKT_INDICES][:32]
        )
    )
    rng = np.random.default_rng(42)
    block = 8
    coarse = rng.integers(0, len(ids), size=(size // block,) * 3)
    dense = coarse.repeat(block, 0).repeat(block, 1).repeat(block, 2)
    pred = np.roll(dense, 1, axis=0)
    noise = rng.random(dense.shape) < 0.05
    pred[noise] = rng.integers(0, len(ids), int(noise.sum()))
    if dtype == np.uint8:
        return pred.astype(np.uint8), dense.astype(np.uint8), np.arange(len(ids))
    return ids[pred].astype(dtype), ids[dense].astype(dtype), ids


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()

    import SimpleITK as sitk

    from mlflow_wattsup.analysis.dice import dice

    ok = True
    print(
        f"{'dtype':<6} {'labels':>6} {'ours s':>8} {'sitk s':>8} {'ratio':>6} {'ours MB':>8} "
        f"{'max |diff|':>11}"
    )
    for dtype in (np.uint8, np.int16, np.int32):
        pred, ref, ids = volumes(args.size, dtype)
        ours = []
        peak = 0
        for _ in range(args.reps):
            tracemalloc.start()
            t = time.perf_counter()
            res = dice(pred, ref, names={}, include_background=True)
            ours.append(time.perf_counter() - t)
            peak = max(peak, tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
        a = sitk.GetImageFromArray(pred)
        b = sitk.GetImageFromArray(ref)
        f = sitk.LabelOverlapMeasuresImageFilter()
        theirs = []
        for _ in range(args.reps):
            t = time.perf_counter()
            f.Execute(a, b)
            theirs.append(time.perf_counter() - t)
        sitk_labels = sorted(int(v) for v in np.union1d(np.unique(pred), np.unique(ref)))
        diff = max(abs(s.dice - f.GetDiceCoefficient(s.label)) for s in res.scores)
        same_labels = res.labels == sitk_labels
        ratio = min(ours) / min(theirs)
        ok &= ratio <= 1.0 and peak < 200e6 and diff <= 1e-9 and same_labels
        print(
            f"{np.dtype(dtype).name:<6} {len(res.scores):>6} {min(ours):8.3f} {min(theirs):8.3f} "
            f"{ratio:6.2f} "
            f"{peak / 1e6:8.1f} {diff:11.2e}{'' if same_labels else '  LABELS DIFFER'}"
        )
    print(
        f"SimpleITK {sitk.Version.VersionString()}, ITK threads "
        f"{sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()}"
    )
    print("PASS" if ok else "MISS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
