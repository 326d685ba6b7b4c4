"""``projects/segmentation``: brain tissue segmentation on real MRI shipped inside pip packages.

Entry points (``python -m mlflow_wattsup.projects.segmentation ENTRY --param value ...``):

``train``
    A FastSurferCNN-style 2D network (competitive dense blocks, multi-slice input) on sagittal
    slices of the MNI152 template's left hemisphere; validation Dice on the right hemisphere after
    every epoch. Logs params/FLOPs, per-epoch energy, loss, validation Dice, the predicted total
    energy, and the model (``mlflow.pytorch.log_model``).
``infer``
    Loads a model by MLflow model URI, segments every sagittal slice of the volume, logs the
    inference energy, FLOPs (one forward pass over all slices), runtime and the right-hemisphere
    Dice (the held-out half). ``prune=FRACTION`` first zeroes that fraction of every conv weight
    (L1 unstructured, see analysis/pruning.py).
``classical``
    A Gaussian mixture on T1 intensities (the "traditional pipeline" baseline): energy, runtime,
    Dice; no neural network, so no FLOPs (tag ``wattsup.model_cost=n/a``).
``brain_extraction``
    deepbet (pretrained, weights inside its wheel): brain mask of a T1 with skull, Dice against a
    reference mask. Defaults: Colin27 ``ch2.nii.gz`` / ``ch2bet.nii.gz`` from Debian's
    ``mricron-data`` when installed. FLOPs are counted during the real run. ``prune=FRACTION``
    zeroes that fraction of every conv weight of both deepbet networks (L1 unstructured),
    ``prune_channels=FRACTION`` removes that fraction of the channels between paired convs
    (structured; see analysis/pruning.py); either way the run logs ``macs_nonzero``,
    ``params_nonzero`` and ``sparsity`` beside the dense ``macs`` and ``params``.

Every entry tags ``wattsup.pipeline`` and ``wattsup.device`` (the report groups on them).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

from mlflow_wattsup.projects.common import add_carbon_args
from mlflow_wattsup.projects.params import (
    ParamError,
    choice_param,
    entry_point,
    float_param,
    int_param,
    is_none,
    path_param,
)
from mlflow_wattsup.sink import keys

COLIN_T1 = "/usr/share/mricron/templates/ch2.nii.gz"
COLIN_BRAIN = "/usr/share/mricron/templates/ch2bet.nii.gz"


def _device(value: str) -> str:
    """``cpu`` or ``gpu`` from cpu/gpu/auto; gpu without CUDA fails at once."""
    value = choice_param("device", value, ("cpu", "gpu", "auto"))
    if value == "cpu":
        return "cpu"
    import torch

    if torch.cuda.is_available():
        return "gpu"
    if value == "gpu":
        raise ParamError(
            "device=gpu but torch sees no CUDA GPU (CPU-only torch, no driver, or no device); use device=cpu or device=auto"
        )
    return "cpu"


def _track(args, name: str, pipeline: str, device: str, **extra_tags):
    import mlflow_wattsup

    tags = {keys.PIPELINE: pipeline, keys.DEVICE: device, **extra_tags}
    return mlflow_wattsup.track(
        # under `mlflow run` the run exists and keeps its name (the demo names its steps)
        None if os.environ.get("MLFLOW_RUN_ID") else name,
        experiment=args.experiment,
        region=None if is_none(args.region) else args.region,
        carbon_intensity=None if is_none(args.carbon_intensity) else args.carbon_intensity,
        pue=None if is_none(args.pue) else args.pue,
        tags=tags,
    )


@contextlib.contextmanager
def _tissue_run(args, name: str, pipeline: str, device: str, res: int, training: bool = False, **extra_tags):
    """A tracked run over the MNI152 2009 tissue data at ``res`` mm: yields (the track, the data),
    the data loaded inside the measurement and logged as the run's inputs."""
    from mlflow_wattsup.analysis.pipelines.tissue import load_tissue

    with _track(args, name, pipeline, device, **{keys.DATASET: f"mni152-2009-{res}mm"}, **extra_tags) as t:
        data = load_tissue(res)
        _log_inputs(t, _tissue_inputs(data, training))
        yield t, data


def _log_inputs(t, images) -> None:
    """The images the run read, as MLflow dataset inputs (a failure is a warning, not an error)."""
    if t.run_id is None:  # store unreachable: the run is created later from the spool
        return
    from mlflow.tracking import MlflowClient

    from mlflow_wattsup.run.datasets import log_images

    try:
        log_images(MlflowClient(), t.run_id, images)
    except Exception as exc:
        print(f"segmentation: dataset inputs not logged ({type(exc).__name__}: {exc})", file=sys.stderr)


