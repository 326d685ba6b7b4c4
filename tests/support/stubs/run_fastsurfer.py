"""Stub of FastSurfer 2.3's run_fastsurfer.sh --seg_only, written from its published sources
(run_fastsurfer.sh, FastSurferCNN/run_prediction.py + inference.py, HypVINN, CerebNet,
recon_surf/N4_bias_correct.py, FastSurferCNN/utils/checkpoint.py) and a real run's deep-seg.log.

What it reproduces, because our measurement depends on it:
* flags: unknown ones stop it (``ERROR: Flag '--x' unrecognized.``); ``--py`` (default
  ``python3.10 -s``: ``Cannot find the python interpreter python3.10.``); root needs ``--allow_root``;
  ``--vox_size`` (default ``min``: a 0.8 mm input is conformed to 320^3);
* ``scripts/deep-seg.log`` is APPENDED to (``>>``, ``tee -a``, FileHandler mode "a"): a re-run
  adds to the old text; every program's command line is echoed into it before it runs;
* modules: asegdkt (3 planes + view aggregation), N4 bias field + segstats, CerebNet, HypVINN
  (3 planes, ``<plane> Inference on <sid> finished in``), unless ``--no_biasfield`` (implies
  ``--no_hypothal``), ``--no_cereb``, ``--no_hypothal``;
* checkpoints in ``$FASTSURFER_HOME/checkpoints``: a missing one is "downloaded" (which fails
  here: offline), as FastSurfer's ``check_and_download_ckpts`` would try;
* ``--device auto`` resolves to cpu (this stub has no CUDA); the asegdkt network is not given
  ``--threads`` (it would use every CPU of its affinity).

Test controls (environment): STUB_SEG_SOURCE (label volume the "prediction" is made from),
STUB_EXIT (exit code at the end), STUB_VIEW_S (CPU seconds per plane, default 0.3),
STUB_ARGV_FILE (argv as JSON), STUB_AFFINITY_FILE (CPUs this process may run on, as JSON).
"""

import json
import os
import shutil
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

HOME = Path(os.environ.get("FASTSURFER_HOME") or Path(sys.argv[0]).resolve().parent)
VERSION = "2.3.0+stub"
PLANES = ("coronal", "sagittal", "axial")

opts = {"device": "auto", "threads": "1", "py": "python3.10 -s", "vox_size": "min", "viewagg_device": "auto"}
flags = set()
args = sys.argv[1:]
if os.environ.get("STUB_ARGV_FILE"):
    Path(os.environ["STUB_ARGV_FILE"]).write_text(json.dumps(args))
if os.environ.get("STUB_AFFINITY_FILE"):
    Path(os.environ["STUB_AFFINITY_FILE"]).write_text(json.dumps(sorted(os.sched_getaffinity(0))))
VALUED = (
    "--t1",
    "--sid",
    "--sd",
    "--device",
    "--threads",
    "--py",
    "--vox_size",
    "--viewagg_device",
    "--seg_log",
)
SWITCHES = ("--seg_only", "--allow_root", "--no_cereb", "--no_hypothal", "--no_biasfield")
while args:
    key = args.pop(0).lower()
    if key in VALUED:
        opts[key[2:]] = args.pop(0)
    elif key in SWITCHES:
        flags.add(key[2:])
    else:
        print(f"ERROR: Flag '{key}' unrecognized.")
        sys.exit(1)
if "seg_only" not in flags:
    sys.exit("stub supports --seg_only only")
py = opts["py"].split()[0]
if not shutil.which(py):
    print(f"Cannot find the python interpreter {py}.")
    sys.exit(1)
if os.geteuid() == 0 and "allow_root" not in flags:
    print(
        "You are trying to run 'run_fastsurfer.sh' as root. We advice to avoid running FastSurfer as root, "
    )
    sys.exit(1)
if "no_biasfield" in flags:
    flags.add("no_hypothal")

