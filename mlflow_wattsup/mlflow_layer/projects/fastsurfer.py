"""``projects/fastsurfer``: FastSurfer's segmentation (``run_fastsurfer.sh --seg_only``), measured.

Logs the run's energy, carbon and runtime; stages ``coronal``, ``sagittal``, ``axial`` (each
plane's inference, from the durations FastSurfer logs) and ``view_aggregation`` (from the last
plane to the saved segmentation); the parameters and FLOPs of the networks; and, with a reference
segmentation, Dice of ``aparc.DKTatlas+aseg.deep.mgz`` (``dice/*``) and of its aseg-merged form
(``dice_aseg/*``) with FreeSurfer label names.

Model cost: parameters are read from the checkpoints FastSurfer loaded (tensor sizes in the saved
state dict, no code executed). FLOPs come from our own FastSurferCNN definition at FastSurfer's
published sizes (7 slices of 256x256, 64 filters, 79 classes; 51 for the sagittal view), one
forward pass per slice of a 256^3 conformed volume per view, tagged
``wattsup.model_source=builtin-fastsurfercnn`` since FastSurfer's own classes are not imported.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from mlflow_wattsup.mlflow_layer.projects.common import (
    CommandPipeline,
    add_carbon_args,
    carbon_from,
    gpu_available,
    score,
)
from mlflow_wattsup.mlflow_layer.projects.params import (
    ParamError,
    choice_param,
    entry_point,
    int_param,
    name_param,
    path_param,
)

INSTALL_HINT = (
    "FastSurfer not found: install it (git clone https://github.com/Deep-MI/FastSurfer, then its "
    "requirements) and pass -P fastsurfer_home=DIR, set FASTSURFER_HOME, or put run_fastsurfer.sh on PATH"
)
SLICES_PER_VIEW = 256
VIEWS = {"coronal": 79, "sagittal": 51, "axial": 79}  # classes per view in FastSurfer


def find_fastsurfer(home: str | None) -> Path:
    for base in (home, os.environ.get("FASTSURFER_HOME")):
        if base:
            script = Path(base) / "run_fastsurfer.sh"
            if script.is_file():
                return script
            if home and base == home:
                raise ParamError(f"fastsurfer_home={home}: no run_fastsurfer.sh there. {INSTALL_HINT}")
    found = shutil.which("run_fastsurfer.sh")
    if found:
        return Path(found)
    raise ParamError(INSTALL_HINT)


class StageWatcher:
    """Turns deep-seg.log lines into tracker stages (see :mod:`..pipelines.fastsurfer`)."""

    def __init__(self, tracker):
        self.tracker = tracker
        self.last_plane_end: float | None = None
        self.aggregated = False
        self.checkpoints: dict[str, str] = {}

    def __call__(self, line: str, seen: float) -> None:
        from mlflow_wattsup.analysis.pipelines.fastsurfer import Checkpoint, PlaneDone, Saved, parse_line

        item = parse_line(line)
        if isinstance(item, PlaneDone):
            start = max(0.0, seen - item.duration_s)
            self.tracker.add_stage(item.plane, start, seen)
            self.last_plane_end = seen
        elif isinstance(item, Checkpoint) and item.plane:
            self.checkpoints[item.plane] = item.path
        elif isinstance(item, Saved) and self.last_plane_end is not None and not self.aggregated:
            self.tracker.add_stage("view_aggregation", self.last_plane_end, seen)
            self.aggregated = True


def checkpoint_params(path: str) -> int | None:
    """Parameters in a FastSurfer checkpoint, from tensor sizes (``weights_only`` loading)."""
    try:
        import torch

        state = torch.load(path, map_location="meta", weights_only=True)
    except Exception:
        return None
    if isinstance(state, dict):
        state = state.get("model_state", state.get("state_dict", state))
    if not isinstance(state, dict):
        return None
    return int(
        sum(
            v.numel()
            for k, v in state.items()
            if hasattr(v, "numel") and "running_" not in k and "num_batches_tracked" not in k
        )
    )


def log_model_cost(sink, checkpoints: dict[str, str]) -> None:
    from mlflow_wattsup.analysis.flops import model_cost
    from mlflow_wattsup.analysis.models.fastsurfer_cnn import FastSurferCNN

    # one count per distinct network (coronal and axial share the 79-class one)
    per_classes = {
        c: model_cost(FastSurferCNN(7, c), (1, 7, 256, 256), backends=["ptflops-aten"])
        for c in set(VIEWS.values())
    }
    total_macs = sum(per_classes[c].macs * SLICES_PER_VIEW for c in VIEWS.values())
    builtin_params = sum(per_classes[c].params for c in VIEWS.values())
    ckpt = {v: checkpoint_params(p) for v, p in checkpoints.items()}
    have = all(ckpt.get(v) for v in VIEWS)
    params = sum(ckpt.values()) if have else builtin_params
    sink.log_metrics(
        {"params": params, "params_trainable": params, "macs": total_macs, "flops": 2 * total_macs}
    )
    sink.set_tags(
        {
            "wattsup.flops_backend": "ptflops-aten",
            "wattsup.flops_input_shape": f"3 views x {SLICES_PER_VIEW} passes x 1x7x256x256",
            "wattsup.model_source": "builtin-fastsurfercnn",
            "wattsup.params_source": "checkpoints" if have else "builtin-fastsurfercnn",
        }
    )


def log_dice(sink, seg: Path, reference: Path) -> None:
    from mlflow_wattsup.analysis.dice import dice_files
    from mlflow_wattsup.analysis.labels import default_names, parse_merge
    from mlflow_wattsup.mlflow_layer.log import log_dice as _log

    names, source = default_names()
    _log(dice_files(seg, reference, names=names, names_source=source), sink=sink)
    merged = dice_files(
        seg, reference, names=names, names_source=source, merge=parse_merge("aseg"), merge_name="aseg"
    )
    _log(merged, prefix="dice_aseg", sink=sink)


@entry_point("fastsurfer")
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastsurfer", description=__doc__.splitlines()[0])
    p.add_argument("--t1", required=True)
    p.add_argument("--sid", required=True)
    p.add_argument("--sd", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--reference", default="")
    p.add_argument("--threads", default="1")
    p.add_argument("--fastsurfer-home", default="")
    add_carbon_args(p)
    args = p.parse_args(argv)

    # every parameter first: a mistake must cost seconds, not an hour of segmentation
    t1 = path_param("t1", args.t1)
    sid = name_param("sid", args.sid)
    sd = path_param("sd", args.sd, must_exist=False)
    device = choice_param("device", args.device, ("cpu", "gpu", "auto"))
    reference = path_param("reference", args.reference)
    threads = int_param("threads", args.threads, 1, 1024)
    script = find_fastsurfer(None if args.fastsurfer_home.strip() in ("", "none") else args.fastsurfer_home)
    carbon = carbon_from(args)
    if device == "gpu" and not gpu_available():
        raise ParamError(
            "device=gpu but no usable NVIDIA GPU was found (no driver or no device visible to NVML); "
            "use device=cpu or device=auto"
        )
    if device == "auto":
        device = "gpu" if gpu_available() else "cpu"

    sd.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(script),
        "--t1",
        str(t1),
        "--sid",
        sid,
        "--sd",
        str(sd),
        "--seg_only",
        "--device",
        "cuda" if device == "gpu" else "cpu",
        "--threads",
        str(threads),
    ]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow_root")
    run = CommandPipeline(
        "fastsurfer",
        carbon,
        {"wattsup.pipeline": "fastsurfer", "wattsup.device": device, "wattsup.subject": sid},
        args.experiment,
    )
    watcher = StageWatcher(run.tracker)
    subject = sd / sid
    code, signalled = run.execute(
        cmd, watch_file=subject / "scripts" / "deep-seg.log", on_file_line=watcher, poll_s=0.1
    )
    run.stop()
    seg = subject / "mri" / "aparc.DKTatlas+aseg.deep.mgz"
    dice_error = None
    if code == 0:
        try:
            log_model_cost(run.sink, watcher.checkpoints)
        except Exception as exc:  # model cost is extra information: never fail the run for it
            run.sink.set_tags({"wattsup.warning.flops": f"{type(exc).__name__}: {exc}"})
        if reference is not None:
            dice_error = score(run.sink, seg, reference, log_dice)
    return run.finish(code, signalled, dice_error, "fastsurfer")


if __name__ == "__main__":
    sys.exit(main())
