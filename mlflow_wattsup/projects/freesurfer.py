"""``projects/freesurfer``: FreeSurfer's ``recon-all``, measured, stage by stage.

Each ``#@# <Stage> <date>`` marker in ``scripts/recon-all.log`` starts a stage that lasts until
the next marker (or the end): ``stage/<Stage>/energy_kwh``, ``.../duration_s`` etc. come from the
tracker over that window (marker times are when we saw the line, so no time-zone parsing).
FreeSurfer's own ``@#@FSTIME`` records (wall, user, system seconds and peak memory of every
binary run through fs_time) are summed per stage (``stage/<Stage>/fstime_cpu_s``) and over the run
(``fstime_cpu_s``), records nested in another one (8.x) counted once, and kept as
``wattsup/recon-all-commands.csv``. That sum is FreeSurfer's own partial figure (shell steps and
commands outside fs_time are missing), not a check of our ``cpu_time_s``, which measures the whole
process tree. With a reference, Dice of the segmentation the directive leaves: ``mri/aseg.mgz``
(all, autorecon3) or ``mri/aseg.presurf.mgz`` (autorecon2).

FreeSurfer's Docker image (``freesurfer_image=docker://freesurfer/freesurfer:7.4.1``, also
``podman://``) runs as FreeSurfer's image is run: ``recon-all`` as the command, the licence
(``FS_LICENSE``, required: the image has none) and the input's folder mounted read-only and the
subjects directory read-write, each at its own path, ``--rm``, ``--user`` the caller (see
:mod:`~mlflow_wattsup.tracking.container_run`); the container is attributed to the run through
its cgroup.

recon-all appends to ``scripts/recon-all.log``: we read only what this call adds. Before starting:
a ``t1`` for an existing subject is refused (recon-all would refuse ``-i`` after minutes of
setup), and a leftover ``scripts/IsRunning.*`` (an interrupted run) is reported. recon-all runs
with ``LC_ALL=C`` so its ``date`` stamps are the same under any locale.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from mlflow_wattsup.projects.common import CommandPipeline, add_carbon_args, carbon_from, score
from mlflow_wattsup.projects.params import (
    ParamError,
    choice_param,
    entry_point,
    int_param,
    is_none,
    name_param,
    path_param,
)
from mlflow_wattsup.report.table import csv_text
from mlflow_wattsup.sink import keys
from mlflow_wattsup.tracking.container_run import check_image, parse_image, run_command

DOWNLOAD = "https://surfer.nmr.mgh.harvard.edu/fswiki/DownloadAndInstall"
LICENSE = "https://surfer.nmr.mgh.harvard.edu/registration.html"


def image_licence() -> Path:
    """The licence to mount into FreeSurfer's image (``FS_LICENSE``): a ParamError if unusable."""
    licence = os.environ.get("FS_LICENSE", "").strip()
    if not licence or not Path(licence).is_file():
        where = f"FS_LICENSE={licence} is not a file" if licence else "FS_LICENSE is not set"
        raise ParamError(
            f"FreeSurfer's image needs a licence and has none ({where}): get one free at {LICENSE} and "
            "set FS_LICENSE=/path/license.txt"
        )
    return Path(licence).resolve()


def find_recon_all() -> Path:
    home = os.environ.get("FREESURFER_HOME", "").strip()
    if not home:
        raise ParamError(
            f"FREESURFER_HOME is not set: install FreeSurfer ({DOWNLOAD}) and source "
            "$FREESURFER_HOME/SetUpFreeSurfer.sh before mlflow run"
        )
    if not Path(home).is_dir():
        raise ParamError(
            f"FREESURFER_HOME={home} is not a directory: point it at your FreeSurfer installation"
        )
    licence = os.environ.get("FS_LICENSE", "").strip()
    candidates = [Path(licence)] if licence else [Path(home) / "license.txt", Path(home) / ".license"]
    if not any(c.is_file() for c in candidates):
        where = (
            f"FS_LICENSE={licence} does not exist"
            if licence
            else f"no license.txt in {home} and FS_LICENSE unset"
        )
        raise ParamError(
            f"FreeSurfer licence not found ({where}): get one free at {LICENSE} and set FS_LICENSE=/path/license.txt"
        )
    script = Path(home) / "bin" / "recon-all"
    if script.is_file():
        return script
    found = shutil.which("recon-all")
    if found:
        return Path(found)
    raise ParamError(f"recon-all is neither in {home}/bin nor on PATH: is FREESURFER_HOME right?")


