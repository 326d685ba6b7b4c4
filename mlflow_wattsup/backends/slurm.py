"""SLURM as an MLflow Project backend (entry point group ``mlflow.project_backend``,
name ``slurm``) and as a job-array submitter for studies.

``mlflow run projects/X --backend slurm --backend-config slurm.json --env-manager local -P ...``
creates the run, writes a one-task manifest, submits ``sbatch`` and returns at once: the MLflow
CLI does not wait for plugin backends. The job's wrapper (:mod:`.job`) sets the run RUNNING when
the job starts and FINISHED / FAILED / KILLED with the exit code when it ends; until it starts the
run is SCHEDULED. ``mlflow.projects.run(..., backend="slurm", synchronous=True)`` waits.

A run whose ``device`` parameter is ``gpu`` (or ``cuda``), and a study's gpu children, are GPU jobs.
Backend config (JSON; every key optional): ``partition``, ``time``, ``mem``, ``cpus_per_task``,
``gpus`` (GPUs per GPU job, default 1, asked as ``--gres=gpu:N``), ``gres`` (an explicit gres
string instead), ``account``, ``qos``, ``sbatch`` (extra ``#SBATCH`` lines, e.g. ``"--constraint=v100"``),
``setup`` (shell lines run before the task, e.g. ``"module load cuda"``, ``"source venv/bin/activate"``),
``python`` (the interpreter jobs run the wrapper with; default this one), ``workdir`` (manifests
and job logs; default ``./wattsup-slurm``, must be visible from the nodes), ``max_parallel``
(array throttle ``%N``), ``poll_s`` (default 2). Dashes or underscores both work in keys.

The job's wrapper measures the entry point's command into its run (any project, see
:mod:`.measured`), priced and sampled by the measurement keys ``region``, ``carbon_intensity``,
``pue``, ``interval_s``, ``cpu_tdp_w``, ``cpu_w_per_thread`` (also given to every job, a study's
included, as ``WATTSUP_*`` variables); ``measure: false`` leaves the measuring to the command
(e.g. ``srun wattsup run -- CMD`` for a multi-task step, whose tasks run outside the batch script's
process tree).

Job states come from ``scontrol show job`` (no accounting daemon needed), then ``sacct`` when
the job has left the controller's memory (``MinJobAge``).
"""

from __future__ import annotations

import logging
import re
import shlex
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable
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
    check_cluster_store,
)
from mlflow_wattsup.sink import keys

_log = logging.getLogger(__name__)

#: SLURM job states after which nothing more runs, and the MLflow status each maps to
END_STATES = {
    "COMPLETED": FINISHED,
    "FAILED": FAILED,
    "CANCELLED": KILLED,
    "TIMEOUT": FAILED,
    "OUT_OF_MEMORY": FAILED,
    "NODE_FAIL": FAILED,
    "BOOT_FAIL": FAILED,
    "DEADLINE": FAILED,
    "PREEMPTED": KILLED,
    "REVOKED": KILLED,
    "SPECIAL_EXIT": FAILED,
}


#: keys MLflow adds to every backend config (besides upper-case ENV_MANAGER, SYNCHRONOUS, ...)
MLFLOW_KEYS = ("build_image", "docker_auth")


#: seconds a cancelled task's wrapper gets to set its run KILLED itself (it has SLURM's KillWait)
CANCEL_GRACE_S = 8.0


class SlurmError(RuntimeError):
    """sbatch/scontrol failed or is missing; ``str(exc)`` is one line."""


