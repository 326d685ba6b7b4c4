"""``wattsup agree``: volumes and cortical thickness of a subject directory against a reference
one, logged to a run; or, with no directory, the agreement of two pipelines across the subjects of
experiment(s): per structure N, Pearson r and ICC(2,1)."""

from __future__ import annotations

import sys

from mlflow_wattsup.cli.common import UsageError, write_output


def register(sub) -> None:
    a = sub.add_parser(
        "agree",
        help="volume/thickness differences against a reference subject dir; r and ICC across subjects",
        description="With SUBJECT_DIR: log its volumes (stats/aseg.stats or aseg+DKT.stats) and cortical "
        "thickness (stats/?h.aparc.DKTatlas[.mapped].stats) to a run (--run-id, $MLFLOW_RUN_ID, or a new "
        "run in --experiment), and with REFERENCE_DIR (the other pipeline's output for the same subject) "
        "their differences per structure (run - reference), means and CSV tables, and Dice of the two "
        "segmentations; what cannot be compared is said in wattsup.agree.* tags. Without SUBJECT_DIR: read "
        "the finished runs of "
        "--experiment tagged wattsup.subject and wattsup.pipeline, pair them by subject and print per "
        "structure N, means, mean difference, Pearson r and ICC(2,1) of the first of --pipelines against "
        "the second.",
    )
    a.add_argument("subject_dir", nargs="?", metavar="SUBJECT_DIR", help="the run's subject directory")
    a.add_argument(
        "reference_dir", nargs="?", metavar="REFERENCE_DIR", help="the reference subject directory"
    )
    a.add_argument(
        "--experiment",
        action="append",
        default=[],
        help="per run: experiment of a new run; across subjects: experiment(s) to read (repeatable)",
    )
    a.add_argument("--run-id", help="per run: log to this run (default: $MLFLOW_RUN_ID, else a new run)")
    a.add_argument("--no-log", action="store_true", help="per run: print only, log nothing")
    a.add_argument(
        "--no-dice",
        action="store_true",
        help="per run: skip Dice of the two directories' mri/aparc.DKTatlas+aseg[.deep].mgz",
    )
    a.add_argument(
        "--pipelines",
        default="fastsurfer,freesurfer",
        metavar="A,B",
        help="across subjects: the two wattsup.pipeline values, A against B (default fastsurfer,freesurfer)",
    )
    a.add_argument(
        "--filter", default="", help="across subjects: extra MLflow search filter (e.g. a study tag)"
    )
    a.add_argument("--format", default="markdown", choices=["markdown", "html", "csv"])
    a.add_argument("--output", "-o", metavar="FILE", help="write the table to FILE instead of stdout")
    a.add_argument("--tracking-uri", help="MLflow tracking URI")
    a.set_defaults(func=main)


def pipeline_pair(text: str) -> tuple[str, str]:
    names = [p.strip() for p in text.split(",") if p.strip()]
    if len(names) != 2 or names[0] == names[1]:
        raise UsageError(f"--pipelines needs two different names, A,B; got {text!r}")
    return names[0], names[1]


def main(args) -> int:
    if args.subject_dir is None:
        return study(args)
    from mlflow_wattsup.analysis.fsstats import StatsFormatError
    from mlflow_wattsup.run.subject_stats import agreement, log_result
    from mlflow_wattsup.sink import keys

    try:
        result = agreement(args.subject_dir, args.reference_dir, not args.no_dice)
    except StatsFormatError as exc:
        raise UsageError(str(exc)) from None
    if not result.metrics:
        raise UsageError(
            f"{args.subject_dir}: no stats to log ({result.tags[keys.stats_tag('volume')]}; "
            f"{result.tags[keys.stats_tag('thickness')]})"
        )
    lines = [f"{k}: {v}" for k, v in sorted(result.tags.items())]
    for measure, c in result.comparisons.items():
        unit = "mm3" if measure == "volume" else "mm"
        lines.append(
            f"{measure}: {c.n} compared, mean diff {c.mean_diff():+.4g} {unit}, "
            f"mean |diff| {c.mean_absdiff():.4g} {unit}"
            + (f", mean |rel diff| {c.mean_absreldiff():.2%}" if c.mean_absreldiff() is not None else "")
            if c.n
            else f"{measure}: nothing compared"
        )
    for res, prefix in result.dice:
        lines.append(f"{prefix}: mean {res.mean:.4f} over {len(res.scores)} labels")
    text = "\n".join(lines) + "\n"
    if args.output:
        tables = "".join(f"# {path}\n{t}" for path, t in result.tables.items())
        write_output(args.output, tables)
    print(text, end="", file=sys.stderr if args.output else sys.stdout)
    if not args.no_log:
        from mlflow_wattsup.run.log import target_run

        if len(args.experiment) > 1:
            raise UsageError("per run, give at most one --experiment (for a new run)")
        exp = args.experiment[0] if args.experiment else None
        with target_run(args.run_id, exp, "agreement", args.tracking_uri) as sink:
            log_result(sink, result)
            print(f"logged to run {sink.run_id}", file=sys.stderr)
    return 0


def study(args) -> int:
    from mlflow_wattsup.report.agreement_table import notes, render, study_agreement

    if args.reference_dir or args.run_id or args.no_log:
        raise UsageError("REFERENCE_DIR, --run-id and --no-log need SUBJECT_DIR")
    if not args.experiment:
        raise UsageError("give SUBJECT_DIR [REFERENCE_DIR] for one run, or --experiment X for a study")
    a, b = pipeline_pair(args.pipelines)
    from mlflow.tracking import MlflowClient

    from mlflow_wattsup.sink.transport import Store

    store = Store(MlflowClient(args.tracking_uri))
    try:
        ids = store.experiment_ids(args.experiment)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    table = study_agreement(ids, (a, b), store, args.filter)
    if not table.subjects:
        why = "; ".join(notes(table)[1:]) or "no run tagged wattsup.subject and wattsup.pipeline with stats"
        raise UsageError(f"no subject has finished {a} and {b} runs with logged volumes or thickness ({why})")
    write_output(args.output, render(table, args.format))
    return 0
