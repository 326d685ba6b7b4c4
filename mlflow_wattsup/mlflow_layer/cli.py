"""Layer 4: the ``wattsup`` command line.

Every error a user can cause ends in one line on stderr and exit code 2 (``--debug`` shows the
traceback). ``wattsup run`` passes the wrapped command's exit code through.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from mlflow_wattsup import __version__

EXIT_USAGE = 2


_LINE_BREAKS = {
    c: repr(chr(c))[1:-1] for c in (0x0A, 0x0B, 0x0C, 0x0D, 0x1C, 0x1D, 0x1E, 0x85, 0x2028, 0x2029)
}


def one_line(text: str) -> str:
    """``text`` with every character Python treats as a line break escaped (user input may hold
    any of them; our errors are one line)."""
    return text.translate(_LINE_BREAKS)


class UsageError(Exception):
    """A problem with the user's input: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of usage + message
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def _carbon_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("carbon")
    g.add_argument(
        "--region",
        help="electricity region for the carbon intensity, e.g. FRA, CA-QC, US-CA, "
        "gcp:europe-west1 ('wattsup regions' lists them; env WATTSUP_REGION)",
    )
    g.add_argument(
        "--carbon-intensity",
        metavar="G_PER_KWH",
        help="carbon intensity in g CO2eq/kWh; overrides --region (env WATTSUP_CARBON_INTENSITY)",
    )
    g.add_argument(
        "--pue",
        help="power usage effectiveness of the facility, >= 1 (default 1.0: IT energy only; env WATTSUP_PUE)",
    )


def _meter_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("measurement")
    g.add_argument(
        "--interval", type=float, default=1.0, metavar="S", help="sampling interval in seconds (default 1)"
    )
    g.add_argument(
        "--cpu-tdp-w",
        type=float,
        metavar="W",
        help="package TDP for the CPU estimate when the model is unknown (env WATTSUP_CPU_TDP_W)",
    )
    g.add_argument(
        "--cpu-w-per-thread",
        type=float,
        metavar="W",
        help="watts per busy logical CPU for the estimate (env WATTSUP_CPU_W_PER_THREAD)",
    )
    g.add_argument(
        "--powercap-root",
        metavar="DIR",
        help="powercap sysfs root for RAPL (default /sys/class/powercap; env WATTSUP_POWERCAP_ROOT)",
    )


def _mlflow_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("MLflow")
    g.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    g.add_argument(
        "--experiment", help="experiment name for a new run (default: $MLFLOW_EXPERIMENT_NAME or Default)"
    )
    g.add_argument(
        "--run-id", help="log to this existing run (default: $MLFLOW_RUN_ID, as set by 'mlflow run')"
    )
    g.add_argument("--run-name", help="name of a new run (default: the command's name)")
    g.add_argument(
        "--tag", action="append", default=[], metavar="KEY=VALUE", help="extra run tag (repeatable)"
    )