@dataclass
class SlurmConfig:
    partition: str = ""
    time: str = ""
    mem: str = ""
    cpus_per_task: int = 1
    gpus: int = 1
    gres: str = ""
    account: str = ""
    qos: str = ""
    sbatch: list[str] = field(default_factory=list)
    setup: list[str] = field(default_factory=list)
    python: str = ""
    workdir: str = "wattsup-slurm"
    max_parallel: int = 0
    poll_s: float = 2.0
    job_name: str = "wattsup"
    #: the job's wrapper measures a project backend's entry point (false: the command measures itself)
    measure: bool = True
    #: the measurement keys of the same config (:class:`~.measured.MeterSettings`, validated)
    meter: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, config: dict | None) -> SlurmConfig:
        """From an MLflow ``backend_config`` (MLflow's own keys, upper case, are ignored)."""
        from mlflow_wattsup.backends.measured import MEASURE_KEYS, MeterSettings

        settings, config = MeterSettings.split(config, "slurm")
        known = (set(cls.__dataclass_fields__) - {"meter"}) | set(MEASURE_KEYS)
        kwargs: dict = {"meter": settings.to_dict()}
        for key, value in (config or {}).items():
            k = str(key).replace("-", "_")
            if k.isupper() or k in MLFLOW_KEYS:  # set by MLflow for every backend
                continue
            if k not in known:
                raise ValueError(
                    f"slurm backend config: unknown key {key!r}; known: {', '.join(sorted(known))}"
                )
            kwargs[k] = value
        cfg = cls(**kwargs)
        if not isinstance(cfg.measure, bool):
            raise ValueError(f"slurm backend config: measure must be true or false, got {cfg.measure!r}")
        for name in ("sbatch", "setup"):
            v = getattr(cfg, name)
            if isinstance(v, str):
                setattr(cfg, name, [v])
        try:
            cfg.cpus_per_task, cfg.gpus = int(cfg.cpus_per_task), int(cfg.gpus)
            cfg.max_parallel, cfg.poll_s = int(cfg.max_parallel), float(cfg.poll_s)
        except (TypeError, ValueError):
            raise ValueError(
                "slurm backend config: cpus_per_task, gpus, max_parallel must be integers and poll_s a number"
            ) from None
        return cfg

    def directives(self, gpu: bool) -> list[str]:
        out = [f"--job-name={self.job_name}", f"--cpus-per-task={self.cpus_per_task}"]
        for flag, value in (
            ("partition", self.partition),
            ("time", self.time),
            ("mem", self.mem),
            ("account", self.account),
            ("qos", self.qos),
        ):
            if value:
                out.append(f"--{flag}={value}")
        if gpu:
            out.append(f"--gres={self.gres or f'gpu:{self.gpus}'}")
        out.extend(self.sbatch)
        return out


def _run(cmd: list[str], timeout_s: float = 60) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except FileNotFoundError:
        raise SlurmError(
            f"{cmd[0]} not found: is this a SLURM login node (slurm-client installed)?"
        ) from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{cmd[0]} did not answer in {timeout_s:g} s") from None
    if p.returncode != 0:
        msg = (p.stderr or p.stdout).strip().splitlines()
        raise SlurmError(f"{' '.join(cmd[:2])} failed: {msg[-1] if msg else f'exit code {p.returncode}'}")
    return p.stdout


def write_script(cfg: SlurmConfig, manifest: Path, n_tasks: int, gpu: bool, logs: Path) -> Path:
    """The batch script: #SBATCH lines, the user's setup lines, then the wrapper (exec'd, so
    scancel's SIGTERM reaches it)."""
    python = cfg.python or sys.executable
    array = n_tasks > 1
    lines = ["#!/bin/bash"]
    lines += [f"#SBATCH {d}" for d in cfg.directives(gpu)]
    lines.append(f"#SBATCH --output={logs}/{'%A_%a' if array else '%j'}.out")
    if array:
        throttle = f"%{cfg.max_parallel}" if cfg.max_parallel else ""
        lines.append(f"#SBATCH --array=0-{n_tasks - 1}{throttle}")
    lines += list(cfg.setup)
    lines.append(f"exec {shlex.quote(python)} -m mlflow_wattsup.backends.job {shlex.quote(str(manifest))}")
    script = manifest.with_suffix(".sbatch")
    script.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return script


