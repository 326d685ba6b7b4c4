"""Shared plumbing for the command-line pipelines (FastSurfer, FreeSurfer): one tracked run of an
external command, with its stages, Dice and model cost logged through the same sink."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from mlflow_wattsup.projects.params import float_param, is_none
from mlflow_wattsup.sink import keys


def add_carbon_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--region", default="")
    p.add_argument("--carbon-intensity", default="")
    p.add_argument("--pue", default="")
    p.add_argument("--experiment", default=None)


def carbon_from(args):
    """Validated carbon settings; raises the carbon module's one-line errors."""
    from mlflow_wattsup.analysis.carbon import CarbonConfig

    intensity = (
        None if is_none(args.carbon_intensity) else float_param("carbon_intensity", args.carbon_intensity)
    )
    pue = None if is_none(args.pue) else float_param("pue", args.pue, 1.0)
    return CarbonConfig.resolve(intensity, None if is_none(args.region) else args.region, pue)


class CommandPipeline:
    """Track one external command into the run ``mlflow run`` made (``MLFLOW_RUN_ID``), or into a
    new run in ``experiment`` when started directly."""

    def __init__(self, name: str, carbon, tags: dict[str, str], experiment: str | None = None):
        from mlflow_wattsup.meters.proctree import ProcessTreeMeter
        from mlflow_wattsup.run.lifecycle import TrackedRun
        from mlflow_wattsup.run.notices import say
        from mlflow_wattsup.tracking.tracker import make_tracker

        self.name = name
        self.run = TrackedRun(experiment=experiment, run_name=name)
        self.client = self.run.store.client
        self.sink = self.run.sink
        self.carbon = carbon
        self.tags = dict(tags)
        self.tracker = make_tracker(tree=ProcessTreeMeter(children_of=os.getpid()))
        say([*self.tracker.notes, carbon.intensity.warning])

    def execute(self, cmd: Sequence[str], env: dict[str, str] | None = None, **watch) -> tuple[int, bool]:
        """Run ``cmd`` measured; returns (exit code, signalled). 127/126 if it cannot start."""
        from mlflow_wattsup.run.lifecycle import command_tag
        from mlflow_wattsup.sink.keys import COMMAND
        from mlflow_wattsup.tracking.runner import SpawnError, execute

        # inside a command already measured into this run ($WATTSUP_RUN_ID): one stage of it
        stage = self.name if self.run.as_stage_of_outer else None
        self.run.record(self.tracker, self.carbon, {**self.tags, COMMAND: command_tag(cmd)}, as_stage=stage)
        try:
            return execute(cmd, self.tracker, env, **watch)
        except SpawnError as exc:
            print(f"wattsup: {exc.message}", file=sys.stderr)
            return exc.exit_code, False

    def log_inputs(self, images: Sequence[tuple[Path | None, str]]) -> None:
        """The images the pipeline reads (``(path, context)``: ``input``, ``reference``) as the
        run's MLflow dataset inputs with their content digest; never fails the run."""
        from mlflow_wattsup.run.datasets import image_file, log_images

        if self.run.run_id is None:
            return  # the store is away: the run does not exist yet
        try:
            log_images(self.client, self.run.run_id, [image_file(p, c) for p, c in images if p is not None])
        except Exception as exc:
            self.sink.set_tags({keys.warning_tag("inputs"): f"{type(exc).__name__}: {exc}"})

    def compare(self, subject_dir: Path, reference_dir: Path | None, dice: bool) -> None:
        """The subject's FreeSurfer-format stats (volumes, thickness) and, with ``reference_dir``
        (the other pipeline's subject directory), their differences: see
        :func:`~mlflow_wattsup.run.subject_stats.log_agreement` (never raises)."""
        from mlflow_wattsup.run.subject_stats import log_agreement

        log_agreement(self.sink, subject_dir, reference_dir, dice=dice)

    def stop(self):
        """End the measurement (call once the command's stages are closed, before post-processing
        such as Dice or FLOPs counting, which is ours and not the pipeline's)."""
        return self.tracker.stop()

    def finish(
        self, exit_code: int, signalled: bool, problem: str | None = None, prog: str = "wattsup"
    ) -> int:
        """Log totals and stages, close the sink, end the run if we created it; returns the
        exit code to leave with: the pipeline's, or 2 when it succeeded but ``problem`` (e.g. no
        Dice: the reference did not fit) is reported, after everything measured is logged."""
        from mlflow_wattsup.tracking.runner import run_status

        status = run_status(exit_code, signalled)
        self.run.finish(status, exit_code)
        print(self.run.summary(self.carbon, exit_code, status), file=sys.stderr)
        if problem:
            print(f"{prog}: error: {problem}", file=sys.stderr)
            return exit_code or 2
        return exit_code


def gpu_available() -> bool:
    """An NVIDIA GPU usable by NVML (no torch import: this check must be fast)."""
    from mlflow_wattsup.meters.nvml import open_nvml

    meter = open_nvml()
    if meter is None:
        return False
    meter.close()
    return True


def score(sink, seg: Path, reference: Path, fn: Callable) -> str | None:
    """Log Dice with ``fn(sink, seg, reference)``; an unusable pair is reported (a warning tag and
    the returned message), never raised: the measurement already made must still be logged."""
    from mlflow_wattsup.analysis.dice import DiceInputError

    if not seg.exists():
        msg = f"{seg} was not written: no Dice"
    else:
        try:
            fn(sink, seg, reference)
            return None
        except DiceInputError as exc:
            msg = str(exc)
    sink.set_tags({keys.warning_tag("dice"): msg})
    return msg