SEGMENTATION = {"all": "aseg.mgz", "autorecon3": "aseg.mgz", "autorecon2": "aseg.presurf.mgz"}


def check_subject(subject: Path, t1: Path | None, directive: str, reference: Path | None) -> None:
    """What recon-all would refuse or fail on, said in seconds (ParamError)."""
    if t1 is None and not subject.is_dir():
        raise ParamError(
            f"t1 is required: {subject} does not exist yet (give -P t1=FILE to start a new subject)"
        )
    if t1 is not None and subject.is_dir():
        raise ParamError(
            f"t1={t1}: subject {subject} already exists and recon-all refuses new input (-i) for it; "
            "leave t1 empty to continue that subject, or choose a new sid"
        )
    running = sorted(p.name for p in (subject / "scripts").glob("IsRunning.*")) if subject.is_dir() else []
    if running:
        raise ParamError(
            f"{subject / 'scripts' / running[0]} exists: recon-all is running on {subject.name}, or a run "
            "was interrupted; if none is running, delete that file and start again"
        )
    if reference is not None and directive not in SEGMENTATION:
        raise ParamError(
            f"reference given but directive={directive} writes no segmentation (aseg.presurf.mgz comes "
            "with autorecon2, aseg.mgz with autorecon3): use autorecon2, autorecon3 or all"
        )


class StageWatcher:
    """recon-all.log lines -> tracker stages and per-stage FSTIME sums."""

    def __init__(self, tracker):
        self.tracker = tracker
        self.current: tuple[str, float] | None = None  # (stage, seen at)
        self.fstime: list[tuple[str, object]] = []
        self.stages: list[str] = []

    def __call__(self, line: str, seen: float) -> None:
        from mlflow_wattsup.analysis.pipelines.freesurfer import (
            FsTime,
            NewInvocation,
            StageMarker,
            parse_line,
        )

        item = parse_line(line)
        if isinstance(item, NewInvocation):  # another call's text from here on: start afresh
            self.close(seen)
            self.fstime.clear()
        elif isinstance(item, StageMarker):
            self.close(seen)
            self.current = (item.stage, seen)
            self.stages.append(item.stage)
        elif isinstance(item, FsTime):
            self.fstime.append((self.current[0] if self.current else "", item))

    def close(self, end: float) -> None:
        if self.current is not None:
            name, start = self.current
            self.tracker.add_stage(name, start, max(start, end))
            self.current = None

    def nested(self) -> list[bool]:
        from mlflow_wattsup.analysis.pipelines.freesurfer import nesting

        return nesting([t for _, t in self.fstime])

    def metrics(self) -> dict[str, float]:
        from mlflow_wattsup.tracking.tracker import stage_key

        out: dict[str, float] = {}
        if not self.fstime:
            return out
        top = [rec for rec, inner in zip(self.fstime, self.nested(), strict=True) if not inner]
        out["fstime_cpu_s"] = sum(t.cpu_s for _, t in top)
        out["fstime_wall_s"] = sum(t.wall_s for _, t in top)
        for stage, t in top:
            if stage:
                key = f"stage/{stage_key(stage)}/fstime_cpu_s"
                out[key] = out.get(key, 0.0) + t.cpu_s
        return out

    def table(self) -> str:
        """The recon-all stages' resource use (one row per ``#@#%#`` timing line) as CSV."""
        head = [
            "stage",
            "command",
            "started",
            "wall_s",
            "user_s",
            "sys_s",
            "cpu_percent",
            "max_rss_kb",
            "nested",
        ]
        rows = [
            [
                stage,
                t.command,
                t.when.isoformat(),
                t.wall_s,
                t.user_s,
                t.sys_s,
                t.cpu_percent,
                t.max_rss_kb,
                int(inner),
            ]
            for (stage, t), inner in zip(self.fstime, self.nested(), strict=True)
        ]
        return csv_text(head, rows)


def log_dice(sink, seg: Path, reference: Path) -> None:
    from mlflow_wattsup.analysis.dice import dice_files
    from mlflow_wattsup.analysis.labels import default_names
    from mlflow_wattsup.run.log import log_dice as _log

    names, source = default_names()
    _log(dice_files(seg, reference, names=names, names_source=source), sink=sink)