def _log_target_options(p: argparse.ArgumentParser) -> None:
    """Where `dice`/`flops` log: a run, the `mlflow run` run, or a new one; or nowhere."""
    p.add_argument("--no-log", action="store_true", help="print only, log nothing to MLflow")
    p.add_argument("--run-id", help="log to this run (default: $MLFLOW_RUN_ID, else a new run)")
    p.add_argument("--experiment", help="experiment for a new run")
    p.add_argument("--tracking-uri", help="MLflow tracking URI")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="wattsup",
        description="Log the energy, carbon and runtime of commands and pipelines to MLflow.",
        epilog="Metric, param and tag names: docs/metrics.md. Every energy figure carries its source "
        "(rapl, nvml-energy, nvml-power, estimate) in a wattsup.source.* tag.",
    )
    parser.add_argument("--version", action="version", version=f"mlflow-wattsup {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    run = sub.add_parser(
        "run",
        help="run a command and log its energy, carbon and runtime",
        description="Run CMD (without a shell) under the energy tracker and log it to an MLflow run: "
        "the active one ($MLFLOW_RUN_ID, as inside 'mlflow run') or a new one. CMD's output is "
        "streamed, its exit code passed through, SIGINT/SIGTERM forwarded to its process group. "
        "Example: wattsup run --experiment fs --region CA-QC -- recon-all -s bert -all",
    )
    _mlflow_options(run)
    _carbon_options(run)
    _meter_options(run)
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
    run.set_defaults(func=cmd_run)

    d = sub.add_parser(
        "dice",
        help="per-label Dice of two label volumes, logged to a run",
        description="Per-label Dice, volumes and volume differences of PRED against REF (.mgz, .nii, "
        ".nii.gz on the same grid), with FreeSurfer label names ($FREESURFER_HOME/FreeSurferColorLUT.txt "
        "or the built-in aseg+DKT table). Logs dice/<name>, dice_mean and a CSV to the run "
        "(--run-id, $MLFLOW_RUN_ID, or a new run) unless --no-log.",
    )
    d.add_argument("pred", help="predicted segmentation")
    d.add_argument("ref", help="reference segmentation")
    d.add_argument("--labels", help="comma-separated label IDs to score (default: every label found but 0)")
    d.add_argument("--include-background", action="store_true", help="also score label 0")
    d.add_argument("--lut", help="colour LUT for label names (default: FreeSurfer's, else built-in)")
    d.add_argument(
        "--merge",
        help="merge labels first: 'aseg' (cortical parcels -> cortex), 'fastsurfer-aseg', "
        "or FIRST[-LAST]:TARGET,... e.g. 1000-1999:3,2000-2999:42",
    )
    d.add_argument("--prefix", default="dice", help="metric prefix (default dice: dice/<name>, dice_mean)")
    d.add_argument("--csv", metavar="FILE", help="also write the table to FILE")
    _log_target_options(d)
    d.set_defaults(func=cmd_dice)

    fl = sub.add_parser(
        "flops",
        help="parameters, MACs and FLOPs of a torch model, logged to a run",
        description="Count params, MACs and FLOPs (= 2 x MACs) of one forward pass with ptflops (ATen "
        "backend; ptflops' module backend and torch's FlopCounterMode as cross-checks) and log them "
        "with a per-layer CSV. The model comes from --model MODULE:CALLABLE (called with no "
        "arguments) or --model-uri (an MLflow PyTorch model).",
    )
    src = fl.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--model",
        metavar="MODULE:CALLABLE",
        help="e.g. mlflow_wattsup.analysis.models.fastsurfer_cnn:FastSurferCNN",
    )
    src.add_argument("--model-uri", help="e.g. runs:/<run_id>/model")
    fl.add_argument(
        "--input-shape",
        action="append",
        required=True,
        metavar="N,C,H,W",
        help="input shape with batch, comma-separated; repeat for several inputs",
    )
    fl.add_argument("--samples", type=int, help="samples seen in training: also log train_flops_estimate")
    _log_target_options(fl)
    fl.set_defaults(func=cmd_flops)

    rep = sub.add_parser(
        "report",
        help="compare runs: N and mean (sd) of runtime, energy, carbon, Dice, params, FLOPs per group",
        description="Group the runs of EXPERIMENT(s) (default: by pipeline and device tags) and print, per "
        "group, N and mean (sd) of runtime, energy (Wh), carbon (g), Dice, params and FLOPs. Runs whose "
        "energy was estimated or imported are kept apart and marked. --carbon-intensity/--region/--pue "
        "recompute carbon from the logged energy (labelled as recomputed).",
    )
    rep.add_argument("experiments", nargs="+", metavar="EXPERIMENT", help="experiment name(s)")
    rep.add_argument(
        "--filter", default="", help="MLflow search filter, e.g. \"tags.wattsup.device = 'gpu'\""
    )
    rep.add_argument(
        "--group-by",
        default="pipeline,device",
        help="comma-separated tag/param names (wattsup. prefix optional); default pipeline,device",
    )
    rep.add_argument("--format", default="markdown", choices=["markdown", "csv", "html"])
    rep.add_argument(
        "--layout",
        default="long",
        choices=["long", "wide"],
        help="wide: one column per value of the last group key (e.g. CPU | GPU)",
    )
    rep.add_argument("--runtime-unit", default="h", choices=["s", "min", "h"])
    rep.add_argument(
        "--carbon-intensity", metavar="G_PER_KWH", help="what-if: recompute carbon at this intensity"
    )
    rep.add_argument("--region", help="what-if: recompute carbon with this region's intensity")
    rep.add_argument("--pue", help="what-if: recompute carbon with this PUE")
    rep.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    rep.add_argument("--tracking-uri", help="MLflow tracking URI")
    rep.set_defaults(func=cmd_report)

    pl = sub.add_parser(
        "plot",
        help="plots: energy vs runtime, power trace, cost vs Dice, energy per stage",
        description="Draw a PNG. scatter: energy vs runtime of the experiment's runs; pareto: energy (or "
        "carbon) vs mean Dice with the Pareto front; trace: a run's power over time with its stages; "
        "stages: energy per stage of a run (mean over --run-id's). With --log-to RUN_ID (default: the "
        "--run-id of trace/stages) the PNG is also logged as an artifact of that run.",
    )
    pl.add_argument("kind", choices=["scatter", "pareto", "trace", "stages"])
    pl.add_argument(
        "--experiment", action="append", default=[], help="experiment (scatter, pareto); repeatable"
    )
    pl.add_argument("--run-id", action="append", default=[], help="run (trace: one; stages: one or more)")
    pl.add_argument("--cost", default="energy", choices=["energy", "carbon"], help="pareto: cost axis")
    pl.add_argument("--group-by", default="pipeline,device")
    pl.add_argument("--filter", default="")
    pl.add_argument("--output", "-o", metavar="FILE.png", help="default: wattsup-<kind>.png")
    pl.add_argument(
        "--log-to", metavar="RUN_ID", help="also log the PNG to this run (artifact wattsup/plots/)"
    )
    pl.add_argument("--no-log", action="store_true", help="never log the PNG to a run")
    pl.add_argument("--tracking-uri", help="MLflow tracking URI")
    pl.set_defaults(func=cmd_plot)

    imp = sub.add_parser(
        "import",
        help="turn experiment-impact-tracker or CodeCarbon logs into runs",
        description="eit DIR...: experiment-impact-tracker folders (impacttracker/data.json + info.pkl, per-stage "
        "CSVs) become runs with energy, carbon, power series and stages (energy as EIT computes it; info.pkl "
        "is read without running pickled code). codecarbon FILE...: each emissions.csv row becomes a run. "
        "Importing the same data twice creates nothing new.",
    )
    imp.add_argument("tool", choices=["eit", "codecarbon"])
    imp.add_argument("paths", nargs="+", metavar="PATH")
    imp.add_argument("--experiment", help="default: eit-import / codecarbon-import")
    imp.add_argument(
        "--pue", help="PUE for carbon (EIT default 1.58, EIT's own default; CodeCarbon: the row's)"
    )
    imp.add_argument("--pipeline", help="wattsup.pipeline tag (EIT default: from the folder name)")
    imp.add_argument(
        "--device", choices=["cpu", "gpu"], help="wattsup.device tag (default: gpu if the log has GPUs)"
    )
    imp.add_argument("--tracking-uri", help="MLflow tracking URI")
    imp.set_defaults(func=cmd_import)

    regions = sub.add_parser(
        "regions",
        help="list the carbon-intensity regions known offline",
        description="List regions and their carbon intensity (g CO2eq/kWh) from "
        "CodeCarbon's offline tables, optionally filtered by QUERY.",
    )
    regions.add_argument("query", nargs="?", default="", help="case-insensitive filter")
    regions.set_defaults(func=cmd_regions)

    flush = sub.add_parser(
        "flush",
        help="replay values spooled while the tracking store was unreachable",
        description="Send spool files left by runs that could not reach their "
        "tracking store (e.g. a job that died during an outage).",
    )
    flush.add_argument("--tracking-uri", help="send to this store instead of the one recorded in the spool")
    flush.add_argument(
        "--spool-dir", help="spool directory (default: $WATTSUP_SPOOL_DIR or the user cache dir)"
    )
    flush.set_defaults(func=cmd_flush)
    return parser