sid, sd, t1 = opts["sid"], Path(opts["sd"]), opts["t1"]
subj = sd / sid
(subj / "mri").mkdir(parents=True, exist_ok=True)
(subj / "scripts").mkdir(parents=True, exist_ok=True)
seg_log = Path(opts.get("seg_log") or subj / "scripts" / "deep-seg.log")
log = open(seg_log, "a")  # appended, as FastSurfer >= 2.1 does
per_plane = float(os.environ.get("STUB_VIEW_S", "0.3"))


def out(line: str, to_stdout: bool = True) -> None:
    if to_stdout:
        print(line, flush=True)
    log.write(line + "\n")
    log.flush()


def rec(where: str, lineno: int, msg: str, level: str = "INFO") -> None:
    out(f"[{level}: {where}: {lineno:4d}]: {msg}")


def burn(seconds: float) -> float:
    start = time.time()
    t = time.process_time()
    while time.process_time() - t < seconds:
        pass
    return time.time() - start


def echo_cmd(script: str, *rest: str) -> None:
    out(" ".join([py, str(HOME / script), *rest]))


def checkpoints(module: str, names: dict) -> dict:
    paths = {p: HOME / "checkpoints" / n for p, n in names.items()}
    for p in paths.values():
        if not p.exists():  # FastSurfer would download it now: offline, it fails
            rec(
                "checkpoint.py",
                348,
                f"Downloading checkpoint {p.name} from https://zenodo.org/records/x/files",
            )
            rec(
                "checkpoint.py",
                359,
                "Server https://zenodo.org/records/x/files not reachable (ConnectionError)",
                "WARNING",
            )
            sys.exit(1)
    return paths


out(f"Version: {VERSION}")
out("Log file for segmentation FastSurferCNN/run_prediction.py", to_stdout=False)
out(time.strftime("%a %b %d %H:%M:%S %Z %Y"))
out("")
echo_cmd(
    "FastSurferCNN/run_prediction.py", "--t1", t1, "--sid", sid, "--sd", str(sd), "--seg_log", str(seg_log)
)
rec("run_prediction.py", 652, "Checking or downloading default checkpoints ...")
ckpts = checkpoints("asegdkt", {p: f"aparc_vinn_{p}_v2.0.0.pkl" for p in PLANES})
rec("common.py", 885, f"Analyzing single subject {t1}")
device = "cpu" if opts["device"] == "auto" else opts["device"]
rec("common.py", 114, f"Using device: {device}")
rec("run_prediction.py", 245, f"Running view aggregation on {device}")
for p in PLANES:
    rec("inference.py", 200, f"Loading checkpoint {ckpts[p]}")
try:
    vox = min(float(z) for z in nib.load(t1).header.get_zooms()[:3])
except Exception:  # tests pass placeholder files: treat them as 1 mm images
    vox = 1.0
rec("run_prediction.py", 324, f"Successfully loaded image from {t1}.")
vox = (
    1.0
    if opts["vox_size"] == "min" and vox >= 0.95
    else (vox if opts["vox_size"] == "min" else float(opts["vox_size"]))
)
side = 256 if vox >= 1.0 else int(np.ceil(256 / vox))
rec("run_prediction.py", 337, "Conforming image")
orig = subj / "mri" / "orig.mgz"
nib.save(nib.MGHImage(np.zeros((side, side, side), np.uint8), np.diag([-vox, vox, vox, 1.0])), str(orig))
rec("run_prediction.py", 454, f"Successfully saved image   as {orig}.")
for p in PLANES:
    rec("run_prediction.py", 400, f"Run {p} prediction")
    rec("dataset.py", 78, f"Loading {p.capitalize()} with input voxelsize ({vox}, {vox})")
    took = burn(per_plane)
    rec("inference.py", 407, f"Inference on {side} batches for {p} successful")
    rec("inference.py", 469, f"{p.capitalize()} inference on {t1} finished in {took:0.4f} seconds")
