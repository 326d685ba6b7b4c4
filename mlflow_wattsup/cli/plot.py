"""``wattsup plot``: energy vs runtime, power trace, cost vs Dice, energy per stage."""

from __future__ import annotations

import sys

from mlflow_wattsup.cli.common import UsageError, group_by


def register(sub) -> None:
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
    pl.set_defaults(func=main)


def main(args) -> int:
    from mlflow.tracking import MlflowClient

    from mlflow_wattsup.report import fetch_runs, plots

    client = MlflowClient(args.tracking_uri)
    out = args.output or f"wattsup-{args.kind}.png"
    try:
        if args.kind in ("scatter", "pareto"):
            if not args.experiment:
                raise UsageError(f"plot {args.kind} needs --experiment")
            runs = fetch_runs(args.experiment, args.filter, args.tracking_uri)
            if args.kind == "scatter":
                path = plots.energy_vs_runtime(runs, out, group_by(args.group_by))
            else:
                path = plots.cost_vs_dice(runs, out, args.cost, group_by(args.group_by))
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
