"""``wattsup run``: a command under the energy tracker, logged to an MLflow run."""

from __future__ import annotations

import argparse
import os
import sys

from mlflow_wattsup.cli import common
from mlflow_wattsup.cli.common import (
    UsageError,
    carbon_options,
    meter_options,
    mlflow_options,
    parse_tags,
)


def register(sub) -> None:
    run = sub.add_parser(
        "run",
        help="run a command and log its energy, carbon and runtime",
        description="Run CMD (without a shell) under the energy tracker and log it to an MLflow run: "
        "the active one ($MLFLOW_RUN_ID, as inside 'mlflow run') or a new one. CMD's output is "
        "streamed, its exit code passed through, SIGINT/SIGTERM forwarded to its process group. "
        "Example: wattsup run --experiment fs --region CA-QC -- recon-all -s bert -all",
    )
    mlflow_options(run)
    carbon_options(run)
    meter_options(run)
    run.add_argument("--quiet", action="store_true", help="no live status line or summary")
    ep = run.add_argument_group("training epochs (from the command's output)")
    ep.add_argument(
        "--epoch-regex",
        metavar="REGEX",
        help="each output line matching REGEX ends an epoch: logs epoch_energy_kwh etc. at "
        "step = the regex's first group if it is a number, else 0, 1, 2...; the command's "
        "output then goes through a pipe",
    )
    ep.add_argument("--planned-epochs", type=int, metavar="N", help="predict the total energy for N epochs")
    ep.add_argument(
        "--warmup-epochs",
        type=int,
        default=1,
        metavar="K",
        help="epochs measured before the first prediction (default 1)",
    )
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]", help="the command to run")
    run.set_defaults(func=main)


class _Status:
    """The live one-line status on a TTY; a line every ``every_s`` seconds elsewhere."""

    def __init__(self, carbon, estimated: bool, quiet: bool, every_s: float = 900.0):
        self.carbon = carbon
        self.label = " (estimate)" if estimated else ""
        self.tty = sys.stderr.isatty() and not quiet
        self.quiet = quiet
        self.every_s = every_s
        self._last = 0.0

    def __call__(self, s) -> None:
        if self.quiet:
            return
        from mlflow_wattsup.report.numbers import clock

        text = (
            f"[wattsup] {clock(s.elapsed_s)}  {s.power_w:6.1f} W  {s.energy.total_j / 3600:8.3f} Wh  "
            f"{self.carbon.carbon_g(s.energy.total_j):8.3f} g CO2eq{self.label}"
        )
        if self.tty:
            sys.stderr.write(f"\r\x1b[K{text}\r")
            sys.stderr.flush()
        elif s.elapsed_s - self._last >= self.every_s:
            self._last = s.elapsed_s
            print(text, file=sys.stderr, flush=True)

    def clear(self) -> None:
        """Erase the line and stop updating it (the final sample comes after)."""
        self.quiet = True
        if self.tty:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()


def main(args) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("no command given: wattsup run [options] -- CMD [ARGS...]")
    if not args.interval > 0:
        raise UsageError(f"--interval must be > 0 seconds, got {args.interval:g}")
    tags = parse_tags(args.tag)
    epoch_re = None
    if args.epoch_regex:
        import re

        try:
            epoch_re = re.compile(args.epoch_regex)
        except re.error as exc:
            raise UsageError(f"--epoch-regex {args.epoch_regex!r}: {exc}") from None
    if args.planned_epochs is not None and args.planned_epochs < 1:
        raise UsageError(f"--planned-epochs must be >= 1, got {args.planned_epochs}")
    if args.warmup_epochs < 1:
        raise UsageError(f"--warmup-epochs must be >= 1, got {args.warmup_epochs}")

    from mlflow_wattsup.analysis.carbon import CarbonConfig, CarbonConfigError
    from mlflow_wattsup.meters.estimator import EstimatorConfigError
    from mlflow_wattsup.meters.proctree import ProcessTreeMeter
    from mlflow_wattsup.sink.keys import OVERHEAD_CPU_S, RUN_ENV
    from mlflow_wattsup.tracking.runner import SpawnError, execute, run_status
    from mlflow_wattsup.tracking.tracker import make_tracker

    try:
        carbon = CarbonConfig.resolve(args.carbon_intensity, args.region, args.pue)
        tracker = make_tracker(
            tree=ProcessTreeMeter(children_of=os.getpid()),
            interval_s=args.interval,
            cpu_tdp_w=args.cpu_tdp_w,
            cpu_w_per_thread=args.cpu_w_per_thread,
            powercap_root=args.powercap_root,
        )
    except (CarbonConfigError, EstimatorConfigError) as exc:
        raise UsageError(str(exc)) from None
    quiet = args.quiet
    if not quiet:
        from mlflow_wattsup.run.notices import say

        say([*tracker.notes, carbon.intensity.warning])
    status_line = _Status(carbon, tracker.sources.cpu == "estimate", quiet)
    tracker.add_callback(status_line)
    setup = _RunSetup(args, cmd, tags, carbon, tracker)

    env = dict(common.USER_ENV or os.environ)
    known = args.run_id or os.environ.get("MLFLOW_RUN_ID")
    if known and epoch_re is None:
        # The run exists already (inside `mlflow run`, or --run-id): start the command at once and
        # get MLflow ready while it runs (importing MLflow alone takes seconds).
        env.update({"MLFLOW_RUN_ID": known, RUN_ENV: known})
        if args.tracking_uri:
            env["MLFLOW_TRACKING_URI"] = args.tracking_uri
        setup.start_in_background()
    else:
        # A new run: create it first, so the command's own MLflow logging can join it (and
        # epochs need the run from their first line on).
        setup.run_now()
        env["MLFLOW_TRACKING_URI"] = setup.run.store.uri
        if setup.run.run_id:  # unknown yet if the store is down
            env.update({"MLFLOW_RUN_ID": setup.run.run_id, RUN_ENV: setup.run.run_id})
    on_line = None
    if epoch_re is not None and getattr(setup.run, "leader", True):  # a job's epochs: rank 0's
        from mlflow_wattsup.run.training import EpochEnergy

        epochs = EpochEnergy(tracker, setup.run.sink, carbon, args.planned_epochs, args.warmup_epochs)
        on_line = _epoch_watcher(epoch_re, epochs)
    spawned = True
    try:
        exit_code, signalled = execute(cmd, tracker, env, on_line=on_line)
        status = run_status(exit_code, signalled)
    except SpawnError as exc:
        spawned, exit_code, status = False, exc.exit_code, "FAILED"
        print(f"wattsup run: error: {exc.message}", file=sys.stderr)
    status_line.clear()
    run = setup.wait()
    if setup.stage is not None:  # one stage of the run an enclosing wattsup measures: no totals of ours
        run.finish(status, exit_code)
        if not quiet and spawned:
            print(
                f"wattsup: {status}, exit code {exit_code}: logged as stage/{setup.stage}/ of run {run.run_id}, "
                "which the enclosing wattsup measures",
                file=sys.stderr,
            )
        return exit_code
    from mlflow_wattsup.run.overhead import overhead_cpu_s

    # what measuring cost, taken last (after the description), with the run's final values
    run.finish(
        status, exit_code, last=lambda: run.sink.log_metrics({OVERHEAD_CPU_S: overhead_cpu_s(tracker)})
    )
    if not quiet and spawned:
        print(run.summary(carbon, exit_code, status), file=sys.stderr)
    return exit_code


