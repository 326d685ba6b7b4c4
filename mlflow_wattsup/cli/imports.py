"""``wattsup import``: experiment-impact-tracker folders and CodeCarbon CSVs as runs."""

from __future__ import annotations

import os
import sys

from mlflow_wattsup.cli.common import UsageError


def register(sub) -> None:
    imp = sub.add_parser(
        "import",
        help="turn experiment-impact-tracker or CodeCarbon logs into runs",
        description="eit DIR...: experiment-impact-tracker folders (impacttracker/data.json + info.pkl, "
        "per-stage CSVs) become runs with energy, carbon, power series and stages (energy as EIT computes "
        "it; info.pkl "
        "is read without running pickled code). codecarbon FILE...: each emissions.csv row becomes a run. "
        "Importing the same data twice creates nothing new.",
    )
    imp.add_argument("tool", choices=["eit", "codecarbon"])
    imp.add_argument("paths", nargs="+", metavar="PATH")
    imp.add_argument(
        "--experiment",
        help="default: $MLFLOW_EXPERIMENT_NAME / $MLFLOW_EXPERIMENT_ID, else eit-import / codecarbon-import",
    )
    imp.add_argument(
        "--pue", help="PUE for carbon (EIT default 1.58, EIT's own default; CodeCarbon: the row's)"
    )
    imp.add_argument("--pipeline", help="wattsup.pipeline tag (EIT default: from the folder name)")
    imp.add_argument(
        "--device", choices=["cpu", "gpu"], help="wattsup.device tag (default: gpu if the log has GPUs)"
    )
    imp.add_argument("--tracking-uri", help="MLflow tracking URI")
    imp.set_defaults(func=main)


def main(args) -> int:
    from mlflow.tracking import MlflowClient

    from mlflow_wattsup.analysis.carbon import parse_number
    from mlflow_wattsup.analysis.importers.codecarbon import CodeCarbonError, read_csv
    from mlflow_wattsup.analysis.importers.eit import EIT_DEFAULT_PUE, EitError, read_folder
    from mlflow_wattsup.report.links import ensure_runs_view, open_lines
    from mlflow_wattsup.run.importing import write
    from mlflow_wattsup.run.lifecycle import ensure_experiment
    from mlflow_wattsup.sink.transport import Store

    pue = None
    if args.pue is not None:
        try:
            pue = parse_number(args.pue, "--pue", 1.0)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif args.tool == "eit":
        pue = EIT_DEFAULT_PUE
    store = Store(MlflowClient(args.tracking_uri))
    from_env = os.environ.get("MLFLOW_EXPERIMENT_ID") or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    # --experiment, else MLflow's convention (the environment), as `wattsup run` and `mlflow run`
    exp_id = ensure_experiment(store, args.experiment or (None if from_env else f"{args.tool}-import"))
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
            run_id, created = write(run, store, exp_id, pue, args.pipeline, args.device)
            kwh = (run.cpu_j + run.gpu_j + run.ram_j) / 3.6e6
            if created:  # described as every run we end is
                print(
                    f"imported {run.name} -> run {run_id}: {run.duration_s / 3600:.3f} h, {kwh * 1000:.4g} "
                    "Wh, "
                    f"{len(run.stages)} stage(s), {run.samples} sample(s)"
                )
            else:
                print(f"skipped {run.name}: already imported as run {run_id}")
            for note in run.notes:
                print(f"  note: {note}")
    if len(args.paths) > failed:
        ensure_runs_view(store.client, exp_id)
        for line in open_lines(store.uri, exp_id, view=True):
            print(line)
    return 2 if failed else 0
