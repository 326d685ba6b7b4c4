"""Stub of FreeSurfer's recon-all: writes recon-all.log with real '#@# <Stage> <date>' markers
and '@#@FSTIME' lines measured from real child processes (their wait4 rusage), and mri/aseg.mgz.
Test controls: STUB_SEG_SOURCE (label volume for aseg.mgz), STUB_EXIT, STUB_CMD_S (CPU s per
command, default 0.15)."""

import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np

STAGES = {
    "autorecon1": [
        "MotionCor",
        "Talairach",
        "Nu Intensity Correction",
        "Intensity Normalization",
        "Skull Stripping",
    ],
    "autorecon2": ["EM Registration", "CA Normalize", "SubCort Seg", "Fill"],
    "autorecon3": ["Sphere lh", "Cortical Parc lh", "Cortical ribbon mask"],
}
STAGES["all"] = STAGES["autorecon1"] + STAGES["autorecon2"] + STAGES["autorecon3"]

args = sys.argv[1:]
sid = args[args.index("-s") + 1]
sd = Path(args[args.index("-sd") + 1]) if "-sd" in args else Path(os.environ["SUBJECTS_DIR"])
directive = next(a[1:] for a in args if a[1:] in STAGES)
subj = sd / sid
if "-i" in args and subj.exists():
    sys.exit("ERROR: You are trying to re-run an existing subject with (possibly) new input data.")
for d in ("mri", "scripts", "surf", "label"):
    (subj / d).mkdir(parents=True, exist_ok=True)
log = open(subj / "scripts" / "recon-all.log", "w")
log.write(f"Mon Jan  1 00:00:00 UTC 2024\n{subj}\n{' '.join(sys.argv)}\nsubjid {sid}\n")
log.flush()
per_cmd = float(os.environ.get("STUB_CMD_S", "0.15"))
burn = f"import time\nt=time.process_time()\nwhile time.process_time()-t<{per_cmd}: pass"
start = time.time()
for stage in STAGES[directive]:
    log.write(f"#@# {stage} {time.strftime('%a %b %d %H:%M:%S %Z %Y')}\n")
    log.flush()
    for cmd in ("mri_convert", "mri_normalize"):
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, "-c", burn])
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.time() - t0
        cpu = ru.ru_utime + ru.ru_stime
        log.write(
            f"{cmd} --args\n@#@FSTIME  {time.strftime('%Y:%m:%d:%H:%M:%S')} {cmd} N 3 e {wall:.2f} "
            f"S {ru.ru_stime:.2f} U {ru.ru_utime:.2f} P {int(100 * cpu / max(wall, 1e-6))}% M {ru.ru_maxrss} "
            f"F 0 R 1000 W 0 c 10 w 5 I 0 O 8 L 0.5 0.4 0.3\n"
        )
        log.write(f"@#@FSLOADPOST {time.strftime('%Y:%m:%d:%H:%M:%S')} {cmd} N 3 0.50 0.40 0.30\n")
        log.flush()
src = os.environ.get("STUB_SEG_SOURCE")
if src:
    ref = nib.load(src)
    data = np.asanyarray(ref.dataobj).copy()
    data[np.random.default_rng(1).random(data.shape) < 0.05] = 0
    nib.save(nib.MGHImage(data.astype(np.int32), ref.affine), str(subj / "mri" / "aseg.mgz"))
log.write(f"#@#%# recon-all-run-time-hours {(time.time() - start) / 3600:.3f}\n")
log.write(f"recon-all -s {sid} finished without error at {time.ctime()}\n")
log.close()
sys.exit(int(os.environ.get("STUB_EXIT", "0")))
