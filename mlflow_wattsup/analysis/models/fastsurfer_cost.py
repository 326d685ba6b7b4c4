"""Model cost of a FastSurfer 2.x run: parameters and MACs of every network that ran.

* Parameters: counted from the checkpoints FastSurfer loaded (tensor sizes of ``model_state``,
  BatchNorm running statistics excluded). FastSurfer's checkpoints hold, next to the weights,
  ``best_metric`` as a ``numpy.float64``, which ``torch.load(weights_only=True)`` refuses; we
  allow exactly the numpy scalar reconstruction it needs (:data:`NUMPY_SAFE_GLOBALS`) and nothing
  else: no code from the file runs.
* MACs: our own definitions of FastSurfer's networks at FastSurfer's configurations
  (:mod:`.fastsurfer_vinn`), one forward pass per slice of each view of the conformed volume
  (``mri/orig.mgz``: 256 slices at 1 mm, 320 at ``--vox_size min`` on a 0.8 mm input; CerebNet:
  the 128 slices of its 128^3 cerebellum patch). Only the
  convolutions are counted (torch's FlopCounterMode on the meta device: shapes only, instant);
  interpolation, normalisation and view aggregation are not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PLANES = ("coronal", "sagittal", "axial")
# asegdkt output labels (FastSurfer's FastSurfer_ColorLUT / segstats --ids): FreeSurfer's
# aparc.DKTatlas+aseg also holds 30/62 (vessel), 72, 80, 85, 251-255, 1000/2000, which FastSurfer
# never predicts
_DKT = [2, 3, *range(5, 32), 34, 35]
FASTSURFER_LABELS = frozenset(
    [0, 2, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28, 31, 41, 43, 44, 46, 47, 49]
    + [50, 51, 52, 53, 54, 58, 60, 63, 77]
    + [1000 + d for d in _DKT]
    + [2000 + d for d in _DKT]
)


def numpy_safe_globals() -> list:
    """What unpickling a numpy float64 scalar reconstructs, nothing more: the scalar constructor
    under both its numpy 1.x and 2.x module names (a checkpoint saved with numpy 1.x, as
    FastSurfer's are, names ``numpy.core.multiarray.scalar``), and the float64 dtype."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    names = ("numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar")
    return [np.dtype, type(np.dtype(np.float64)), *((scalar, n) for n in names)]


def checkpoint_params(path: str | Path) -> int:
    """Parameters in one FastSurfer checkpoint (``weights_only`` loading, numpy scalars allowed).

    Raises ``OSError``/``RuntimeError``/``pickle.UnpicklingError`` for an unreadable file."""
    import torch

    with torch.serialization.safe_globals(numpy_safe_globals()):
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict):
        state = state.get("model_state", state.get("state_dict", state))
    if not isinstance(state, dict):
        raise ValueError(f"{path}: no model_state in the checkpoint")
    return int(
        sum(
            v.numel()
            for k, v in state.items()
            if hasattr(v, "numel") and "running_" not in k and "num_batches_tracked" not in k
        )
    )


def default_checkpoints(home: Path | None, module: str) -> dict[str, str]:
    """Where FastSurfer keeps a module's checkpoints by default (CerebNet does not log them)."""
    from mlflow_wattsup.analysis.pipelines.fastsurfer import CHECKPOINT_FILES

    if home is None:
        return {}
    return {p: str(home / "checkpoints" / n) for p, n in CHECKPOINT_FILES.get(module, {}).items()}


def conformed_size(orig: Path) -> int:
    """Slices per view: the conformed volume's side (``orig.mgz``), 256 if it cannot be read."""
    try:
        import nibabel as nib

        return int(max(nib.load(str(orig)).shape[:3]))
    except Exception:
        return 256


@dataclass
class Cost:
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def model_cost(modules, logged: dict[str, dict[str, str]], home: Path | None, orig: Path) -> Cost:
    """Per network (``asegdkt``, ``hypvinn``, ``cerebnet``) and total: ``params/<net>``,
    ``macs/<net>``, ``params``, ``macs``, ``flops`` (= 2 x MACs)."""
    from mlflow_wattsup.analysis.models import fastsurfer_vinn as nets

    size = conformed_size(orig)
    out = Cost()
    params_src, shapes, total_p, total_m = [], [], 0, 0
    ran = [m for m in ("asegdkt", "cerebnet", "hypvinn") if m in modules]
    for net in ran:
        ckpts = logged.get(net) or default_checkpoints(home, net)
        per_plane = {}
        for plane in PLANES:
            path = ckpts.get(plane)
            try:
                per_plane[plane] = checkpoint_params(path) if path else None
            except Exception:
                per_plane[plane] = None
        slice_macs, builtin_params = nets.plane_costs(net, size)
        if all(per_plane.values()):
            params = sum(per_plane.values())
            params_src.append(f"{net}=checkpoints")
        else:
            params = sum(builtin_params.values())
            params_src.append(f"{net}=builtin")
        slices = nets.slices_per_view(net, size)
        macs = sum(slice_macs[p] * slices for p in PLANES)
        shapes.append(
            f"{net}: 3 views x {slices} slices of {'x'.join(map(str, nets.input_shape(net, size)[1:]))}"
        )
        out.metrics[f"params/{net}"] = params
        out.metrics[f"macs/{net}"] = macs
        total_p += params
        total_m += macs
    out.metrics.update(
        {"params": total_p, "params_trainable": total_p, "macs": total_m, "flops": 2 * total_m}
    )
    out.tags = {  # facts, unprefixed: the MLflow layer gives them their keys
        "flops_backend": "torch-flop-counter",
        "flops_input_shape": "; ".join(shapes),
        "model_source": "builtin-fastsurfer2",
        "params_source": " ".join(params_src),
    }
    return out


def shared_labels(seg: Path, reference: Path) -> tuple[list[int], list[int]]:
    """Labels to score (present in either volume and predictable by FastSurfer, background
    excluded) and the reference labels left out because FastSurfer never predicts them."""
    import numpy as np

    from mlflow_wattsup.analysis.dice import load_label_volume

    present = set(np.unique(load_label_volume(seg).data).tolist())
    ref = set(np.unique(load_label_volume(reference).data).tolist())
    labels = sorted((present | ref) & FASTSURFER_LABELS - {0})
    excluded = sorted(ref - FASTSURFER_LABELS)
    return labels, excluded