def _tissue_inputs(data, training: bool = False):
    """nilearn's MNI152 2009 T1 and the tissue reference, digests of the voxels as processed."""
    from nilearn.datasets.struct import GM_MNI152_FILE_PATH, MNI152_FILE_PATH

    from mlflow_wattsup.run.datasets import image_array

    name = f"mni152-2009-{data.resolution_mm}mm"
    return [
        image_array(name, MNI152_FILE_PATH, [data.t1], "training" if training else "evaluation"),
        image_array(f"{name}-tissue", GM_MNI152_FILE_PATH, [data.labels], "reference"),
    ]


def _tissue_dice(pred, data):
    from mlflow_wattsup.analysis.dice import dice
    from mlflow_wattsup.analysis.pipelines.tissue import NAMES_SOURCE, TISSUE_NAMES, hemisphere

    return dice(
        hemisphere(pred, data),
        hemisphere(data.labels, data),
        names=TISSUE_NAMES,
        voxel_volume_mm3=data.voxel_volume_mm3,
        names_source=NAMES_SOURCE,
    )


def _predict(model, data, context: int, device, batch: int = 16):
    """Segment every sagittal slice; outside the brain mask is background."""
    import numpy as np
    import torch

    from mlflow_wattsup.analysis.pipelines.tissue import slabs

    idx = np.arange(data.t1.shape[0])
    x = torch.from_numpy(slabs(data.t1, idx, context, 8))
    out = np.zeros(data.labels.shape, np.uint8)
    try:
        model.eval()
    except NotImplementedError:  # an exported (pt2) model is already traced in eval mode
        pass
    with torch.no_grad():
        for b in range(0, len(idx), batch):
            pred = model(x[b : b + batch].to(device)).argmax(1).cpu().numpy()
            out[b : b + batch] = pred[:, : data.t1.shape[1], : data.t1.shape[2]]
    out[~data.mask] = 0
    return out, tuple(x.shape)


# -- train --------------------------------------------------------------------------------------


def train(argv) -> int:
    p = argparse.ArgumentParser(prog="segmentation train")
    p.add_argument("--epochs", default="30")
    p.add_argument("--resolution", default="2")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", default="8")
    p.add_argument("--lr", default="0.003")
    p.add_argument("--filters", default="16")
    p.add_argument("--context", default="2", help="neighbouring slices on each side (input = 2c+1 slices)")
    p.add_argument("--seed", default="0")
    add_carbon_args(p)
    args = p.parse_args(argv)
    epochs = int_param("epochs", args.epochs, 1, 10_000)
    res = int_param("resolution", args.resolution, 1, 2)
    batch = int_param("batch_size", args.batch_size, 1, 1024)
    lr = float_param("lr", args.lr, 1e-9)
    filters = int_param("filters", args.filters, 1, 512)
    context = int_param("context", args.context, 0, 10)
    seed = int_param("seed", args.seed, 0)
    device = _device(args.device)

    import torch

    torch.manual_seed(seed)
    dev = torch.device("cuda" if device == "gpu" else "cpu")
    with _tissue_run(args, "train", "fastsurfercnn-train", device, res, training=True) as (t, data):
        _train(t, data, epochs, res, batch, lr, filters, context, dev)
    print(f"model: runs:/{t.run_id}/model")
    return 0


def _train(t, data, epochs, res, batch, lr, filters, context, dev) -> None:
    import mlflow
    import mlflow.pytorch
    import torch

    from mlflow_wattsup.analysis.models.fastsurfer_cnn import FastSurferCNN
    from mlflow_wattsup.analysis.pipelines.tissue import padded_labels, slabs

    x = torch.from_numpy(slabs(data.t1, data.left, context, 8))
    y = torch.from_numpy(padded_labels(data.labels, data.left, 8))
    net = FastSurferCNN(in_channels=2 * context + 1, num_classes=4, filters=filters, kernel=5, levels=3)
    model = net.to(dev)
    mlflow.log_params(
        {
            "epochs": epochs,
            "resolution_mm": res,
            "batch_size": batch,
            "lr": lr,
            "filters": filters,
            "input_slices": 2 * context + 1,
            "train_slices": len(data.left),
            "val_slices": len(data.right),
            "holdout": "train left hemisphere, validate right",
        }
    )
    t.log_model_cost(
        model, (1, 2 * context + 1, x.shape[2], x.shape[3]), samples_seen=epochs * len(data.left)
    )
    opt = torch.optim.Adam(model.parameters(), lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    ep = t.epochs(planned=epochs)
    for epoch in range(epochs):
        with ep.epoch(epoch):
            model.train()
            perm = torch.randperm(len(x))
            total = 0.0
            for b in range(0, len(x), batch):
                i = perm[b : b + batch]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x[i].to(dev)), y[i].to(dev))
                loss.backward()
                opt.step()
                total += loss.item() * len(i)
            sched.step()
        pred, _ = _predict(model, data, context, dev)
        val = _tissue_dice(pred, data)
        mlflow.log_metrics({"loss": total / len(x), "val_dice_mean": val.mean}, step=epoch)
        print(f"epoch {epoch + 1}/{epochs} loss {total / len(x):.4f} val Dice {val.mean:.4f}", flush=True)
    t.log_dice(val)
    # pt2 (torch.export) rather than pickle: loading it runs no pickled code. A batch of two as
    # the example keeps the batch dimension dynamic.
    model.cpu().eval()
    mlflow.pytorch.log_model(
        model,
        name="model",
        input_example=x[:2].numpy(),
        serialization_format="pt2",
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "mlflow-wattsup"],
    )


