"""``projects/fastsurfer``: FastSurfer's segmentation (``run_fastsurfer.sh --seg_only``), measured.

FastSurfer runs in its own environment (``py``: its Python interpreter, passed as ``--py``; an
Apptainer/Singularity image, ``fastsurfer_image=PATH.sif``; or FastSurfer's Docker image,
``fastsurfer_image=docker://deepmi/fastsurfer:TAG``, also ``podman://``): we measure it from
outside and never replace its packages. The Docker image runs as its documentation runs it
(``--rm``, ``--user`` the caller, ``t1``'s and ``sd``'s folders mounted, ``--gpus`` for a GPU run;
see :mod:`~mlflow_wattsup.tracking.container_run`), and the container is attributed to the run
through its cgroup. Logs the run's energy, carbon and runtime; one stage per FastSurfer
program (``asegdkt``, ``biasfield``, ``segstats``, ``cerebnet``, ``hypvinn``), the asegdkt
network's planes ``coronal``, ``sagittal``, ``axial`` and ``view_aggregation``, HypVINN's
``hypvinn.<plane>`` (durations as FastSurfer logged them); the parameters and MACs of every
network that ran, per network and in total; and, with a reference segmentation, Dice of
``aparc.DKTatlas+aseg.deep.mgz`` on the labels both label spaces hold (``dice/*``) and of its
aseg-merged form (``dice_aseg/*``).

Before anything starts (seconds): the interpreter imports FastSurfer's dependencies, the
checkpoints of the networks that will run are on disk (FastSurfer would download them, counted
in the run, and fail offline), the container runtime exists (and, for Docker/Podman, holds the
image: its checkpoints are inside). ``threads`` is enforced as the
child's CPU affinity (FastSurfer 2.x does not pass ``--threads`` to the asegdkt network, which
uses every CPU it may run on); the CPUs used are tagged.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from mlflow_wattsup.projects.common import (
    CommandPipeline,
    add_carbon_args,
    carbon_from,
    gpu_available,
    score,
)
from mlflow_wattsup.projects.params import (
    ParamError,
    choice_param,
    entry_point,
    int_param,
    is_none,
    name_param,
    path_param,
)
from mlflow_wattsup.sink import keys
from mlflow_wattsup.tracking.container_run import check_image, parse_image, run_command

INSTALL_HINT = (
    "FastSurfer not found: install it (git clone https://github.com/Deep-MI/FastSurfer, then its "
    "requirements) and pass -P fastsurfer_home=DIR, set FASTSURFER_HOME, or put run_fastsurfer.sh on PATH"
)
# what FastSurfer's python scripts import at their top (run_prediction.py of asegdkt, N4, segstats)
PY_MODULES = ("torch", "numpy", "nibabel", "scipy", "skimage", "yacs", "h5py", "SimpleITK", "pandas")
FASTSURFER_PY_DEFAULT = "python3.10"  # run_fastsurfer.sh 2.2-2.4 default (`python3.10 -s`)
IMAGE_HOME = "/fastsurfer"  # where FastSurfer's own images keep it


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


def bool_param(name: str, value: object) -> bool:
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("", "0", "false", "no", "off", "none"):
        return False
    raise ParamError(f"{name}={value!r} must be true or false")


def check_interpreter(py: str, timeout_s: float = 120.0) -> str:
    """The interpreter's absolute path, once it has imported FastSurfer's dependencies (a few
    seconds); a one-line ParamError otherwise."""
    exe = shutil.which(py)
    if not exe:
        raise ParamError(
            f"py={py}: no such Python interpreter (FastSurfer's default is {FASTSURFER_PY_DEFAULT}); "
            "pass -P py=/path/to/fastsurfer-env/bin/python, the environment FastSurfer's requirements are installed in"
        )
    code = (
        "import importlib,sys\n"
        f"for m in {PY_MODULES!r}:\n"
        "    try: importlib.import_module(m)\n"
        "    except Exception as e: print(m, type(e).__name__, e); sys.exit(3)\n"
    )
    try:
        r = subprocess.run([exe, "-s", "-c", code], capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise ParamError(
            f"py={py}: importing FastSurfer's dependencies took over {timeout_s:.0f} s"
        ) from None
    if r.returncode != 0:
        last_err = r.stderr.strip().splitlines()[-1:]
        why = r.stdout.strip() or (last_err[0] if last_err else f"exit {r.returncode}")
        raise ParamError(
            f"py={exe} cannot import FastSurfer's dependencies ({why}): pass -P py= the interpreter of the "
            "environment FastSurfer's requirements.txt is installed in"
        )
    return exe


def modules_to_run(no_cereb: bool, no_hypothal: bool, no_biasfield: bool) -> list[str]:
    """FastSurfer >= 2.3 --seg_only: asegdkt, then N4 bias field + segstats, CerebNet, HypVINN
    (``--no_biasfield`` implies ``--no_hypothal`` in run_fastsurfer.sh)."""
    mods = ["asegdkt"]
    if not no_biasfield:
        mods += ["biasfield", "segstats"]
    if not no_cereb:
        mods.append("cerebnet")
    if not (no_hypothal or no_biasfield):
        mods.append("hypvinn")
    return mods


def missing_checkpoints(home: Path, modules: list[str]) -> list[Path]:
    from mlflow_wattsup.analysis.pipelines.fastsurfer import CHECKPOINT_FILES

    return [
        home / "checkpoints" / name
        for m in modules
        for name in CHECKPOINT_FILES.get(m, {}).values()
        if not (home / "checkpoints" / name).is_file()
    ]


def child_cpus(threads: int) -> set[int]:
    """The first ``threads`` CPUs we may run on (all of them if fewer)."""
    mine = sorted(os.sched_getaffinity(0))
    return set(mine[:threads])


def cpu_list(cpus: set[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def pin_gpu(environ: dict[str, str]) -> str:
    """Make the pipeline and our NVML meter see one GPU: the first of ``CUDA_VISIBLE_DEVICES``
    (or GPU 0). Returns the entry kept."""
    first = (environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip() or "0"
    environ["CUDA_VISIBLE_DEVICES"] = first
    return first


class StageWatcher:
    """deep-seg.log lines -> tracker stages (see :mod:`..pipelines.fastsurfer`)."""

    def __init__(self, tracker):
        from mlflow_wattsup.analysis.pipelines.fastsurfer import DeepSegLog

        self.tracker = tracker
        self.log = DeepSegLog()

    def __call__(self, line: str, seen: float) -> None:
        for span in self.log.feed(line, seen):
            self.tracker.add_stage(span.name, span.start_s, span.end_s)

    def close(self, end: float) -> None:
        for span in self.log.close(end):
            self.tracker.add_stage(span.name, span.start_s, span.end_s)


def log_model_cost(sink, modules, checkpoints, home: Path | None, conformed: Path) -> None:
    from mlflow_wattsup.analysis.models.fastsurfer_cost import model_cost

    cost = model_cost(modules, checkpoints, home, conformed)
    sink.log_metrics(cost.metrics)
    sink.set_tags(keys.fact_tags(cost.tags))


def log_dice(sink, seg: Path, reference: Path) -> None:
    from mlflow_wattsup.analysis.dice import dice_files
    from mlflow_wattsup.analysis.labels import default_names, parse_merge
    from mlflow_wattsup.analysis.models.fastsurfer_cost import shared_labels
    from mlflow_wattsup.run.log import log_dice as _log

    names, source = default_names()
    labels, excluded = shared_labels(seg, reference)
    _log(dice_files(seg, reference, names=names, names_source=source, labels=labels), sink=sink)
    merged = dice_files(
        seg, reference, names=names, names_source=source, merge=parse_merge("aseg"), merge_name="aseg"
    )
    _log(merged, prefix="dice_aseg", sink=sink)
    sink.set_tags({keys.DICE_EXCLUDED_LABELS: " ".join(map(str, excluded)) or "none"})


@entry_point("fastsurfer")
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="fastsurfer", description=__doc__.splitlines()[0])
    p.add_argument("--t1", required=True)
    p.add_argument("--sid", required=True)
    p.add_argument("--sd", required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--reference", default="")
    p.add_argument("--reference-dir", default="")
    p.add_argument("--threads", default="1")
    p.add_argument("--fastsurfer-home", default="")
    p.add_argument("--py", default="")
    p.add_argument("--fastsurfer-image", default="")
    p.add_argument("--vox-size", default="")
    for flag in ("no-cereb", "no-hypothal", "no-biasfield"):
        p.add_argument(f"--{flag}", default="false")
    add_carbon_args(p)
    args = p.parse_args(argv)

    # every check first: a mistake must cost seconds, not an hour of segmentation
    t1 = path_param("t1", args.t1)
    sid = name_param("sid", args.sid)
    sd = path_param("sd", args.sd, must_exist=False)
    device = choice_param("device", args.device, ("cpu", "gpu", "auto"))
    reference = path_param("reference", args.reference)
    reference_dir = path_param("reference_dir", args.reference_dir, kind="directory")
    threads = int_param("threads", args.threads, 1, 1024)
    no_cereb = bool_param("no_cereb", args.no_cereb)
    no_hypothal = bool_param("no_hypothal", args.no_hypothal)
    no_biasfield = bool_param("no_biasfield", args.no_biasfield)
    vox_size = "" if is_none(args.vox_size) else args.vox_size.strip()
    if vox_size and vox_size != "min":
        try:
            ok = 0.7 <= float(vox_size) <= 1.0
        except ValueError:
            ok = False
        if not ok:
            raise ParamError(f"vox_size={args.vox_size!r} must be min or a number from 0.7 to 1 (mm)")
    modules = modules_to_run(no_cereb, no_hypothal, no_biasfield)
    try:
        oci = parse_image(None if is_none(args.fastsurfer_image) else args.fastsurfer_image)
    except ValueError as exc:
        raise ParamError(f"fastsurfer_image={exc}") from None
    image = None if oci else path_param("fastsurfer_image", args.fastsurfer_image)
    carbon = carbon_from(args)
    if device == "gpu" and not gpu_available():
        raise ParamError(
            "device=gpu but no usable NVIDIA GPU was found (no driver or no device visible to NVML); "
            "use device=cpu or device=auto"
        )
    home: Path | None
    if oci is not None:
        try:
            runtime = check_image(oci)
        except ValueError as exc:
            raise ParamError(f"fastsurfer_image={oci}: {exc}") from None
        home, script = None, None
    elif image is not None:
        runtime = shutil.which("apptainer") or shutil.which("singularity")
        if not runtime:
            raise ParamError(
                f"fastsurfer_image={image}: neither apptainer nor singularity is on PATH; install one, "
                "or use a native FastSurfer (fastsurfer_home, py)"
            )
        home, script = None, None
    else:
        home_arg = None if is_none(args.fastsurfer_home) else args.fastsurfer_home
        script = find_fastsurfer(home_arg)
        home = script.resolve().parent
        missing = missing_checkpoints(home, modules)
        if missing:
            raise ParamError(
                f"{len(missing)} FastSurfer checkpoint(s) missing, e.g. {missing[0]}: FastSurfer would download "
                f"them during the measured run (and fail offline); get them first with "
                f"`{FASTSURFER_PY_DEFAULT} {home}/FastSurferCNN/download_checkpoints.py --all`"
            )
        py = check_interpreter(FASTSURFER_PY_DEFAULT if is_none(args.py) else args.py.strip())

    sd.mkdir(parents=True, exist_ok=True)
    subject = sd / sid
    scripts = subject / "scripts"
    env = dict(os.environ)
    gpu = None
    if device == "gpu" or (device == "auto" and gpu_available()):
        gpu = pin_gpu(env)
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # our NVML meter reads it when it opens
    fs_args = ["--t1", str(t1), "--sid", sid, "--sd", str(sd), "--seg_only"]
    fs_args += ["--device", {"gpu": "cuda", "cpu": "cpu", "auto": "auto"}[device], "--threads", str(threads)]
    fs_args += [f for f, on in (("--no_cereb", no_cereb), ("--no_hypothal", no_hypothal)) if on]
    fs_args += ["--no_biasfield"] if no_biasfield else []
    fs_args += ["--vox_size", vox_size] if vox_size else []
    cpus = child_cpus(threads)
    if oci is not None:
        cmd = run_command(oci, runtime, fs_args, mounts=[sd], read_only=[t1.parent], cpus=cpus, gpu=gpu)
    elif image is not None:
        binds = sorted({str(sd), str(t1.parent)} | ({str(reference.parent)} if reference else set()))
        cmd = [runtime, "exec", *(["--nv"] if device != "cpu" else [])]
        for b in binds:
            cmd += ["-B", f"{b}:{b}"]
        cmd += [str(image), f"{IMAGE_HOME}/run_fastsurfer.sh", *fs_args]
    else:
        cmd = [str(script), *fs_args, "--py", py]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow_root")
    tags = {
        keys.PIPELINE: "fastsurfer",
        keys.DEVICE: device,
        keys.SUBJECT: sid,
        keys.FASTSURFER_MODULES: " ".join(modules),
        keys.CPUS: cpu_list(cpus),
    }
    if oci is not None or image is not None:
        tags[keys.FASTSURFER_IMAGE] = str(oci or image)
    run = CommandPipeline("fastsurfer", carbon, tags, args.experiment)
    run.log_inputs([(t1, "input"), (reference, "reference")])
    watcher = StageWatcher(run.tracker)
    code, signalled = run.execute(
        cmd, env, watch_file=scripts / "deep-seg.log", on_file_line=watcher, poll_s=0.1, cpus=cpus
    )
    watcher.close(run.tracker.elapsed_s())
    run.stop()
    _tag_device(run.sink, watcher.log.device)
    seg = subject / "mri" / "aparc.DKTatlas+aseg.deep.mgz"
    dice_error = None
    # a failed run still ran the networks whose planes all finished: their cost is measured work
    done = [m for m in watcher.log.modules if code == 0 or len(watcher.log.planes.get(m, {})) == 3]
    if code == 0 and not done:  # a log without echoed command lines (FastSurfer < 2.1)
        done = ["asegdkt"]
    if done:
        try:
            log_model_cost(run.sink, done, watcher.log.checkpoints, home, subject / "mri" / "orig.mgz")
        except Exception as exc:  # model cost is extra information: never fail the run for it
            run.sink.set_tags({keys.WARNING_FLOPS: f"{type(exc).__name__}: {exc}"})
    if code == 0 and reference is not None:
        dice_error = score(run.sink, seg, reference, log_dice)
    if code == 0:
        run.compare(subject, reference_dir, dice=reference is None)
    return run.finish(code, signalled, dice_error, "fastsurfer")


def _tag_device(sink, logged: str | None) -> None:
    """The device FastSurfer itself reported (``Using device: cuda``), which settles ``auto``."""
    from mlflow_wattsup.analysis.pipelines.fastsurfer import device_kind

    if logged:
        sink.set_tags({keys.DEVICE: device_kind(logged), keys.FASTSURFER_DEVICE: logged})


if __name__ == "__main__":
    sys.exit(main())