@entry_point("freesurfer")
def main(argv=None) -> int:
    from mlflow_wattsup.analysis.pipelines.freesurfer import DIRECTIVES

    p = argparse.ArgumentParser(prog="freesurfer", description=__doc__.splitlines()[0])
    p.add_argument("--t1", default="")
    p.add_argument("--sid", required=True)
    p.add_argument("--subjects-dir", required=True)
    p.add_argument("--directive", default="all")
    p.add_argument("--reference", default="")
    p.add_argument("--reference-dir", default="")
    p.add_argument("--threads", default="1")
    p.add_argument("--freesurfer-image", default="")
    add_carbon_args(p)
    args = p.parse_args(argv)

    sid = name_param("sid", args.sid)
    subjects_dir = path_param("subjects_dir", args.subjects_dir, must_exist=False)
    directive = choice_param("directive", args.directive, DIRECTIVES)
    reference = path_param("reference", args.reference)
    reference_dir = path_param("reference_dir", args.reference_dir, kind="directory")
    threads = int_param("threads", args.threads, 1, 1024)
    subject = subjects_dir / sid
    t1 = path_param("t1", args.t1)
    check_subject(subject, t1, directive, reference)
    image_value = None if is_none(args.freesurfer_image) else args.freesurfer_image
    try:
        oci = parse_image(image_value)
    except ValueError as exc:
        raise ParamError(f"freesurfer_image={exc}") from None
    if image_value and oci is None:
        raise ParamError(
            f"freesurfer_image={image_value}: give a container image as docker://REF or podman://REF, "
            "e.g. docker://freesurfer/freesurfer:7.4.1"
        )
    if oci is not None:
        licence = image_licence()
        try:
            cli = check_image(oci)
        except ValueError as exc:
            raise ParamError(f"freesurfer_image={oci}: {exc}") from None
        script = Path("recon-all")  # on the image's PATH
    else:
        script = find_recon_all()
    carbon = carbon_from(args)

    subjects_dir.mkdir(parents=True, exist_ok=True)
    cmd = [str(script), "-s", sid, "-sd", str(subjects_dir), f"-{directive}", "-threads", str(threads)]
    if t1 is not None:
        cmd[3:3] = ["-i", str(t1)]
    # recon-all sets LANG=C, but LC_ALL/LC_TIME would still win for its `date` stamps
    fs_env = {"SUBJECTS_DIR": str(subjects_dir), "LC_ALL": "C", "LANG": "C"}
    env = dict(os.environ, **fs_env)
    if oci is not None:
        cmd = run_command(
            oci,
            cli,
            cmd,
            mounts=[subjects_dir],
            read_only=[licence, *([t1.parent] if t1 is not None else [])],
            env={**fs_env, "FS_LICENSE": str(licence)},
        )
    run = CommandPipeline(
        "recon-all",
        carbon,
        {
            keys.PIPELINE: "freesurfer",
            keys.DEVICE: "cpu",
            keys.SUBJECT: sid,
            keys.DIRECTIVE: directive,
            **({keys.FREESURFER_IMAGE: str(oci)} if oci is not None else {}),
        },
        args.experiment,
    )
    run.log_inputs([(t1, "input"), (reference, "reference")])
    watcher = StageWatcher(run.tracker)
    code, signalled = run.execute(
        cmd, env, watch_file=subject / "scripts" / "recon-all.log", on_file_line=watcher, poll_s=0.1
    )
    watcher.close(run.tracker.elapsed_s())
    run.stop()
    run.sink.log_metrics(watcher.metrics())
    if watcher.fstime:
        run.sink.set_tags({keys.FSTIME_NESTED: str(sum(watcher.nested()))})
    if watcher.fstime:
        run.sink.log_text(watcher.table(), "wattsup/recon-all-commands.csv")
    dice_error = None
    if code == 0 and reference is not None:
        seg = subject / "mri" / SEGMENTATION[directive]
        dice_error = score(run.sink, seg, reference, log_dice)
    if code == 0:
        run.compare(subject, reference_dir, dice=reference is None)
    return run.finish(code, signalled, dice_error, "freesurfer")


if __name__ == "__main__":
    sys.exit(main())