# -- infer --------------------------------------------------------------------------------------


def infer(argv) -> int:
    p = argparse.ArgumentParser(prog="segmentation infer")
    p.add_argument("--model-uri", required=True)
    p.add_argument("--resolution", default="2")
    p.add_argument("--device", default="auto")
    p.add_argument("--context", default="2")
    p.add_argument("--prune", default="0", help="fraction of every conv weight to zero (L1 unstructured)")
    add_carbon_args(p)
    args = p.parse_args(argv)
    prune = _fraction("prune", args.prune)
    if is_none(args.model_uri):
        raise ParamError("model_uri is required, e.g. model_uri=runs:/<train run id>/model")
    res = int_param("resolution", args.resolution, 1, 2)
    context = int_param("context", args.context, 0, 10)
    device = _device(args.device)

    import mlflow
    import mlflow.pytorch
    import torch

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    try:
        model = mlflow.pytorch.load_model(args.model_uri, map_location=dev)
    except Exception as exc:
        raise ParamError(
            f"model_uri={args.model_uri}: cannot load an MLflow PyTorch model ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''})"
        ) from None
    tags = {keys.MODEL_URI: args.model_uri}
    with _tissue_run(args, "infer", "fastsurfercnn-infer", device, res, **tags) as (t, data):
        if prune:
            _prune(t, [model], prune, 0.0)
        start = time.perf_counter()
        with t.stage("inference"):
            pred, shape = _predict(model, data, context, dev)
        mlflow.log_metric("inference_s", time.perf_counter() - start)
        cost = t.log_model_cost(
            model, (1, *shape[1:]), passes=shape[0]
        )  # one forward pass per sagittal slice
        _log_pruning([model], cost.macs - _zero_macs(model, (1, *shape[1:]), dev) * shape[0])
        t.log_dice(_tissue_dice(pred, data))
    return 0


# -- classical ----------------------------------------------------------------------------------


def classical(argv) -> int:
    p = argparse.ArgumentParser(prog="segmentation classical")
    p.add_argument("--resolution", default="2")
    p.add_argument("--seed", default="0")
    add_carbon_args(p)
    args = p.parse_args(argv)
    res = int_param("resolution", args.resolution, 1, 2)
    seed = int_param("seed", args.seed, 0)

    from mlflow_wattsup.analysis.pipelines.tissue import gmm_segment

    tags = {keys.MODEL_COST: "n/a: no neural network"}
    with _tissue_run(args, "classical", "gmm-classical", "cpu", res, **tags) as (t, data):
        with t.stage("segmentation"):
            pred = gmm_segment(data, seed)
        t.log_dice(_tissue_dice(pred, data))
    return 0


# -- brain extraction ---------------------------------------------------------------------------


def brain_extraction(argv) -> int:
    p = argparse.ArgumentParser(prog="segmentation brain_extraction")
    p.add_argument("--t1", default="")
    p.add_argument("--reference-mask", default="")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prune", default="0", help="fraction of every conv weight to zero (L1 unstructured)")
    p.add_argument("--prune-channels", default="0", help="fraction of paired convs' channels to remove")
    add_carbon_args(p)
    args = p.parse_args(argv)
    prune = _fraction("prune", args.prune)
    channels = _fraction("prune_channels", args.prune_channels, below_one=True)
    t1 = path_param("t1", args.t1) or _default(COLIN_T1, "t1")
    ref = path_param("reference_mask", args.reference_mask)
    if ref is None and is_none(args.t1):
        ref = _default(COLIN_BRAIN, "reference_mask")
    device = _device(args.device)
    try:
        from deepbet.bet import BrainExtraction
    except ImportError:
        raise ParamError(
            "deepbet is not installed: pip install 'mlflow-wattsup[demo]' (or pip install deepbet)"
        ) from None
    from mlflow_wattsup.run.datasets import image_file

    colin = str(t1) == COLIN_T1
    images = [image_file(t1, "input", "colin27-ch2" if colin else None)]
    if ref is not None:
        images.append(image_file(ref, "reference", "colin27-ch2bet" if str(ref) == COLIN_BRAIN else None))
    tracked = _track(args, "brain_extraction", "deepbet", device, **{keys.T1: str(t1)})
    _brain_extraction(tracked, BrainExtraction, t1, ref, device, images, prune, channels)
    return 0


