"""Stub of FastSurfer's run_fastsurfer.sh --seg_only: writes FastSurfer 2.x's real log lines and
output files, burning a little CPU per view. Test controls (environment):
STUB_SEG_SOURCE  label volume the "prediction" is made from (perturbed); else synthetic
STUB_EXIT        exit code (default 0)
STUB_VIEW_S      CPU seconds per view (default 0.4)
"""

import argparse
import os
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

p = argparse.ArgumentParser()
p.add_argument("--t1", required=True)
p.add_argument("--sid", required=True)
p.add_argument("--sd", required=True)
p.add_argument("--seg_only", action="store_true")
p.add_argument("--device", default="auto")
p.add_argument("--threads", default="1")
p.add_argument("--allow_root", action="store_true")
a = p.parse_args()
if os.environ.get("STUB_ARGV_FILE"):
    import json

    Path(os.environ["STUB_ARGV_FILE"]).write_text(json.dumps(sys.argv[1:]))
if not a.seg_only:
    sys.exit("stub supports --seg_only only")
subj = Path(a.sd) / a.sid
(subj / "mri").mkdir(parents=True, exist_ok=True)
(subj / "scripts").mkdir(parents=True, exist_ok=True)
log = open(subj / "scripts" / "deep-seg.log", "w")


def say(msg):
    line = f"[INFO: run_prediction.py:  123]: {msg}" if not msg.startswith("[") else msg
    print(line, flush=True)
    log.write(line + "\n")
    log.flush()


log.write(f"Log file for segmentation FastSurferCNN/run_prediction.py\n{time.ctime()}\n\n")
say("Checking or downloading default checkpoints ...")
say(f"[INFO: common.py:  111]: Using device: {a.device}")
for view in ("coronal", "sagittal", "axial"):
    say(
        f"[INFO: inference.py:  200]: Loading checkpoint /fastsurfer/checkpoints/aparc_vinn_{view}_v2.0.0.pkl"
    )
say(f"Analyzing single subject {a.t1}")
per_view = float(os.environ.get("STUB_VIEW_S", "0.4"))
for view in ("coronal", "sagittal", "axial"):
    start = time.time()
    t = time.process_time()
    while time.process_time() - t < per_view:
        pass
    say(f"[INFO: inference.py:  270]: Inference on 256 batches for {view} successful")
    say(
        f"[INFO: inference.py:  310]: {view.capitalize()} inference on {a.t1} finished in {time.time() - start:0.4f} seconds"
    )
src = os.environ.get("STUB_SEG_SOURCE")
if src:
    ref = nib.load(src)
    data = np.asanyarray(ref.dataobj).copy()
    affine = ref.affine
else:
    data = np.zeros((32, 32, 32), np.int32)
    data[8:24, 8:24, 8:24] = 17
    affine = np.eye(4)
rng = np.random.default_rng(0)
flip = rng.random(data.shape) < 0.05
data[flip] = 0
t = time.process_time()
while time.process_time() - t < per_view / 2:  # view aggregation
    pass
out = subj / "mri" / "aparc.DKTatlas+aseg.deep.mgz"
nib.save(nib.MGHImage(data.astype(np.int32), affine), str(out))
aseg = np.where(data >= 2000, 42, np.where(data >= 1000, 3, data))
nib.save(nib.MGHImage(aseg.astype(np.int32), affine), str(subj / "mri" / "aseg.auto_noCCseg.mgz"))
nib.save(nib.MGHImage((data > 0).astype(np.uint8), affine), str(subj / "mri" / "mask.mgz"))
say(f"Successfully saved image as {out}")
sys.exit(int(os.environ.get("STUB_EXIT", "0")))
