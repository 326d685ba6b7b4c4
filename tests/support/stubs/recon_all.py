"""Stub of FreeSurfer's recon-all (7.4 / 8.x), written from its published sources (scripts/recon-all,
scripts/fs_time) and real recon-all.log files.

What it reproduces, because our measurement depends on it:
* ``scripts/recon-all.log`` is APPENDED to (AppendLog=1): each call starts a block
  ``#---------------------------------`` / ``# New invocation of recon-all <date>``;
* ``#@# <Stage> <date>`` markers (``date`` in the process's locale: LC_ALL wins over LANG=C);
* ``@#@FSTIME  <YYYY:MM:DD:hh:mm:ss> <cmd> N <n> e <wall> S <sys> U <user> P <cpu>% M <KB> ...``
  written by fs_time from GNU time's rusage of the command *and its waited-for children*, then
  ``@#@FSLOADPOST``; in 8.x ``rca-surfreg`` (itself under fs_time) runs ``fs_time mris_register``:
  the inner record comes first and its time lies within the outer one's;
* ``-i`` for a subject that exists is refused; ``scripts/IsRunning.lh+rh`` is created at the
  start, removed at a normal end, left behind when interrupted, and blocks the next run;
* ``mri/aseg.presurf.mgz`` after autorecon2, ``mri/aseg.mgz`` only at autorecon3
  (``#@# APas-to-ASeg``).

Test controls: STUB_SEG_SOURCE (label volume the segmentations are made from), STUB_EXIT,
STUB_CMD_S (CPU s per command, default 0.15), STUB_ENV_FILE (LC_ALL/LANG seen, as JSON),
STUB_HANG (sleep this long in the first stage: to interrupt it).
"""

import json
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
    "autorecon2": ["EM Registration", "CA Normalize", "SubCort Seg", "Merge ASeg", "Fill"],
    "autorecon3": ["Sphere lh", "Surf Reg lh", "Cortical Parc lh", "APas-to-ASeg"],
}
STAGES["all"] = STAGES["autorecon1"] + STAGES["autorecon2"] + STAGES["autorecon3"]

args = sys.argv[1:]
sid = args[args.index("-s") + 1]
sd = Path(args[args.index("-sd") + 1]) if "-sd" in args else Path(os.environ["SUBJECTS_DIR"])
directive = next(a[1:] for a in args if a[1:] in STAGES)
subj = sd / sid
per_cmd = float(os.environ.get("STUB_CMD_S", "0.15"))
burn = f"import time\nt=time.process_time()\nwhile time.process_time()-t<{per_cmd}: pass"


def fstime_line(cmd: str, started: str, wall: float, ru) -> str:
    cpu = ru.ru_utime + ru.ru_stime
    return (
        f"@#@FSTIME  {started} {cmd} N 3 e {wall:.2f} S {ru.ru_stime:.2f} U {ru.ru_utime:.2f} "
        f"P {int(100 * cpu / max(wall, 1e-6))}% M {ru.ru_maxrss} F 0 R 1000 W 0 c 10 w 5 I 0 O 8 L 0.5 0.4 0.3\n"
        f"@#@FSLOADPOST {time.strftime('%Y:%m:%d:%H:%M:%S')} {cmd} N 3 0.50 0.40 0.30\n"
    )


def timed(cmd: str, argv: list[str]) -> None:
    """fs_time: GNU time's rusage of the command and its waited-for children."""
    started = time.strftime("%Y:%m:%d:%H:%M:%S")
    t0 = time.time()
    proc = subprocess.Popen(argv)
    _, status, ru = os.wait4(proc.pid, 0)
    log.write(fstime_line(cmd, started, time.time() - t0, ru))
    log.flush()


if os.environ.get("STUB_INNER"):  # we are `rca-surfreg`: run mris_register under fs_time
    log = open(subj / "scripts" / "recon-all.log", "a")
    inner_s = float(os.environ.get("STUB_INNER_S", "1.2"))  # > 1 s: nesting is provable from the stamps
    timed("mris_register", [sys.executable, "-c", burn.replace(f"<{per_cmd}:", f"<{inner_s}:")])
    sys.exit(0)

if os.environ.get("STUB_ENV_FILE"):
    Path(os.environ["STUB_ENV_FILE"]).write_text(
        json.dumps({k: os.environ.get(k) for k in ("LC_ALL", "LANG", "LC_TIME")})
    )
if "-i" in args and subj.exists():
    print("ERROR: You are trying to re-run an existing subject with (possibly) new input data.")
    print(
        "If this is truly new input data, you should delete the subject folder and re-run, or specify a different subject name."
    )
    sys.exit(1)
running = sorted((subj / "scripts").glob("IsRunning.*")) if subj.exists() else []
if running:
    print(
        f"ERROR: it appears that recon-all is already running for {sid} based on the presence of {running[0]}."
    )
    sys.exit(1)
for d in ("mri", "scripts", "surf", "label"):
    (subj / d).mkdir(parents=True, exist_ok=True)
is_running = subj / "scripts" / "IsRunning.lh+rh"
is_running.write_text(f"SUBJECT {sid}\nHEMI lh rh\nDATE {time.ctime()}\nPROCESSID {os.getpid()}\n")
log = open(subj / "scripts" / "recon-all.log", "a")
log.write(
    f"\n\n#---------------------------------\n# New invocation of recon-all {time.strftime('%a %b %d %H:%M:%S %Z %Y')} \n"
)
log.write(f"{' '.join(sys.argv)}\nsubjid {sid}\n")
log.flush()
start = time.time()
for i, stage in enumerate(STAGES[directive]):
    log.write("#--------------------------------------------\n")
    log.write(f"#@# {stage} {time.strftime('%a %b %d %H:%M:%S %Z %Y')}\n")
    log.flush()
    if i == 0 and os.environ.get("STUB_HANG"):
        time.sleep(float(os.environ["STUB_HANG"]))
    if stage.startswith("Surf Reg"):  # 8.x: fs_time rca-surfreg -> fs_time mris_register
        log.close()
        started = time.strftime("%Y:%m:%d:%H:%M:%S")
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, *sys.argv], env=dict(os.environ, STUB_INNER="1"))
        _, status, ru = os.wait4(proc.pid, 0)
        log = open(subj / "scripts" / "recon-all.log", "a")
        log.write(fstime_line("rca-surfreg", started, time.time() - t0, ru))
        log.flush()
        continue
    for cmd in ("mri_convert", "mri_normalize"):
        log.write(f"\n {cmd} --args \n\n")
        timed(cmd, [sys.executable, "-c", burn])
    src = os.environ.get("STUB_SEG_SOURCE")
    out = {"Merge ASeg": "aseg.presurf.mgz", "APas-to-ASeg": "aseg.mgz"}.get(stage)
    if src and out:
        ref = nib.load(src)
        data = np.asanyarray(ref.dataobj).copy()
        data[np.random.default_rng(1).random(data.shape) < 0.05] = 0
        nib.save(nib.MGHImage(data.astype(np.int32), ref.affine), str(subj / "mri" / out))
log.write(f"#@#%# recon-all-run-time-hours {(time.time() - start) / 3600:.3f}\n")
log.write(f"recon-all -s {sid} finished without error at {time.ctime()}\n")
log.close()
is_running.unlink()
sys.exit(int(os.environ.get("STUB_EXIT", "0")))