def _brain_extraction(tracked, BrainExtraction, t1, ref, device, images, prune=0.0, channels=0.0) -> None:
    import mlflow
    import nibabel as nib
    import numpy as np

    from mlflow_wattsup.analysis.dice import check_same_grid, dice, load_label_volume
    from mlflow_wattsup.analysis.flops import counting

    with tracked as t:
        _log_inputs(t, images)
        bet = BrainExtraction(no_gpu=device != "gpu")
        nets = [bet.model, bet.bbox_model]
        if prune or channels:
            _prune(t, nets, prune, channels)
        with counting(*nets) as c, t.stage("deepbet"):
            try:
                _, mask_img, tiv = bet.run(str(t1))
            except AssertionError as exc:  # deepbet's own checks, e.g. no brain found
                hint = (
                    f": its networks were pruned (prune={prune:g}, prune_channels={channels:g}), try less"
                    if prune or channels
                    else ""
                )
                raise ParamError(f"deepbet failed on t1={t1} ({exc}){hint}") from None
        params = sum(q.numel() for q in bet.model.parameters()) + sum(
            q.numel() for q in bet.bbox_model.parameters()
        )
        mlflow.log_metrics({"params": params, "macs": c.macs, "flops": 2 * c.macs, "tiv_cm3": float(tiv)})
        _log_pruning(nets, c.macs_nonzero)
        mlflow.set_tags(
            {
                keys.FLOPS_BACKEND: "torch-flop-counter (counted during the run)",
                keys.FLOPS_INPUT_SHAPE: "the run's inputs (bbox model 128^3, brain model 256^3)",
            }
        )
        if ref is not None:
            pred = np.asanyarray(mask_img.dataobj) > 0
            ref_vol = load_label_volume(ref)
            mask_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"wattsup-mask-{os.getpid()}.nii.gz")
            nib.save(nib.Nifti1Image(pred.astype(np.uint8), mask_img.affine), mask_path)
            pred_vol = load_label_volume(mask_path)
            os.unlink(mask_path)
            check_same_grid(pred_vol, ref_vol)
            t.log_dice(
                dice(pred_vol.data > 0, ref_vol.data > 0, names={1: "brain"}, names_source="binary mask")
            )


def _fraction(name: str, value: str, below_one: bool = False) -> float:
    v = float_param(name, "0" if is_none(value) else value, 0.0)
    if v > 1 or (below_one and v == 1):
        raise ParamError(f"{name}={value!r} must be a fraction from 0 to {'below 1' if below_one else '1'}")
    return v


def _prune(t, nets, prune: float, channels: float) -> None:
    """Prune ``nets`` in place (channels first, then weights) in the stage ``prune``; tag what was done."""
    import mlflow

    from mlflow_wattsup.analysis.pruning import PruneError, prune_channels, prune_unstructured

    done = []
    with t.stage("prune"):
        try:
            if channels:
                done.append(prune_channels(nets, channels).describe())
            if prune:
                done.append(prune_unstructured(nets, prune).describe())
        except PruneError as exc:
            raise ParamError(str(exc)) from None
    mlflow.set_tag(keys.PRUNE, "; ".join(done))


def _zero_macs(model, shape, dev) -> int:
    """MACs one forward pass on ``shape`` spends on zero weights."""
    import torch

    from mlflow_wattsup.analysis.pruning import zero_weight_macs

    return zero_weight_macs(model, torch.zeros(shape, device=dev))


def _log_pruning(nets, macs_nonzero: int) -> None:
    """``params_nonzero``, ``sparsity``, ``macs_nonzero`` (logged for every run, pruned or not)."""
    import mlflow

    from mlflow_wattsup.analysis.pruning import weight_counts

    total, nonzero = weight_counts(nets)
    mlflow.log_metrics(keys.pruning_metrics(total, nonzero, macs_nonzero))


def _default(path: str, name: str):
    from pathlib import Path

    if not os.path.exists(path):
        raise ParamError(
            f"{name} not given and the default {path} is missing: install Debian's mricron-data "
            f"(apt-get install mricron-data) or pass -P {name}=FILE"
        )
    return Path(path)


ENTRIES = {"train": train, "infer": infer, "classical": classical, "brain_extraction": brain_extraction}


@entry_point("segmentation")
def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ENTRIES:
        raise ParamError(f"first argument must be one of {', '.join(ENTRIES)}")
    return ENTRIES[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