def apply_measurement(tasks: list[Task], cfg: SlurmConfig) -> None:
    """The config's measurement settings into the tasks: as ``WATTSUP_*`` variables for every task
    (a study's pipelines price their runs with them), and as what the wrapper measures with for a
    project backend's task (``measure`` not None; None again with ``measure: false``)."""
    from mlflow_wattsup.backends.measured import MeterSettings

    settings_env = MeterSettings.from_dict(cfg.meter, "slurm").env()
    for t in tasks:
        t.env = {**settings_env, **t.env}
        if t.measure is not None:
            t.measure = {**cfg.meter, **t.measure} if cfg.measure else None


def submit(tasks: list[Task], cfg: SlurmConfig, gpu: bool = False, env: dict | None = None) -> SlurmJob:
    """Submit ``tasks`` as one job (one task) or one job array; returns at once."""
    if not tasks:
        raise ValueError("nothing to submit")
    apply_measurement(tasks, cfg)
    root = Path(cfg.workdir).absolute()
    logs = root / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    manifest = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}.jsonl"
    manifest.write_text("".join(t.to_json() + "\n" for t in tasks), encoding="utf-8")
    script = write_script(cfg, manifest, len(tasks), gpu, logs)
    out = _run(["sbatch", "--parsable", str(script)])
    job_id = out.strip().split(";")[0]
    if not job_id.isdigit():
        raise SlurmError(f"sbatch answered {out.strip()!r}, not a job id")
    array = len(tasks) > 1
    for i, t in enumerate(tasks):
        t.log = str(logs / (f"{job_id}_{i}.out" if array else f"{job_id}.out"))
    return SlurmJob(job_id, tasks, array, cfg.poll_s)


# -- states -----------------------------------------------------------------------------------


def _expand(spec: str) -> list[int]:
    """``3-5,7`` / ``4-199%10`` (pending array tasks) -> [3, 4, 5, 7]."""
    out: list[int] = []
    for part in spec.split("%")[0].split(","):
        if "-" in part:
            a, b = part.split("-", 1)
            out.extend(range(int(a), int(b) + 1))
        elif part.strip():
            out.append(int(part))
    return out


_FIELD = re.compile(r"(\w+)=(\S*)")


def parse_scontrol(text: str) -> dict[int, tuple[str, int, int]]:
    """``scontrol show job -o`` lines -> {array task index (0 for a plain job): (state, exit
    code, signal)}."""
    states: dict[int, tuple[str, int, int]] = {}
    for line in text.splitlines():
        f = dict(_FIELD.findall(line))
        if "JobState" not in f:
            continue
        code, _, sig = f.get("ExitCode", "0:0").partition(":")
        value = (f["JobState"], int(code or 0), int(sig or 0))
        task = f.get("ArrayTaskId", "")
        for i in _expand(task) if task and task != "N/A" else [0]:
            states[i] = value
    return states


def parse_sacct(text: str, job_id: str) -> dict[int, tuple[str, int, int]]:
    """``sacct -n -P -X -o JobID,State,ExitCode`` lines -> as :func:`parse_scontrol`."""
    states: dict[int, tuple[str, int, int]] = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 3:
            continue
        jid, state, exit_code = parts[:3]
        state = state.split()[0] if state else ""  # "CANCELLED by 0"
        code, _, sig = exit_code.partition(":")
        index = jid.split("_", 1)[1] if "_" in jid else "0"
        if not index.isdigit():
            continue
        states[int(index)] = (state, int(code or 0), int(sig or 0))
    return states


