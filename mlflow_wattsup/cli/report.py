"""``wattsup report``: compare runs, N and mean (sd) per group."""

from __future__ import annotations

import sys

from mlflow_wattsup.cli.common import UsageError, group_by, write_output


def register(sub) -> None:
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
    rep.add_argument(
        "--agreement",
        metavar="A,B",
        help="also show pipeline A's agreement with B across subjects: N, Pearson r, ICC(2,1) per "
        "structure (see wattsup agree); markdown and html only",
    )
    rep.add_argument("--output", "-o", metavar="FILE", help="write to FILE instead of stdout")
    rep.add_argument(
        "--dice-table",
        metavar="FILE",
        help="instead of the comparison, write the long per-label Dice table of the runs (run_id, study, "
        "subject, pipeline, swept values, device, prefix, label, name, dice) to FILE (.csv or .parquet)",
    )
    rep.add_argument("--tracking-uri", help="MLflow tracking URI")
    rep.set_defaults(func=main)


def main(args) -> int:
    from mlflow_wattsup.analysis.carbon import CarbonConfigError
    from mlflow_wattsup.report import build, fetch_runs, render, what_if

    if args.dice_table:
        return _dice_table(args)
    try:
        runs = fetch_runs(args.experiments, args.filter, args.tracking_uri)
        table = build(
            runs,
            group_by(args.group_by),
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
    text = render(table, args.format, args.layout)
    if args.agreement and args.format != "csv":
        from mlflow_wattsup.cli.agree import pipeline_pair
        from mlflow_wattsup.report.agreement_table import agreement_block

        pair = pipeline_pair(args.agreement)
        block = agreement_block(args.experiments, pair, args.format, args.filter, args.tracking_uri)
        text += "\n" + (
            block or f"No subject has runs of both {pair[0]} and {pair[1]} with volumes or thickness.\n"
        )
    write_output(args.output, text, f"report of {sum(table.n.values())} runs written")
    return 0


def _dice_table(args) -> int:
    """``--dice-table FILE``: every run's Dice per label, from its ``wattsup/dice*.csv`` artifacts."""
    from mlflow.tracking import MlflowClient

    from mlflow_wattsup.report import dice_table

    client = MlflowClient(args.tracking_uri)
    ids = []
    for name in args.experiments:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise UsageError(f"no experiment named {name!r} at {client.tracking_uri}")
        ids.append(exp.experiment_id)
    if not args.dice_table.lower().endswith(dice_table.FORMATS):
        raise UsageError(f"--dice-table {args.dice_table}: give a .csv or .parquet file")
    header, rows = dice_table.from_runs(dice_table.search(client, ids, args.filter), args.tracking_uri)
    if not rows:
        raise UsageError(
            f"no run with Dice in {', '.join(args.experiments)}"
            + (f" matching {args.filter!r}" if args.filter else "")
        )
    path = dice_table.write(args.dice_table, header, rows)
    print(f"wattsup: {len(rows)} rows (runs x labels) written to {path}", file=sys.stderr)
    return 0