burn(per_plane / 3)  # view aggregation
src = os.environ.get("STUB_SEG_SOURCE")
if src:
    ref = nib.load(src)
    data, affine = np.asanyarray(ref.dataobj).copy(), ref.affine
else:
    data, affine = np.zeros((32, 32, 32), np.int32), np.eye(4)
    data[8:24, 8:24, 8:24] = 17
data[np.random.default_rng(0).random(data.shape) < 0.05] = 0
for vessel_like in (
    30,
    62,
    72,
    80,
    85,
    251,
    252,
    253,
    254,
    255,
    1000,
    2000,
):  # FastSurfer never predicts these
    data[data == vessel_like] = 0
seg = subj / "mri" / "aparc.DKTatlas+aseg.deep.mgz"
nib.save(nib.MGHImage(data.astype(np.int32), affine), str(seg))
rec("run_prediction.py", 454, f"Successfully saved image   as {seg}.")
rec("run_prediction.py", 729, "Creating brainmask based on segmentation...")
nib.save(nib.MGHImage((data > 0).astype(np.uint8), affine), str(subj / "mri" / "mask.mgz"))
rec("run_prediction.py", 454, f"Successfully saved image   as {subj / 'mri' / 'mask.mgz'}.")

if "no_biasfield" not in flags:
    out("INFO: Running N4 bias-field correction")
    echo_cmd(
        "recon_surf/N4_bias_correct.py",
        "--in",
        str(orig),
        "--rescale",
        str(subj / "mri/orig_nu.mgz"),
        "--aseg",
        str(seg),
        "--threads",
        opts["threads"],
    )
    out("[INFO: N4_bias_correct.py:  667]: executing N4 correction ...")
    burn(per_plane / 3)
    echo_cmd("FastSurferCNN/segstats.py", "--segfile", str(seg), "--threads", opts["threads"])
    burn(per_plane / 6)
if "no_cereb" not in flags:
    echo_cmd(
        "CerebNet/run_prediction.py", "--t1", t1, "--asegdkt_segfile", str(seg), "--threads", opts["threads"]
    )
    rec("run_prediction.py", 157, "Checking or downloading default checkpoints ...")
    checkpoints("cerebnet", {p: f"CerebNet_{p}_v1.0.0.pkl" for p in PLANES})
    rec("inference.py", 434, time.strftime("%y-%m-%d_%H:%M:%S"))
    took = burn(per_plane)
    rec(
        "inference.py",
        357,
        f"Saving CerebNet cerebellum segmentation at {subj / 'mri/cerebellum.CerebNet.nii.gz'}",
    )
    rec("inference.py", 512, f"Subject 1/1 with id '{sid}' processed in {took:.2f} sec.")
if "no_hypothal" not in flags:
    echo_cmd(
        "HypVINN/run_prediction.py",
        "--sd",
        str(sd),
        "--sid",
        sid,
        "--threads",
        opts["threads"],
        "--seg_log",
        str(seg_log),
        "--device",
        opts["device"],
        "--t1",
        str(subj / "mri/orig_nu.mgz"),
    )
    rec("run_prediction.py", 431, "Checking or downloading default checkpoints ...")
    hyp = checkpoints("hypvinn", {p: f"HypVINN_{p}_v1.1.0.pkl" for p in PLANES})
    rec("common.py", 114, f"Using device: {device}")
    rec("run_prediction.py", 335, f"Evaluating hypothalamus model on {sid}")
    for p in PLANES:
        rec("run_prediction.py", 600, f"Evaluating {p} model, cpkt :{hyp[p]}")
        rec("inference.py", 183, f"Loading checkpoint {hyp[p]}")
        took = burn(per_plane)
        rec("inference.py", 344, f"--->  {p} Model Testing Done.")
        rec("inference.py", 410, f"{p} Inference on {sid} finished in {took:0.4f} seconds")
log.close()
sys.exit(int(os.environ.get("STUB_EXIT", "0")))
