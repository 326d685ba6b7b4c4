"""The ``wattsup`` MLflow Project backend (entry point group ``mlflow.project_backend``):
``mlflow run PROJECT --backend wattsup [--backend-config '{"region": "CA-QC", "pue": 1.2}']``
runs any MLflow Project as MLflow's local backend does, with the entry point's command measured.

How it runs: MLflow's own local backend prepares the run: it fetches and validates the project
(parameters, their types, ``path`` parameters resolved and downloaded as MLflow does), creates the
run and its environment (``--env-manager local``, ``virtualenv``, ``uv``, ``conda``) and builds the
command line. Only the last step is ours: instead of MLflow starting the command, we start it
measured (:class:`.measured.MeasuredEntryPoint`, the lifecycle ``wattsup run`` uses), with the variables
MLflow gives an entry point (``MLFLOW_RUN_ID``, ``MLFLOW_TRACKING_URI``, ``MLFLOW_EXPERIMENT_ID``),
and end the run FINISHED / FAILED / KILLED from its exit code.

Why the prompt comes back after the run: ``mlflow run`` does not wait for plugin backends (it
would return as soon as :meth:`WattsupBackend.run` returns, and exit 0). So ``run()`` runs the
command in the foreground (its output straight to the terminal, Ctrl-C to it) and returns a
:class:`FinishedRun` only once the run has its totals and final status, after printing the
summary. Under the ``mlflow run`` command a non-zero exit code is passed on as the process's
exit status (MLflow itself would exit 0 for a plugin backend). Through
``mlflow.projects.run(..., backend="wattsup")`` the same happens in the caller's process; a failed
run then raises MLflow's ``ExecutionException`` (``synchronous=True``, the default) as the local
backend does.

Refused in one line, before any run exists: an unknown backend-config key, an unusable value,
an env manager whose tool is not installed here, a ``docker_env`` project (its processes belong
to the Docker daemon, not to the command, so their energy could not be attributed). Should
preparing the environment fail after the run was created, the run ends FAILED, never RUNNING.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading

from mlflow.entities import RunStatus
from mlflow.exceptions import ExecutionException
from mlflow.projects.backend.abstract_backend import AbstractBackend
from mlflow.projects.submitted_run import SubmittedRun

from mlflow_wattsup.backends.common import FAILED, FINISHED, absolute_uri
from mlflow_wattsup.backends.measured import MEASURE_KEYS, MeasuredEntryPoint, MeterSettings, entry_point_env

NAME = "wattsup"
#: lower-case keys MLflow adds to every backend config (its upper-case ones are skipped too)
MLFLOW_KEYS = ("build_image", "docker_auth")
_PATCH = threading.Lock()


class FinishedRun(SubmittedRun):
    """The run of an entry point that already ended (``run()`` returns after it)."""

    def __init__(self, run_id: str, status: str, exit_code: int):
        self._run_id = run_id
        self.status = status
        self.exit_code = exit_code

    @property
    def run_id(self) -> str:
        return self._run_id

    def wait(self) -> bool:
        return self.status == FINISHED

    def get_status(self):
        return RunStatus.from_string(self.status)

    def cancel(self) -> None:
        """Nothing left to cancel: the entry point has ended."""


def check_config(config: dict | None) -> MeterSettings:
    """The measurement settings of a backend config; ``ValueError`` naming the first unknown key."""
    settings, rest = MeterSettings.split(config, NAME)
    for key in rest:
        k = str(key).replace("-", "_")
        if not (k.isupper() or k in MLFLOW_KEYS):
            raise ValueError(f"{NAME} backend config: unknown key {key!r}; known: {', '.join(MEASURE_KEYS)}")
    return settings


def env_manager_of(project, requested: str | None) -> str:
    """The env manager MLflow's local backend will use (its own choice when none is given)."""
    if requested:
        return requested
    from mlflow.projects import env_type

    return {env_type.CONDA: "conda", env_type.PYTHON: "virtualenv"}.get(project.env_type, "local")


def check_env_manager(project, requested: str | None) -> str:
    """Refuse (``ValueError``, one line) an env manager whose tool is missing here, and
    ``docker_env`` projects."""
    if project.docker_env:
        raise ValueError(
            f"{NAME} backend: this project runs in a docker_env container, whose processes belong to the "
            "Docker daemon and not to the command, so their energy cannot be attributed to the run; "
            "run it with --backend local, or give the project a conda_env/python_env"
        )
    manager = env_manager_of(project, requested)
    chosen = "--env-manager " + manager if requested else f"MLflow's default for this project ({manager})"
    if manager == "conda":
        from mlflow.utils.conda import get_conda_bin_executable

        if shutil.which(get_conda_bin_executable("conda")) is None:
            raise ValueError(
                f"{NAME} backend: {chosen} needs conda, which is not installed here (nor is MLFLOW_CONDA_HOME "
                "set): use --env-manager local to run in the current environment"
            )
    elif manager == "virtualenv":
        if shutil.which("pyenv") is None:
            raise ValueError(
                f"{NAME} backend: {chosen} needs pyenv, which is not installed here: use --env-manager local "
                "to run in the current environment, or --env-manager uv where uv is installed"
            )
    elif manager == "uv":
        if shutil.which("uv") is None:
            raise ValueError(
                f"{NAME} backend: {chosen} needs uv, which is not on PATH: use --env-manager local "
                "to run in the current environment, or install uv"
            )
    return manager


