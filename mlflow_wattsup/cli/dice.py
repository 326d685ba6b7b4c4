"""``wattsup dice``: per-label Dice of two label volumes."""

from __future__ import annotations

import sys

from mlflow_wattsup.cli.common import UsageError, int_list, log_target_options


def register(sub) -> None:
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
    log_target_options(d)
    d.set_defaults(func=main)


def main(args) -> int:
    from mlflow_wattsup.analysis.dice import DiceInputError, dice_files
    from mlflow_wattsup.analysis.labels import LabelError, default_names, parse_merge, read_lut

    try:
        names, source = (read_lut(args.lut), args.lut) if args.lut else default_names()
        merge = parse_merge(args.merge) if args.merge else None
        labels = int_list(args.labels, "--labels") if args.labels else None
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
            f"{s.label:>6}  {s.name:<36} {s.dice:7.4f} {s.volume_pred_mm3:11.1f} {s.volume_ref_mm3:11.1f} "
            f"{vd:>8}"
        )
    print(
        f"mean Dice {res.mean:.4f} over {len(res.scores)} labels"
        + (f"; absent: {list(res.absent)}" if res.absent else "")
    )
    if args.csv:
        with open(args.csv, "w") as f:
            f.write(res.to_csv())
    if not args.no_log:
        from mlflow_wattsup.run.log import log_dice, target_run

        with target_run(args.run_id, args.experiment, "dice", args.tracking_uri) as sink:
            log_dice(res, prefix=args.prefix, sink=sink)
            print(f"logged to run {sink.run_id}", file=sys.stderr)
    return 0
