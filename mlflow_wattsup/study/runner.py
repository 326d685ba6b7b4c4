"""Run a study - one parent MLflow run, one child run per subject x pipeline x device,
executed by the local or the SLURM backend; resumable; the comparison table and plots at the end.

Tags: every run of a study carries ``wattsup.study`` (the study id) and ``wattsup.study.role``
(``parent``/``child``); children carry ``wattsup.subject``, ``wattsup.pipeline``,
``wattsup.device``, ``wattsup.study.params_hash`` and ``wattsup.study.attempt``, and
``mlflow.parentRunId``, so ``search_runs`` and ``wattsup report --filter`` group them.

Sweeps (``--sweep``, study/sweep.py): one child per swept value, tagged ``wattsup.sweep.<name>``;
the report is then grouped by the values too. Every study also writes the long per-label Dice
table and ends its report with a forecast for more subjects (study/outputs.py).

Resuming: the same study (same id) skips every child whose subject, pipeline, device and
parameters already have a FINISHED run; a child still SCHEDULED/RUNNING from a study that died is
cancelled (its SLURM job scancel'ed), marked KILLED and run again; FAILED and KILLED ones run
again. Within one invocation a FAILED child is retried up to ``retries`` times (each attempt is a
run of its own). Ctrl-C (or SIGTERM) cancels the jobs, marks their runs KILLED, and the parent too.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_wattsup.backends.common import (
    FAILED,
    FINISHED,
    KILLED,
    RUNNING,
    SCHEDULED,
    TERMINAL,
    Task,
    absolute_uri,
    check_cluster_store,
)
from mlflow_wattsup.sink import keys
from mlflow_wattsup.study import sweep as sweeping
from mlflow_wattsup.study.outputs import Extras
from mlflow_wattsup.study.pairing import StudyAgreement
from mlflow_wattsup.study.plan import Child, Pipeline, spec_sha256
from mlflow_wattsup.study.subjects import Subject, dataset_sha256


@dataclass
class StudyResult:
    study_id: str
    parent_run_id: str
    counts: dict[str, int]
    report_markdown: str = ""
    children: dict[tuple, tuple[str, str]] = field(default_factory=dict)  # key -> (run_id, status)


def _q(value: str) -> str:
    return value.replace("'", "\\'")


class Study:
    """``backend`` is ``"local"`` or ``"slurm"``; ``slurm_config`` a :class:`SlurmConfig` dict."""

    def __init__(
        self,
        client,
        experiment_id: str,
        subjects: list[Subject],
        dataset: str | Path,
        pipelines: list[Pipeline],
        children: list[Child],
        devices: list[str],
        name: str = "",
        backend: str = "local",
        retries: int = 0,
        max_jobs: int = 1,
        gpu_ids: list[str] | None = None,
        gpus_per_job: int = 1,
        slurm_config: dict | None = None,
        workdir: str | Path | None = None,
        log: Callable[[str], None] | None = None,
        agreement: list[tuple[str, str]] | None = None,
        sweeps: list[sweeping.Sweep] | None = None,
        extras: Extras | None = None,
    ):
        from mlflow_wattsup.sink.transport import Store

        self.client = client
        self.store = Store(client)  # searches (every page)
        self.uri = absolute_uri(client.tracking_uri)
        self.experiment_id = str(experiment_id)
        self.subjects, self.pipelines, self.children, self.devices = subjects, pipelines, children, devices
        self.dataset = Path(dataset).absolute()
        root = self.dataset if self.dataset.is_dir() else self.dataset.parent
        self.dataset_sha = dataset_sha256(subjects, root)
        self.sweeps = list(sweeps or [])
        self.extras = extras or Extras(sweeping.names(self.sweeps))
        self.spec_sha = spec_sha256(self.dataset_sha, pipelines, devices, sweeping.spec(self.sweeps))
        self.study_id = name or f"study-{self.spec_sha[:12]}"
        self.backend = backend
        self.retries = retries
        self.max_jobs = max_jobs
        self.gpu_ids = gpu_ids or []
        self.gpus_per_job = gpus_per_job
        self.slurm_config = dict(slurm_config or {})
        self.workdir = Path(workdir or Path("wattsup-studies") / self.study_id).absolute()
        self.log = log or (lambda msg: print(msg, file=sys.stderr))
        #: (run pipeline, reference pipeline) pairs compared subject by subject (study/pairing.py)
        self.agreement = (
            StudyAgreement(self.store, self.experiment_id, agreement, children, self.log)
            if agreement
            else None
        )
        self._logs: dict[str, str] = {}  # run id -> its job's output file
        #: wall seconds of this invocation's phases: create (child runs), submit (sbatch, slurm
        #: only), execute (from the first start to the last end, submission included), finish
        self.timings: dict[str, float] = {"create_s": 0.0, "submit_s": 0.0, "execute_s": 0.0, "finish_s": 0.0}
        if backend == "slurm":
            check_cluster_store(self.uri)
        elif backend != "local":
            raise ValueError(f"backend must be local or slurm, got {backend!r}")

    # -- MLflow bookkeeping -------------------------------------------------------------------

    def _search(self, role: str) -> list:
        flt = f"tags.`{keys.STUDY}` = '{_q(self.study_id)}' and tags.`{keys.STUDY_ROLE}` = '{role}'"
        return self.store.search_runs([self.experiment_id], flt)

    def _parent(self) -> str:
        from mlflow.entities import Param

        found = self._search("parent")
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status=RUNNING)
            return run_id
        tags = {
            keys.STUDY: self.study_id,
            keys.STUDY_ROLE: "parent",
            "mlflow.runName": self.study_id,
            keys.STUDY_DATASET: str(self.dataset),
            keys.STUDY_DATASET_SHA256: self.dataset_sha,
            keys.STUDY_SPEC_SHA256: self.spec_sha,
            keys.STUDY_BACKEND: self.backend,
        }
        run = self.client.create_run(self.experiment_id, tags=tags)
        params = {
            keys.STUDY_SUBJECTS: str(len(self.subjects)),
            keys.STUDY_PIPELINES: ", ".join(
                f"{p.name}={p.project_dir.name}#{p.entry_point}" for p in self.pipelines
            ),
            keys.STUDY_DEVICES: ",".join(self.devices),
        }
        for p in self.pipelines:
            for k, v in sorted(p.params.items()):
                params[f"{keys.STUDY_PARAM_PREFIX}{p.name}.{k}"] = v[:6000]
        params.update({k: v[:6000] for k, v in sweeping.parent_params(self.sweeps).items()})
        self.client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params.items()])
        return run.info.run_id

    def _existing(self) -> dict[tuple, list]:
        by_key: dict[tuple, list] = {}
        for run in self._search("child"):
            t = run.data.tags
            key = (
                t.get(keys.SUBJECT),
                t.get(keys.PIPELINE),
                t.get(keys.DEVICE),
                t.get(keys.STUDY_PARAMS_HASH),
            )
            by_key.setdefault(key, []).append(run)
        for runs in by_key.values():
            runs.sort(key=lambda r: int(r.data.tags.get(keys.STUDY_ATTEMPT, "0") or 0))
        return by_key

    def _create_child(self, parent_id: str, c: Child, attempt: int) -> str:
        from mlflow.entities import Param

        tags = {
            "mlflow.parentRunId": parent_id,
            "mlflow.runName": c.run_name,
            "mlflow.source.type": "PROJECT",
            "mlflow.source.name": str(c.pipeline.project_dir),
            "mlflow.project.entryPoint": c.pipeline.entry_point,
            "mlflow.project.backend": self.backend,
            keys.STUDY: self.study_id,
            keys.STUDY_ROLE: "child",
            keys.SUBJECT: c.subject.id,
            keys.PIPELINE: c.pipeline.name,
            keys.DEVICE: c.device,
            keys.STUDY_PARAMS_HASH: c.params_hash,
            keys.STUDY_ATTEMPT: str(attempt),
            **keys.sweep_tags(c.sweep),
        }
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=c.run_name)
        run_id = run.info.run_id
        final, extra = c.pipeline.entry.compute_parameters(c.params, storage_dir=None)
        self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in {**final, **extra}.items()])
        self.client.update_run(run_id, status=SCHEDULED)
        return run_id

    def _task(self, c: Child, run_id: str, storage_dir: str) -> Task:
        command = c.pipeline.entry.compute_command(c.params, storage_dir)
        gpus = self.gpus_per_job if c.device == "gpu" else 0
        log = str(self.workdir / "logs" / f"{run_id}.out") if self.backend == "local" else ""
        return Task(run_id, command, str(c.pipeline.project_dir), self.uri, self.experiment_id, {}, gpus, log)

    def _stale(self, runs: list) -> None:
        """Runs left SCHEDULED/RUNNING by a study that died: cancel their jobs, mark them KILLED."""
        from mlflow_wattsup.backends import slurm

        for run in runs:
            if run.info.status in TERMINAL:
                continue
            job = run.data.tags.get(keys.SLURM_JOB_ID, "")
            if job:
                try:
                    slurm._run(["scancel", job])
                except slurm.SlurmError:
                    pass
            self.client.set_tag(run.info.run_id, keys.STUDY_STALE, "true")
            self.client.set_terminated(run.info.run_id, KILLED)

    # -- executing ----------------------------------------------------------------------------

    def _execute(self, tasks: list[Task]) -> dict[str, str]:
        if self.backend == "local":
            return self._execute_local(tasks)
        return self._execute_slurm(tasks)

    def _execute_local(self, tasks: list[Task]) -> dict[str, str]:
        from mlflow_wattsup.backends.local import LocalPool, mark_end, mark_start

        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        pool = LocalPool(self.max_jobs, self.gpu_ids)
        results = pool.run(
            tasks,
            on_start=lambda t: mark_start(self.client, t),
            on_end=lambda t, status, code: mark_end(self.client, t, status, code),
        )
        return {run_id: status for run_id, (status, _) in results.items()}

    def _execute_slurm(self, tasks: list[Task]) -> dict[str, str]:
        from mlflow_wattsup.backends import slurm

        cfg = slurm.SlurmConfig.from_dict({"workdir": str(self.workdir / "slurm"), **self.slurm_config})
        jobs = []
        final: dict[str, str] = {}
        try:
            for gpu in (False, True):
                group = [t for t in tasks if bool(t.gpus) == gpu]
                if group:
                    if gpu:
                        cfg.gpus = self.gpus_per_job
                    t = time.perf_counter()
                    job = slurm.submit(group, cfg, gpu=gpu)
                    self.timings["submit_s"] += time.perf_counter() - t
                    self.log(
                        f"study {self.study_id}: submitted {len(group)} task(s) as SLURM job {job.job_id}"
                    )
                    for i, t in enumerate(job.tasks):
                        self.client.set_tag(t.run_id, keys.SLURM_JOB_ID, job.task_job_id(i))
                    jobs.append(job)
            while not all(j.done for j in jobs):
                for j in jobs:
                    if not j.done:
                        final.update(slurm.settle(self.client, j, j.poll()))
                time.sleep(cfg.poll_s)
        except BaseException:
            self.log(f"study {self.study_id}: cancelling {len(jobs)} SLURM job(s)")
            for j in jobs:
                try:
                    j.cancel()
                except slurm.SlurmError as exc:
                    self.log(f"study {self.study_id}: {exc}")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(j.done for j in jobs):
                for j in jobs:
                    if not j.done:
                        final.update(slurm.settle(self.client, j, j.poll()))
                time.sleep(0.5)
            for t in tasks:
                if t.run_id not in final:
                    self.client.set_terminated(t.run_id, KILLED)
            raise
        return final

    # -- the whole study ----------------------------------------------------------------------

    def run(self) -> StudyResult:
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        parent = self._parent()
        self.log(f"study {self.study_id}: parent run {parent}, {len(self.children)} children planned")
        existing = self._existing()
        latest: dict[tuple, tuple[str, str]] = {}
        todo: list[Child] = []
        skipped = 0
        for c in self.children:
            runs = existing.get(c.key, [])
            self._stale(runs)
            if any(r.info.status == FINISHED for r in runs):
                done = [r for r in runs if r.info.status == FINISHED][-1]
                latest[c.key] = (done.info.run_id, FINISHED)
                skipped += 1
            else:
                todo.append(c)
        attempts = {c.key: len(existing.get(c.key, [])) for c in self.children}
        if skipped:
            self.log(f"study {self.study_id}: {skipped} children already FINISHED, {len(todo)} to run")
        storage = tempfile.mkdtemp(prefix="params-", dir=self.workdir)
        submitted = 0
        status = FINISHED
        try:
            for round_ in range(self.retries + 1):
                if not todo:
                    break
                runs = {}
                t = time.perf_counter()
                for c in todo:
                    attempts[c.key] += 1
                    runs[c.key] = self._create_child(parent, c, attempts[c.key])
                tasks = [self._task(c, runs[c.key], storage) for c in todo]
                self.timings["create_s"] += time.perf_counter() - t
                submitted += len(tasks)
                t = time.perf_counter()
                final = self._execute(tasks)
                self.timings["execute_s"] += time.perf_counter() - t
                self._logs.update({t.run_id: t.log for t in tasks if t.log})
                for c in todo:
                    latest[c.key] = (runs[c.key], final.get(runs[c.key], FAILED))
                todo = [c for c in todo if latest[c.key][1] == FAILED]
                if todo and round_ < self.retries:
                    self.log(
                        f"study {self.study_id}: {len(todo)} failed, retry {round_ + 1} of {self.retries}"
                    )
            if self.agreement is not None:
                self.agreement.compare(latest)
        except BaseException:
            status = KILLED
            raise
        finally:
            t = time.perf_counter()
            counts = self._finish(parent, latest, skipped, submitted, time.monotonic() - t0, status)
            self.timings["finish_s"] += time.perf_counter() - t
        return StudyResult(self.study_id, parent, counts, self._report_md, latest)

    def _finish(self, parent, latest, skipped, submitted, wall_s, status) -> dict[str, int]:
        from mlflow.entities import Metric

        states = [s for _, s in latest.values()]
        counts = {
            keys.STUDY_CHILDREN: len(self.children),
            keys.STUDY_FINISHED: states.count(FINISHED),
            keys.STUDY_FAILED: states.count(FAILED),
            keys.STUDY_KILLED: states.count(KILLED) + (len(self.children) - len(latest)),
            keys.STUDY_SKIPPED: skipped,
            keys.STUDY_SUBMITTED: submitted,
        }
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in counts.items()] + [
            Metric(keys.STUDY_WALL_S, wall_s, now, 0)
        ]
        self._report_md = ""
        try:
            self.client.log_batch(parent, metrics=metrics)
            self._artifacts(parent, latest)
        finally:
            if status == FINISHED and counts[keys.STUDY_FINISHED] < len(self.children):
                status = FAILED
            self.client.set_terminated(parent, status)
        names = {latest[c.key][0]: c.run_name for c in self.children if c.key in latest}
        failed = [run_id for run_id, st in latest.values() if st == FAILED]
        for run_id in failed[:10]:
            log = self._logs.get(run_id, "")
            self.log(f"  FAILED {names.get(run_id, run_id)}: {_last_line(log)} (log {log or 'n/a'})")
        if len(failed) > 10:
            self.log(f"  ... and {len(failed) - 10} more failed children (study/children.csv)")
        self.log(
            f"study {self.study_id}: {counts[keys.STUDY_FINISHED]} finished, {counts[keys.STUDY_FAILED]} failed, "
            f"{counts[keys.STUDY_KILLED]} killed of {len(self.children)} ({skipped} skipped, {submitted} submitted)"
        )
        return counts

    def _artifacts(self, parent: str, latest: dict) -> None:
        """children.csv (every planned child), the comparison table (markdown, CSV) and plots."""
        from mlflow_wattsup.report import build, fetch_runs, plots, to_csv, to_markdown
        from mlflow_wattsup.report.table import csv_text

        out = self.workdir / "report"
        out.mkdir(parents=True, exist_ok=True)
        head = ["subject", "pipeline", "device", "params_hash", "run_id", "status"]
        rows = [[*c.key, *latest.get(c.key, ("", KILLED))] for c in self.children]
        (out / "children.csv").write_text(csv_text(head, rows, newline="\n"), encoding="utf-8")
        finished = {run_id for run_id, st in latest.values() if st == FINISHED}
        rows = [
            r
            for r in fetch_runs(
                experiment_ids=[self.experiment_id],
                filter_string=f"tags.`{keys.STUDY}` = '{_q(self.study_id)}' and tags.`{keys.STUDY_ROLE}` = 'child'",
                tracking_uri=self.uri,
            )
            if r.run_id in finished
        ]
        by_run = {latest[c.key][0]: c for c in self.children if c.key in latest}
        self._retag(rows, by_run)
        table = build(rows, ("pipeline", "device"), runtime_unit="s")
        if table.groups:
            self._report_md = to_markdown(table, "wide")
            (out / "report.md").write_text(self._report_md + "\n", encoding="utf-8")
            (out / "report.csv").write_text(to_csv(table), encoding="utf-8")
            for name, fn in (
                ("energy_vs_runtime.png", lambda p: plots.energy_vs_runtime(rows, p)),
                ("energy_vs_dice.png", lambda p: plots.cost_vs_dice(rows, p)),
            ):
                try:
                    fn(out / name)
                except ValueError:  # nothing to plot (no energy, or no Dice)
                    pass
        if self.agreement is not None:  # the agreement across subjects, under the cost table
            self._report_md = self.agreement.write(parent, out, latest, self._report_md)
        self._outputs(parent, out, finished)
        self.client.log_artifacts(parent, str(out), artifact_path="study")

    def _outputs(self, parent: str, out: Path, finished: set[str]) -> None:
        """The sweep table, the long Dice table, the forecast, the Pareto plot (study/outputs.py)."""
        from mlflow_wattsup.study import outputs

        children = [r for r in self._search("child") if r.info.run_id in finished]
        self._report_md, forecast = outputs.write(
            out, children, len(self.subjects), self.extras, self._report_md, self.uri, self.log
        )
        if forecast:
            self.client.set_tag(parent, keys.STUDY_FORECAST, forecast)

    def _retag(self, rows, by_run: dict[str, Child]) -> None:
        """A pipeline may tag its runs with its own name; the study's names win (two variants of
        one project must stay apart in the table), the project's is kept alongside."""
        from mlflow.entities import RunTag

        for r in rows:
            c = by_run.get(r.run_id)
            if c is None:
                continue
            tags = {keys.SUBJECT: c.subject.id, keys.PIPELINE: c.pipeline.name, keys.DEVICE: c.device}
            if all(r.tags.get(k) == v for k, v in tags.items()):
                continue
            if r.tags.get(keys.PIPELINE) not in (None, c.pipeline.name):
                tags[keys.STUDY_PROJECT_PIPELINE] = r.tags[keys.PIPELINE]
            self.client.log_batch(r.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
            r.tags.update(tags)


def _last_line(path: str) -> str:
    """The last non-empty line of a log (its end only: logs can be large)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 4096))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1][:300] if lines else "empty log"


def exit_code_of(client, run_id: str) -> int | None:
    tags = client.get_run(run_id).data.tags
    return int(tags[keys.EXIT_CODE]) if tags.get(keys.EXIT_CODE, "").lstrip("-").isdigit() else None


def default_max_jobs(cpus_per_job: int = 1) -> int:
    from mlflow_wattsup.backends.local import usable_cpus

    return max(1, usable_cpus() // max(1, cpus_per_job))


__all__ = ["Study", "StudyResult", "default_max_jobs", "exit_code_of"]