def prepare(
    work_dir, entry_point, params, backend_config, tracking_uri, experiment_id, run_id
) -> tuple[str, str]:
    """``(command, work_dir)`` exactly as MLflow's local backend would run them for ``run_id``:
    its environment created (conda, virtualenv, uv) and its activation prefixed, parameters
    substituted, ``path`` parameters resolved. The local backend does all of it; its last step,
    starting the command (``_run_entry_point``), is replaced while it runs by one that only
    hands the command back to us."""
    from mlflow.projects.backend import local
    from mlflow.projects.utils import (
        MLFLOW_LOCAL_BACKEND_RUN_ID_CONFIG,
        PROJECT_BUILD_IMAGE,
        PROJECT_DOCKER_ARGS,
        PROJECT_DOCKER_AUTH,
        PROJECT_ENV_MANAGER,
        PROJECT_STORAGE_DIR,
        PROJECT_SYNCHRONOUS,
    )

    if not callable(getattr(local, "_run_entry_point", None)):
        import mlflow

        raise RuntimeError(
            f"MLflow {mlflow.__version__}'s local backend has no _run_entry_point step to measure"
        )
    config = {
        PROJECT_ENV_MANAGER: None,
        PROJECT_DOCKER_ARGS: None,
        PROJECT_STORAGE_DIR: None,
        PROJECT_BUILD_IMAGE: False,
        PROJECT_DOCKER_AUTH: None,
        **(backend_config or {}),
        PROJECT_SYNCHRONOUS: True,
        MLFLOW_LOCAL_BACKEND_RUN_ID_CONFIG: run_id,  # the run we created: the local backend reuses it
    }
    got: dict[str, str] = {}

    def hand_back(command, work_dir, experiment_id, run_id):
        got.update(command=command, work_dir=work_dir)
        return FinishedRun(run_id, FINISHED, 0)  # what the local backend returns; unused

    with _PATCH:
        original = local._run_entry_point
        local._run_entry_point = hand_back
        try:
            local.LocalBackend().run(work_dir, entry_point, params, None, config, tracking_uri, experiment_id)
        finally:
            local._run_entry_point = original
    if "command" not in got:
        raise RuntimeError("MLflow's local backend built no command for this entry point")
    return got["command"], got["work_dir"]


def _mlflow_cli():
    """The click context of the ``mlflow run`` command, if that is what runs us."""
    try:
        import click

        ctx = click.get_current_context(silent=True)
    except Exception:
        return None
    callback = getattr(getattr(ctx, "command", None), "callback", None)
    if ctx is None or getattr(callback, "__module__", "") != "mlflow.cli" or ctx.info_name != "run":
        return None
    return ctx


class WattsupBackend(AbstractBackend):
    def run(self, project_uri, entry_point, params, version, backend_config, tracking_uri, experiment_id):
        from mlflow.projects.utils import (
            PROJECT_ENV_MANAGER,
            fetch_and_validate_project,
            get_or_create_run,
            get_run_env_vars,
            load_project,
        )
        from mlflow.tracking import MlflowClient
        from mlflow.utils.mlflow_tags import MLFLOW_PROJECT_BACKEND, MLFLOW_RUN_NAME

        config = dict(backend_config or {})
        try:  # the MLflow CLI prints an ExecutionException as one line
            settings = check_config(config)
        except ValueError as exc:
            raise ExecutionException(str(exc)) from None
        work_dir = fetch_and_validate_project(project_uri, version, entry_point, params)
        project = load_project(work_dir)
        try:
            check_env_manager(project, config.get(PROJECT_ENV_MANAGER))
        except ValueError as exc:
            raise ExecutionException(str(exc)) from None
        active = get_or_create_run(None, project_uri, experiment_id, work_dir, version, entry_point, params)
        run_id = active.info.run_id
        uri = absolute_uri(tracking_uri)  # the entry point runs in the project's folder
        client = MlflowClient(tracking_uri)
        cli = _mlflow_cli()
        try:
            client.set_tag(run_id, MLFLOW_PROJECT_BACKEND, NAME)
            run_name = cli.params.get("run_name") if cli is not None else None
            if run_name:  # MLflow sets it after run() returns, which a failed run never does
                client.set_tag(run_id, MLFLOW_RUN_NAME, run_name)
            command, cwd = prepare(work_dir, entry_point, params, config, tracking_uri, experiment_id, run_id)
            env = entry_point_env(
                os.environ,
                run_id,
                {**get_run_env_vars(run_id, experiment_id), "MLFLOW_TRACKING_URI": uri},
                settings,
            )
            measured = MeasuredEntryPoint(command, cwd, env, run_id, uri, settings)
        except BaseException as exc:
            _abandon(client, run_id, exc)
            raise
        sys.stdout.flush()
        print(f"wattsup: run {run_id}: {command}  (in {cwd}, measured)", file=sys.stderr, flush=True)
        outcome = measured.execute()
        if outcome.spawned:
            print(outcome.summary(), file=sys.stderr, flush=True)
        if cli is not None and outcome.exit_code != 0:
            cli.exit(outcome.exit_code)  # `mlflow run` would exit 0: pass the entry point's code on
        return FinishedRun(run_id, outcome.status, outcome.exit_code)


def _abandon(client, run_id: str, exc: BaseException) -> None:
    """End a run whose entry point never started (FAILED; KILLED on Ctrl-C), never leaving it
    RUNNING; an error becomes MLflow's one-line ``ExecutionException``."""
    interrupted = isinstance(exc, KeyboardInterrupt)
    try:
        client.set_terminated(run_id, "KILLED" if interrupted else FAILED)
    except Exception:
        pass  # the store is away: the error below is what the user needs
    if isinstance(exc, Exception):
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExecutionException(
            f"{NAME} backend: the entry point could not be prepared ({first}); run {run_id} ended FAILED"
        ) from None


def wattsup_backend() -> WattsupBackend:
    """Entry point target (``mlflow.project_backend``: ``wattsup``)."""
    return WattsupBackend()
