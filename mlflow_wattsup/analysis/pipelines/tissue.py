"""A 3-class brain tissue segmentation problem on real MRI that ships inside nilearn (offline).

Image: the MNI152 2009 T1 template (skull-stripped, 1 or 2 mm). Reference: inside nilearn's MNI152
brain mask, each voxel takes the most probable of CSF (1), grey matter (2) and white matter (3),
from nilearn's GM and WM probability maps (CSF probability = 1 - GM - WM); outside the mask, 0.

Hold-out: sagittal slices of the left hemisphere (x < 0 mm) train, the right hemisphere
(x > 0 mm) validates; the mid-sagittal slice is in neither. MNI152 is a symmetric-ish population
average, so the right hemisphere is an honest but easy test: it is unseen voxels of the same
template, not a new subject.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TISSUE_NAMES = {1: "CSF", 2: "GM", 3: "WM"}
NAMES_SOURCE = "mni152-tissue (1 CSF, 2 GM, 3 WM)"


@dataclass
class TissueData:
    t1: np.ndarray  # float32 in [0, 1], (x, y, z)
    labels: np.ndarray  # uint8, 0 background, 1 CSF, 2 GM, 3 WM
    mask: np.ndarray  # bool, brain mask
    affine: np.ndarray
    resolution_mm: int
    left: np.ndarray  # x indices of the training (left) hemisphere's sagittal slices
    right: np.ndarray  # x indices of the validation (right) hemisphere's sagittal slices

    @property
    def voxel_volume_mm3(self) -> float:
        return float(self.resolution_mm**3)


def load_tissue(resolution_mm: int = 2) -> TissueData:
    """Load the MNI152 2009 template and build the tissue reference (needs nilearn)."""
    if resolution_mm not in (1, 2):
        raise ValueError(f"resolution must be 1 or 2 mm, got {resolution_mm}")
    from nilearn import datasets

    t1_img = datasets.load_mni152_template(resolution=resolution_mm)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=resolution_mm).get_fdata(), np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=resolution_mm).get_fdata(), np.float32)
    mask = np.asarray(datasets.load_mni152_brain_mask(resolution=resolution_mm).dataobj) > 0
    t1 = np.asarray(t1_img.get_fdata(), np.float32)
    t1 = (t1 - t1.min()) / max(float(t1.max() - t1.min()), 1e-6)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    labels = (np.argmax(np.stack([csf, gm, wm]), axis=0) + 1).astype(np.uint8)
    labels[~mask] = 0
    affine = np.asarray(t1_img.affine, float)
    x_mm = affine[0, 0] * np.arange(t1.shape[0]) + affine[0, 3]
    has_brain = mask.any(axis=(1, 2))
    left = np.flatnonzero((x_mm < 0) & has_brain)
    right = np.flatnonzero((x_mm > 0) & has_brain)
    return TissueData(t1, labels, mask, affine, resolution_mm, left, right)


def hemisphere(volume: np.ndarray, data: TissueData, side: str = "right") -> np.ndarray:
    """A copy of ``volume`` with every sagittal slice outside ``side`` set to 0 (for Dice)."""
    keep = data.right if side == "right" else data.left
    out = np.zeros_like(volume)
    out[keep] = volume[keep]
    return out


def gmm_segment(data: TissueData, seed: int = 0) -> np.ndarray:
    """The classical baseline: a 3-component Gaussian mixture on T1 intensities inside the brain
    mask; components ordered by mean intensity become CSF < GM < WM (T1 contrast)."""
    from sklearn.mixture import GaussianMixture

    x = data.t1[data.mask].reshape(-1, 1)
    gmm = GaussianMixture(n_components=3, random_state=seed).fit(x)
    order = np.argsort(gmm.means_.ravel())  # darkest first
    rank = np.empty(3, np.uint8)
    rank[order] = np.arange(1, 4)
    out = np.zeros(data.t1.shape, np.uint8)
    out[data.mask] = rank[gmm.predict(x)]
    return out


def slabs(t1: np.ndarray, indices: np.ndarray, context: int, pad_to: int) -> np.ndarray:
    """Multi-slice inputs: for each sagittal index, ``2 * context + 1`` neighbouring slices as
    channels (edge slices repeated), zero-padded so both in-plane sizes divide ``pad_to``.
    Shape (n, 2 * context + 1, Y', Z')."""
    n_x, n_y, n_z = t1.shape
    py, pz = (-n_y) % pad_to, (-n_z) % pad_to
    out = np.zeros((len(indices), 2 * context + 1, n_y + py, n_z + pz), np.float32)
    for k, i in enumerate(indices):
        for c, j in enumerate(range(i - context, i + context + 1)):
            out[k, c, :n_y, :n_z] = t1[min(max(j, 0), n_x - 1)]
    return out


def padded_labels(labels: np.ndarray, indices: np.ndarray, pad_to: int) -> np.ndarray:
    n_x, n_y, n_z = labels.shape
    py, pz = (-n_y) % pad_to, (-n_z) % pad_to
    out = np.zeros((len(indices), n_y + py, n_z + pz), np.int64)
    out[:, :n_y, :n_z] = labels[indices]
    return out
