"""``wattsup run``: a command under the energy tracker, logged to an MLflow run."""

from __future__ import annotations

import argparse
import os
import sys

from mlflow_wattsup.mlflow_layer.cli import common
from mlflow_wattsup.mlflow_layer.cli.common import (
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
        from mlflow_wattsup.mlflow_layer.recording import fmt_duration

        text = (
            f"[wattsup] {fmt_duration(s.elapsed_s)}  {s.power_w:6.1f} W  {s.energy.total_j / 3600:8.3f} Wh  "
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

    from mlflow.tracking import MlflowClient

    from mlflow_wattsup.analysis.carbon import CarbonConfigError
    from mlflow_wattsup.meters.estimator import EstimatorConfigError
    from mlflow_wattsup.meters.proctree import ProcessTreeMeter
    from mlflow_wattsup.mlflow_layer.recording import (
        RUN_ENV,
        CarbonConfig,
        Recording,
        make_tracker,
        resolve_run,
        summary_text,
    )
    from mlflow_wattsup.mlflow_layer.sink import MlflowSink
    from mlflow_wattsup.mlflow_layer.training import EpochEnergy
    from mlflow_wattsup.tracking.runner import SpawnError, execute, run_status

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

    client = MlflowClient(args.tracking_uri)
    uri = client.tracking_uri
    try:
        run_id, created, create = resolve_run(
            client,
            args.run_id,
            args.experiment,
            args.run_name or os.path.basename(cmd[0]),
            {"wattsup.command": _shell_join(cmd)},
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not created:
        tags.setdefault("wattsup.command", _shell_join(cmd))

    quiet = args.quiet
    notes = list(tracker.notes)
    if carbon.intensity.warning:
        notes.append(carbon.intensity.warning)
    if not quiet:
        for n in notes:
            print(f"wattsup: {n}", file=sys.stderr)
    status_line = _Status(carbon, tracker.sources.cpu == "estimate", quiet)
    tracker.add_callback(status_line)
    sink = MlflowSink(run_id, client, create=create)
    rec = Recording(sink, tracker, carbon, tags)

    env = dict(common.USER_ENV or os.environ)
    env["MLFLOW_TRACKING_URI"] = uri
    if run_id:  # the command's own MLflow logging joins our run (unknown yet if the store is down)
        env.update({"MLFLOW_RUN_ID": run_id, RUN_ENV: run_id})
    on_line = None
    if epoch_re is not None:
        on_line = _epoch_watcher(
            epoch_re, EpochEnergy(tracker, sink, carbon, args.planned_epochs, args.warmup_epochs)
        )
    rec.start()
    try:
        exit_code, signalled = execute(cmd, tracker, env, on_line=on_line)
    except SpawnError as exc:
        rec.finish({"wattsup.exit_code": str(exc.exit_code), "wattsup.status": "FAILED"})
        if created:
            sink.terminate("FAILED")
        sink.close()
        status_line.clear()
        print(f"wattsup run: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    status_line.clear()
    status = run_status(exit_code, signalled)
    totals = rec.finish({"wattsup.exit_code": str(exit_code), "wattsup.status": status})
    if created:
        sink.terminate(status)
    sink.close()
    if not quiet:
        print(
            summary_text(sink.run_id or "(not created yet: spooled)", uri, totals, carbon, exit_code, status),
            file=sys.stderr,
        )
    return exit_code


def _epoch_watcher(pattern, epochs):
    """A line handler ending an epoch at each line matching ``pattern`` (epoch number from the
    first group when it is a number)."""

    def handle(line: str, elapsed: float) -> None:
        m = pattern.search(line)
        if m:
            group = m.group(1) if m.groups() else None
            epochs.end_epoch(int(group) if group and group.isdigit() else None)

    return handle


def _shell_join(cmd: list[str]) -> str:
    import shlex

    return shlex.join(cmd)