#: the environment as the user gave it, for the commands we run (ours is tuned below)
_USER_ENV: dict[str, str] | None = None


def main(argv: Sequence[str] | None = None) -> int:
    global _USER_ENV
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USAGE
    _USER_ENV = dict(os.environ)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # we never phone home, nor does MLflow for us
    # A down tracking server must cost seconds, not MLflow's default 7 retries over ~4 minutes:
    # our sink spools and retries on its own. (Commands we run get the user's environment.)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        if args.debug:
            raise
        print(f"wattsup {args.command}: error: {one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, OSError) as exc:
        if args.debug:
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        print(f"wattsup {args.command}: error: {one_line(msg)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # not the user's input: one line still, exit 1, details with --debug
        if args.debug:
            raise
        msg = str(exc).splitlines()[0][:300] if str(exc) else ""
        print(
            f"wattsup {args.command}: error: {type(exc).__name__}: {msg} (--debug shows the traceback)",
            file=sys.stderr,
        )
        return 1


# -- wattsup regions / flush ------------------------------------------------------------------


def cmd_regions(args) -> int:
    from mlflow_wattsup.analysis.carbon import list_regions

    q = args.query.lower()
    rows = [r for r in list_regions() if q in r.region.lower()]
    for r in rows:
        print(f"{r.region:<40} {r.g_per_kwh:8.1f}  {r.source}")
    if not rows:
        raise UsageError(f"no region matches {args.query!r}")
    return 0


def cmd_flush(args) -> int:
    from pathlib import Path

    from mlflow_wattsup.mlflow_layer.sink import replay_spools, spool_dir

    directory = Path(args.spool_dir) if args.spool_dir else spool_dir()
    done, left = replay_spools(directory, args.tracking_uri)
    if done == 0 and left == 0:
        print(f"wattsup: nothing to replay in {directory}", file=sys.stderr)
    return 0 if left == 0 else 1


# -- wattsup report / plot / import ---------------------------------------------------------


def _group_by(text: str) -> tuple[str, ...]:
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    if not keys:
        raise UsageError("--group-by needs at least one name")
    return tuple(k[len("wattsup.") :] if k.startswith("wattsup.") else k for k in keys)


def cmd_report(args) -> int:
    from mlflow_wattsup.analysis.carbon import CarbonConfigError
    from mlflow_wattsup.mlflow_layer.report import build, fetch_runs, what_if

    try:
        runs = fetch_runs(args.experiments, args.filter, args.tracking_uri)
        table = build(
            runs,
            _group_by(args.group_by),
            args.runtime_unit,
            what_if(runs, args.carbon_intensity, args.region, args.pue),
        )
    except (CarbonConfigError, ValueError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    if not table.groups:
        raise UsageError(
            f"no run with wattsup metrics in {', '.join(args.experiments)}"
            + (f" matching {args.filter!r}" if args.filter else "")
        )
    text = table.render(args.format, args.layout)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
        print(f"wattsup: report of {sum(table.n.values())} runs written to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_plot(args) -> int:
    from mlflow.tracking import MlflowClient

    from mlflow_wattsup.mlflow_layer import plots
    from mlflow_wattsup.mlflow_layer.report import fetch_runs

    client = MlflowClient(args.tracking_uri)
    out = args.output or f"wattsup-{args.kind}.png"
    try:
        if args.kind in ("scatter", "pareto"):
            if not args.experiment:
                raise UsageError(f"plot {args.kind} needs --experiment")
            runs = fetch_runs(args.experiment, args.filter, args.tracking_uri)
            if args.kind == "scatter":
                path = plots.energy_vs_runtime(runs, out, _group_by(args.group_by))
            else:
                path = plots.cost_vs_dice(runs, out, args.cost, _group_by(args.group_by))
        else:
            if not args.run_id:
                raise UsageError(f"plot {args.kind} needs --run-id")
            if args.kind == "trace":
                path = plots.power_trace(client, args.run_id[0], out)
            else:
                path = plots.stage_energy(client, args.run_id, out)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(f"wattsup: wrote {path}", file=sys.stderr)
    log_to = (
        None
        if args.no_log
        else (args.log_to or (args.run_id[0] if args.kind in ("trace", "stages") and args.run_id else None))
    )
    if log_to:
        client.log_artifact(log_to, str(path), "wattsup/plots")
        print(f"wattsup: logged to run {log_to} as wattsup/plots/{path.name}", file=sys.stderr)
    return 0


def cmd_import(args) -> int:
    from mlflow.tracking import MlflowClient

    from mlflow_wattsup.analysis.carbon import parse_number
    from mlflow_wattsup.analysis.importers.codecarbon import CodeCarbonError, read_csv
    from mlflow_wattsup.analysis.importers.eit import EIT_DEFAULT_PUE, EitError, read_folder
    from mlflow_wattsup.mlflow_layer.importing import write
    from mlflow_wattsup.mlflow_layer.recording import ensure_experiment

    pue = None
    if args.pue is not None:
        try:
            pue = parse_number(args.pue, "--pue", 1.0)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif args.tool == "eit":
        pue = EIT_DEFAULT_PUE
    client = MlflowClient(args.tracking_uri)
    exp_id = ensure_experiment(client, args.experiment or f"{args.tool}-import")
    failed = 0
    for path in args.paths:
        try:
            if args.tool == "eit":
                runs, notes = [read_folder(path)], []
            else:
                runs, notes = read_csv(path)
        except (EitError, CodeCarbonError) as exc:
            print(f"wattsup import: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        for note in notes:
            print(f"wattsup import: {note}", file=sys.stderr)
        for run in runs:
            run_id, created = write(run, client, exp_id, pue, args.pipeline, args.device)
            kwh = (run.cpu_j + run.gpu_j + run.ram_j) / 3.6e6
            if created:
                print(
                    f"imported {run.name} -> run {run_id}: {run.duration_s / 3600:.3f} h, {kwh * 1000:.4g} Wh, "
                    f"{len(run.stages)} stage(s), {run.samples} sample(s)"
                )
            else:
                print(f"skipped {run.name}: already imported as run {run_id}")
            for note in run.notes:
                print(f"  note: {note}")
    return 2 if failed else 0


# -- wattsup dice / flops --------------------------------------------------------------------


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UsageError(f"{what} must be comma-separated integers, got {text!r}") from None


def cmd_dice(args) -> int:
    from mlflow_wattsup.analysis.dice import DiceInputError, dice_files
    from mlflow_wattsup.analysis.labels import LabelError, default_names, parse_merge, read_lut

    try:
        names, source = (read_lut(args.lut), args.lut) if args.lut else default_names()
        merge = parse_merge(args.merge) if args.merge else None
        labels = _int_list(args.labels, "--labels") if args.labels else None
        res = dice_files(
            args.pred,
            args.ref,
            labels=labels,
            names=names,
            names_source=source,
            include_background=args.include_background,
            merge=merge,
            merge_name=args.merge or "",
        )
    except (DiceInputError, LabelError) as exc:
        raise UsageError(str(exc)) from None
    print(f"{'label':>6}  {'name':<36} {'dice':>7} {'pred mm3':>11} {'ref mm3':>11} {'vol diff':>8}")
    for s in res.scores:
        vd = "" if s.volume_diff is None else f"{s.volume_diff:+8.1%}"
        print(
            f"{s.label:>6}  {s.name:<36} {s.dice:7.4f} {s.volume_pred_mm3:11.1f} {s.volume_ref_mm3:11.1f} {vd:>8}"
        )
    print(
        f"mean Dice {res.mean:.4f} over {len(res.scores)} labels"
        + (f"; absent: {list(res.absent)}" if res.absent else "")
    )
    if args.csv:
        with open(args.csv, "w") as f:
            f.write(res.to_csv())
    if not args.no_log:
        from mlflow_wattsup.mlflow_layer.log import log_dice, target_run

        with target_run(args.run_id, args.experiment, "dice", args.tracking_uri) as sink:
            log_dice(res, prefix=args.prefix, sink=sink)
            print(f"logged to run {sink.run_id}", file=sys.stderr)
    return 0


def _load_model(args):
    if args.model_uri:
        import mlflow.pytorch

        return mlflow.pytorch.load_model(args.model_uri, map_location="cpu")
    import importlib

    mod_name, sep, attr = args.model.partition(":")
    if not sep or not attr:
        raise UsageError(f"--model {args.model!r} is not MODULE:CALLABLE")
    try:
        obj = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as exc:
        raise UsageError(f"cannot load {args.model}: {exc}") from None
    from torch import nn

    if not isinstance(obj, nn.Module) and callable(obj):
        obj = obj()
    if not isinstance(obj, nn.Module):
        raise UsageError(f"{args.model} is not a torch.nn.Module nor a callable returning one")
    return obj


def cmd_flops(args) -> int:
    shapes = [tuple(_int_list(s, "--input-shape")) for s in args.input_shape]
    if any(not s or min(s) < 1 for s in shapes):
        raise UsageError("--input-shape needs positive sizes, batch included, e.g. 1,7,256,256")
    from mlflow_wattsup.analysis.flops import ModelCostError, model_cost

    model = _load_model(args)
    try:
        cost = model_cost(model, shapes if len(shapes) > 1 else shapes[0])
    except ModelCostError as exc:
        raise UsageError(str(exc)) from None
    print(f"params {cost.params:,} (trainable {cost.params_trainable:,})")
    print(f"MACs   {cost.macs:,} ({cost.macs / 1e9:.3f} G)  [{cost.backend}]")
    print(f"FLOPs  {cost.flops:,} (2 x MACs)")
    for b, m in cost.checks.items():
        print(
            f"  cross-check {b}: {m / 1e9:.3f} GMAC ({(m - cost.macs) / cost.macs:+.2%})"
            if cost.macs
            else f"  {b}: {m}"
        )
    for b, e in cost.errors.items():
        print(f"  {b} failed: {e}")
    if args.samples is not None:
        print(
            f"train_flops_estimate {cost.train_flops_estimate(args.samples):.4g} (3 x forward FLOPs x {args.samples} samples)"
        )
    if not args.no_log:
        from mlflow_wattsup.mlflow_layer.log import log_cost, target_run

        with target_run(args.run_id, args.experiment, type(model).__name__, args.tracking_uri) as sink:
            log_cost(cost, sink, args.samples)
            print(f"logged to run {sink.run_id}", file=sys.stderr)
    return 0


# -- wattsup run ------------------------------------------------------------------------------


def _parse_tags(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise UsageError(f"--tag {p!r} is not KEY=VALUE")
        out[key] = value
    return out


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


def cmd_run(args) -> int:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UsageError("no command given: wattsup run [options] -- CMD [ARGS...]")
    if not args.interval > 0:
        raise UsageError(f"--interval must be > 0 seconds, got {args.interval:g}")
    tags = _parse_tags(args.tag)
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

    env = dict(_USER_ENV or os.environ)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
