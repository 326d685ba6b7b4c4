"""``wattsup study``: subjects x pipelines x devices as one MLflow parent run with a child run
each, on this machine or on SLURM; resumable."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from mlflow_wattsup.cli.common import UsageError


def register(sub) -> None:
    p = sub.add_parser(
        "study",
        help="run pipelines over a cohort (BIDS or TSV) on devices, as one MLflow study, locally or on SLURM",
        description="Run every PIPELINE (an MLflow Project entry point) for every subject of SUBJECTS (a BIDS "
        "folder or a TSV with subject, t1[, reference]) on every DEVICE: one parent run (counts, the "
        "comparison table and plots as artifacts) and one child run per subject x pipeline x device. Running "
        "the same study again skips the children already FINISHED. Ctrl-C cancels the jobs and marks the "
        "runs KILLED. --sweep runs one child per value of a parameter (e.g. pruning levels). The report ends "
        "with a forecast of the cost of more subjects; study/dice.csv holds every child's Dice per label. "
        "Example: wattsup study participants.tsv -p bet=projects/segmentation#brain_extraction "
        "--device cpu --experiment bet-study",
    )
    p.add_argument("subjects", metavar="SUBJECTS", help="BIDS dataset folder, or a TSV file")
    p.add_argument(
        "--pipeline",
        "-p",
        action="append",
        required=True,
        metavar="[NAME=]PROJECT_DIR[#ENTRY]",
        help="an MLflow Project entry point to run per subject (repeatable)",
    )
    p.add_argument(
        "-P",
        "--param",
        action="append",
        default=[],
        metavar="[NAME.]KEY=VALUE",
        help="entry-point parameter for every pipeline declaring KEY, or only pipeline NAME; {subject} {t1} "
        "{reference} {device} {pipeline} {workdir} are filled in. t1, sid, subject, reference, "
        "reference_mask and device are filled from the subject and device unless given",
    )
    p.add_argument(
        "--device", action="append", choices=["cpu", "gpu"], help="cpu and/or gpu (repeatable; default cpu)"
    )
    p.add_argument(
        "--sweep",
        action="append",
        default=[],
        metavar="[NAME.]KEY=V1,V2,...",
        help="run one child per value of parameter KEY (every pipeline declaring it, or only pipeline NAME), "
        "each tagged wattsup.sweep.KEY; several --sweep: every combination. The report groups by the values. "
        "E.g. --sweep prune=0,0.25,0.5",
    )
    p.add_argument(
        "--forecast",
        action="append",
        default=[],
        metavar="N[,N...]",
        help="also forecast the cost of N subjects (e.g. 40000,100000); always forecast: the study's subject "
        "count x 10, 100, 1000. A forecast, with a prediction interval, never a measurement",
    )
    p.add_argument(
        "--forecast-region",
        metavar="REGION",
        help="the forecast's what-if: carbon at this region's intensity (see wattsup regions)",
    )
    p.add_argument(
        "--forecast-carbon-intensity",
        metavar="G_PER_KWH",
        help="the forecast's what-if: carbon at this intensity",
    )
    p.add_argument("--forecast-pue", metavar="PUE", help="the forecast's what-if: carbon at this PUE")
    p.add_argument(
        "--name",
        help="study id (default: study-<hash of dataset, pipelines, params, devices>); same id = resume",
    )
    p.add_argument("--experiment", default="wattsup-study", help="MLflow experiment (default wattsup-study)")
    p.add_argument(
        "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    p.add_argument("--backend", default="local", choices=["local", "slurm"])
    p.add_argument(
        "--backend-config",
        metavar="JSON_FILE_OR_TEXT",
        help="slurm: partition, time, mem, cpus_per_task, gpus, gres, account, qos, sbatch (extra #SBATCH "
        "lines), setup (shell lines), python, max_parallel",
    )
    p.add_argument(
        "--retries", type=int, default=0, help="re-run a FAILED child up to N more times (default 0)"
    )
    p.add_argument(
        "--max-jobs", type=int, help="local: children at once (default: usable cores // --cpus-per-job)"
    )
    p.add_argument("--cpus-per-job", type=int, default=1, help="local: cores one child needs (default 1)")
    p.add_argument(
        "--gpus",
        metavar="IDS",
        help="local: GPU ids to hand out, one per gpu child (default: $CUDA_VISIBLE_DEVICES, else all NVML sees)",
    )
    p.add_argument("--gpus-per-job", type=int, default=1, help="GPUs per gpu child (default 1)")
    p.add_argument(
        "--reference-dir", metavar="DIR", help="BIDS: folder of reference segmentations (derivatives)"
    )
    p.add_argument(
        "--reference-pattern",
        default="{subject}/**/*aseg*",
        help="BIDS: glob under --reference-dir, {subject} {session} {id} filled in (default {subject}/**/*aseg*)",
    )
    p.add_argument(
        "--agreement",
        action="append",
        default=[],
        metavar="RUN:REFERENCE",
        help="compare pipeline RUN with pipeline REFERENCE subject by subject (e.g. fastsurfer:freesurfer): once "
        "both children of a subject FINISHED, RUN's child gets its volume and thickness differences from "
        "REFERENCE's subject directory (and Dice of the segmentations), REFERENCE's child its own values, and "
        "the report adds per structure N, Pearson r and ICC(2,1) across subjects under the cost table. Subject "
        "directories come from each child's sd or subjects_dir and sid parameters (repeatable, one reference "
        "per pipeline)",
    )
    p.add_argument("--workdir", help="logs, manifests and the report (default ./wattsup-studies/<study id>)")
    p.add_argument("--dry-run", action="store_true", help="print the plan, run nothing")
    p.set_defaults(func=main)


def _gpu_ids(text: str | None) -> list[str]:
    if text is not None:
        return [t for t in text.split(",") if t.strip()]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [t for t in env.split(",") if t.strip()]
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no driver: no GPU to hand out
        return []


def _backend_config(text: str | None) -> dict:
    if not text:
        return {}
    try:
        if text.lstrip().startswith("{"):
            data = json.loads(text)
        else:
            data = json.loads(Path(text).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"--backend-config {text}: {exc.strerror or exc}") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"--backend-config {text}: not JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise UsageError(f"--backend-config {text}: must be a JSON object")
    return data


def _extras(args, sweep_names: list[str], subjects: int):
    """The forecast's subject counts and what-if (checked before any run is created)."""
    from mlflow_wattsup.analysis.carbon import CarbonConfigError
    from mlflow_wattsup.analysis.forecast import ForecastError, default_counts
    from mlflow_wattsup.report.whatif import what_if
    from mlflow_wattsup.study.outputs import Extras

    counts = []
    for text in args.forecast:
        for item in text.split(","):
            item = item.strip().replace("_", "")
            if not item.isdigit():
                raise UsageError(
                    f"--forecast {text}: give whole numbers of subjects, e.g. --forecast 40000,100000"
                )
            counts.append(int(item))
    try:
        default_counts(subjects, counts)
        wi = what_if([], args.forecast_carbon_intensity, args.forecast_region, args.forecast_pue)
    except ForecastError as exc:
        raise UsageError(str(exc)) from None
    except (CarbonConfigError, ValueError) as exc:
        msg = str(exc).splitlines()[0]
        if "--pue alone" in msg:
            msg = "--forecast-pue alone: give --forecast-region or --forecast-carbon-intensity too"
        raise UsageError(msg) from None
    return Extras(sweep_names, counts, None, wi)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(args) -> int:
    from mlflow_wattsup.backends.common import check_cluster_store

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///mlflow.db"
    if args.backend == "slurm" and not args.dry_run:
        check_cluster_store(uri)  # before seconds of imports
    import mlflow
    from mlflow.tracking import MlflowClient

    from mlflow_wattsup.backends.slurm import SlurmConfig
    from mlflow_wattsup.sink import keys
    from mlflow_wattsup.sink.transport import Store
    from mlflow_wattsup.study import plan as planning
    from mlflow_wattsup.study import subjects as subj
    from mlflow_wattsup.study import sweep as sweeping
    from mlflow_wattsup.study.pairing import parse_pairs
    from mlflow_wattsup.study.runner import Study, default_max_jobs

    if args.retries < 0:
        raise UsageError("--retries must be 0 or more")
    devices = list(dict.fromkeys(args.device or ["cpu"]))
    cfg = _backend_config(args.backend_config)
    if args.backend == "slurm":
        SlurmConfig.from_dict(cfg)  # unknown keys: one line now, not after creating runs
    elif cfg:
        raise UsageError("--backend-config is for --backend slurm")
    try:
        subjects = subj.load(
            args.subjects, args.reference_dir, args.reference_pattern if args.reference_dir else ""
        )
        pipelines = [planning.Pipeline.parse(s) for s in args.pipeline]
        planning.assign_params(pipelines, args.param)
        sweeps = sweeping.parse(args.sweep, pipelines)
        combos = sweeping.combinations(sweeps, pipelines)
        name = args.name or ""
        workdir = Path(args.workdir).absolute() if args.workdir else None
        provisional = workdir or Path("wattsup-studies").absolute() / (name or "study")
        children = planning.plan(subjects, pipelines, devices, provisional, combos)
        pairs = parse_pairs(args.agreement, pipelines)
    except (subj.SubjectsError, planning.PlanError) as exc:
        raise UsageError(str(exc)) from None
    if sweeps and pairs:
        raise UsageError("--agreement compares one child per subject and pipeline: run it without --sweep")
    extras = _extras(args, sweeping.names(sweeps), len(subjects))
    if args.dry_run:
        for c in children:
            print(
                f"{c.subject.id}\t{c.pipeline.name}\t{c.device}\t"
                + " ".join(f"{k}={v}" for k, v in c.params.items())
            )
        print(f"{len(children)} children")
        for a, b in pairs:
            print(f"agreement: {a} against {b}, per subject")
        return 0
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = Store(client).experiment_id(args.experiment)
    gpu_ids = _gpu_ids(args.gpus) if args.backend == "local" else []
    if args.backend == "local" and "gpu" in devices and len(gpu_ids) < args.gpus_per_job:
        raise UsageError(
            f"device gpu needs {args.gpus_per_job} GPU(s) per child, {len(gpu_ids)} visible here (--gpus IDS)"
        )
    extras.concurrency = (
        (args.max_jobs or default_max_jobs(args.cpus_per_job))
        if args.backend == "local"
        else (int(cfg.get("max_parallel") or 0) or None)
    )
    study = Study(
        client,
        experiment_id,
        subjects,
        args.subjects,
        pipelines,
        children,
        devices,
        name=name,
        backend=args.backend,
        retries=args.retries,
        max_jobs=args.max_jobs or default_max_jobs(args.cpus_per_job),
        gpu_ids=gpu_ids,
        gpus_per_job=args.gpus_per_job,
        slurm_config=cfg,
        workdir=workdir,
        agreement=pairs,
        sweeps=sweeps,
        extras=extras,
    )
    if workdir is None and study.workdir != provisional:  # {workdir} in params: the study's real folder
        children[:] = planning.plan(subjects, pipelines, devices, study.workdir, combos)
    old = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = study.run()
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, old)
    if result.report_markdown:
        print(result.report_markdown)
    c = result.counts
    return 0 if c[keys.STUDY_FINISHED] == c[keys.STUDY_CHILDREN] else 1