class _RunSetup:
    """Resolve or create the run and attach the (already started) tracker to it: before the
    command starts (:meth:`run_now`) or while it runs (:meth:`start_in_background`)."""

    def __init__(self, args, cmd, tags, carbon, tracker):
        self.args, self.cmd, self.tags, self.carbon, self.tracker = args, cmd, tags, carbon, tracker
        self.buffer = None
        self.run = None
        self.stage: str | None = None
        self._thread = None
        self._error: BaseException | None = None

    def _open(self):
        from mlflow_wattsup.run.joined import tracked_run
        from mlflow_wattsup.run.lifecycle import TrackedRun

        a = self.args
        kw = dict(
            tracking_uri=a.tracking_uri,
            experiment=a.experiment,
            run_name=a.run_name or os.path.basename(self.cmd[0]),
        )
        try:
            return tracked_run(run_id=a.run_id, **kw)  # one run per job under srun/mpirun
        except ValueError as exc:
            if self._thread is None:
                raise UsageError(str(exc)) from None
            # the command already runs: never lose its measurement over a wrong run id
            print(f"wattsup run: error: {exc}; logging to a new run instead", file=sys.stderr)
            return TrackedRun(join_active=False, **{**kw, "run_id": None})

    def _attach(self, buffer=None) -> None:
        from mlflow_wattsup.run.lifecycle import command_tag
        from mlflow_wattsup.sink.keys import COMMAND

        self.run = self._open()
        if self.run.as_stage_of_outer:
            # the command we were given runs inside one already measured into this same run
            # ($WATTSUP_RUN_ID, set by the measuring wattsup): measuring it again would count it
            # twice, so it is logged as a stage of that measurement
            self.stage = self.args.run_name or os.path.basename(self.cmd[0])
        self.run.record(
            self.tracker,
            self.carbon,
            {COMMAND: command_tag(self.cmd), **self.tags},
            buffer=buffer,
            as_stage=self.stage,
        )
        if self.stage is not None and buffer is not None:
            buffer.forward_to(lambda sample: None)  # the enclosing measurement logs the power series

    def run_now(self) -> None:
        """Create the run, then start the tracker (the run's clock starts with the command)."""
        self._attach()

    def start_in_background(self) -> None:
        """Start the tracker now (the command starts next) and attach it to the run in a thread;
        samples taken meanwhile are held and logged once the run is ready."""
        import threading

        from mlflow_wattsup.tracking.tracker import SampleBuffer

        self.buffer = SampleBuffer()
        self.tracker.add_callback(self.buffer)
        self.tracker.start()

        def work():
            try:
                self._attach(self.buffer)
            except BaseException as exc:  # reported when the command ends
                self._error = exc

        self._thread = threading.Thread(target=work, name="wattsup-setup", daemon=True)
        self._thread.start()

    def wait(self):
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self.run


def _epoch_watcher(pattern, epochs):
    """A line handler ending an epoch at each line matching ``pattern`` (epoch number from the
    first group when it is a number)."""

    def handle(line: str, elapsed: float) -> None:
        m = pattern.search(line)
        if m:
            group = m.group(1) if m.groups() else None
            epochs.end_epoch(int(group) if group and group.isdigit() else None)

    return handle