def job_states(job_id: str) -> dict[int, tuple[str, int, int]]:
    """State, exit code and signal of each task of ``job_id``; {} if SLURM no longer knows it."""
    try:
        return parse_scontrol(_run(["scontrol", "show", "job", "-o", job_id]))
    except SlurmError as exc:
        if "Invalid job id" not in str(exc):
            raise
    try:
        return parse_sacct(
            _run(["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "JobID,State,ExitCode"]), job_id
        )
    except SlurmError:
        return {}


@dataclass
class SlurmJob:
    """A submitted job or job array and the runs of its tasks."""

    job_id: str
    tasks: list[Task]
    array: bool
    poll_s: float = 2.0
    #: index -> (MLflow status, exit code or -1, SLURM state) of the tasks that ended
    ended: dict[int, tuple[str, int, str]] = field(default_factory=dict)
    #: index -> when a cancelled task was first seen ended while its wrapper was still marking it
    grace: dict[int, float] = field(default_factory=dict)

    def task_job_id(self, i: int) -> str:
        return f"{self.job_id}_{i}" if self.array else self.job_id

    def poll(self) -> dict[int, tuple[str, int, str]]:
        """Tasks that ended since the last poll: {index: (MLflow status, exit code or -1, SLURM
        state)}."""
        states = job_states(self.job_id)
        new = {}
        for i in range(len(self.tasks)):
            if i in self.ended:
                continue
            if i not in states:
                if states:  # the job is known but this task not (yet): still pending
                    continue
                new[i] = (FAILED, -1, "UNKNOWN")  # SLURM forgot the job: the run's own status decides
                continue
            state, code, sig = states[i]
            base = state.split("+")[0]
            if base in END_STATES:
                status = END_STATES[base]
                if sig:
                    code = code or 128 + sig
                elif status == KILLED and code == 0:
                    code = -1  # cancelled before it started: no exit code
                new[i] = (status, code, base)
        self.ended.update(new)
        return new

    @property
    def done(self) -> bool:
        return len(self.ended) == len(self.tasks)

    def cancel(self, indices: Iterable[int] | None = None) -> None:
        ids = [self.job_id] if indices is None else [self.task_job_id(i) for i in indices]
        _run(["scancel", *ids])


def settle(client, job: SlurmJob, new: dict[int, tuple[str, int, str]]) -> dict[str, str]:
    """Set the status of the runs whose tasks ended, where the job's wrapper did not (a job
    cancelled before it started, killed by SIGKILL, a node lost). Returns {run_id: final status}."""
    from mlflow.entities import RunTag

    final = {}
    for i, (status, code, state) in new.items():
        task = job.tasks[i]
        run = client.get_run(task.run_id)
        if status == KILLED and run.info.status not in TERMINAL:
            # scancel shows CANCELLED at once, while the job's wrapper (if the task had started) is
            # still stopping the entry point and setting KILLED with its exit code, or even still
            # setting RUNNING: give it a few seconds before we set KILLED ourselves
            first = job.grace.setdefault(i, time.monotonic())
            if time.monotonic() - first < CANCEL_GRACE_S:
                del job.ended[i]  # the next poll reports it again
                continue
        tags = [RunTag(keys.JOB_LOG, task.log)] if task.log else []
        if run.info.status in TERMINAL:
            final[task.run_id] = run.info.status
        else:
            tags += [RunTag(keys.SLURM_JOB_ID, job.task_job_id(i)), RunTag(keys.SLURM_STATE, state)]
            if code >= 0:
                tags.append(RunTag(keys.EXIT_CODE, str(code)))
            final[task.run_id] = status
        client.log_batch(task.run_id, tags=tags)
        if run.info.status not in TERMINAL:
            client.set_terminated(task.run_id, status)
    return final


# -- the MLflow Project backend ---------------------------------------------------------------


def project_task(project_uri, entry_point, params, version, storage_dir, run_id, tracking_uri, experiment_id):
    """Fetch/validate the project and build the :class:`Task` running ``entry_point``."""
    from mlflow.projects.utils import fetch_and_validate_project, get_entry_point_command, load_project

    work_dir = fetch_and_validate_project(project_uri, version, entry_point, params)
    project = load_project(work_dir)
    command = " && ".join(get_entry_point_command(project, entry_point, params, storage_dir))
    return Task(run_id, command, str(Path(work_dir).absolute()), tracking_uri, str(experiment_id), measure={})


class SlurmSubmittedRun:
    """One run's job as MLflow's project runner sees it (the interface of MLflow's
    ``SubmittedRun``: ``run_id``, ``wait()``, ``get_status()``, ``cancel()``): ``wait()`` follows
    the job to its end, ``cancel()`` runs scancel and waits.

    Neither this class nor :class:`SlurmBackend` derives from MLflow's base classes: those would
    import MLflow with this module (seconds), and the project runner only calls these methods.
    MLflow is imported when a method needs it."""

    def __init__(self, job: SlurmJob, tracking_uri: str):
        self.job = job
        self.tracking_uri = tracking_uri

    @property
    def run_id(self) -> str:
        return self.job.tasks[0].run_id

    def _status(self) -> str:
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri).get_run(self.run_id).info.status

    def wait(self) -> bool:
        from mlflow.tracking import MlflowClient

        while True:
            new = self.job.poll()
            if new:
                settle(MlflowClient(self.tracking_uri), self.job, new)
            if self.job.done:
                break
            time.sleep(self.job.poll_s)
        return self._status() == FINISHED

    def get_status(self):
        from mlflow.entities import RunStatus

        return RunStatus.from_string(self._status())

    def cancel(self) -> None:
        self.job.cancel()
        self.wait()


class SlurmBackend:
    """The MLflow Project backend ``slurm`` (the interface of MLflow's ``AbstractBackend``:
    ``run()``, which submits the entry point as a SLURM job and returns its
    :class:`SlurmSubmittedRun` at once)."""

    def run(self, project_uri, entry_point, params, version, backend_config, tracking_uri, experiment_id):
        from mlflow.exceptions import ExecutionException
        from mlflow.projects.utils import fetch_and_validate_project, get_or_create_run
        from mlflow.tracking import MlflowClient

        try:  # the MLflow CLI prints an ExecutionException as one line
            cfg = SlurmConfig.from_dict(backend_config)
            env_manager = (backend_config or {}).get("ENV_MANAGER")
            if env_manager not in (None, "local"):
                raise ValueError(
                    "the slurm backend runs entry points in the job's own environment: use --env-manager "
                    f"local (got {env_manager}) and put environment setup in the backend config's 'setup' lines"
                )
            check_cluster_store(tracking_uri)
        except ValueError as exc:
            raise ExecutionException(str(exc)) from None
        work_dir = fetch_and_validate_project(project_uri, version, entry_point, params)
        active = get_or_create_run(None, project_uri, experiment_id, work_dir, version, entry_point, params)
        run_id = active.info.run_id
        client = MlflowClient(tracking_uri)
        try:
            task = project_task(
                project_uri,
                entry_point,
                params,
                version,
                (backend_config or {}).get("STORAGE_DIR"),
                run_id,
                tracking_uri,
                experiment_id,
            )
            client.update_run(run_id, status=SCHEDULED)
            job = submit([task], cfg, gpu=_wants_gpu(params))
        except BaseException as exc:
            client.set_terminated(run_id, FAILED)  # never left RUNNING when submission fails
            if isinstance(exc, SlurmError):
                raise ExecutionException(str(exc)) from None
            raise
        client.set_tag(run_id, keys.SLURM_JOB_ID, job.job_id)
        client.set_tag(run_id, keys.JOB_LOG, task.log)
        msg = (
            f"wattsup slurm: submitted job {job.job_id} for run {run_id} (log {task.log}); `mlflow run` "
            "does not wait for plugin backends: the run is SCHEDULED until the job starts, then the job "
            "sets RUNNING and FINISHED/FAILED/KILLED itself (`scontrol show job "
            f"{job.job_id}` follows it)"
        )
        print(msg, file=sys.stderr)
        return SlurmSubmittedRun(job, tracking_uri)


def _wants_gpu(params: dict | None) -> bool:
    return str((params or {}).get("device", "")).lower() in ("gpu", "cuda")


def slurm_backend() -> SlurmBackend:
    """Entry point target (``mlflow.project_backend``: ``slurm``)."""
    return SlurmBackend()


__all__ = [
    "SlurmConfig",
    "SlurmError",
    "SlurmJob",
    "submit",
    "job_states",
    "settle",
    "slurm_backend",
    "SlurmBackend",
    "SlurmSubmittedRun",
    "RUNNING",
]
