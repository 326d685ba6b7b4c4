"""What the local and SLURM backends share - one task (an MLflow Project entry point's
command for one run), the run statuses a job's end maps to, and setting them in MLflow.

A task's run is created before its job starts (status ``SCHEDULED`` while it waits in a queue),
set ``RUNNING`` when the job starts and ``FINISHED`` / ``FAILED`` / ``KILLED`` when it ends, with
the exit code in the ``wattsup.exit_code`` tag. Whoever sees the end first sets it: the job's own
wrapper (:mod:`.job`), else the process that waits for the job (from the scheduler's record).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from urllib.parse import urlparse

FINISHED, FAILED, KILLED, RUNNING, SCHEDULED = "FINISHED", "FAILED", "KILLED", "RUNNING", "SCHEDULED"
TERMINAL = (FINISHED, FAILED, KILLED)


@dataclass
class Task:
    """One run to execute: ``command`` (a shell line) in ``workdir`` with ``env`` added to the
    job's environment; ``gpus`` GPUs wanted (0 for a CPU job). ``measure``: the job's wrapper
    measures the command into the run with these :class:`~.measured.MeterSettings` (a project
    backend's task); None: it runs it as it is (a study's task: our pipelines measure themselves)."""

    run_id: str
    command: str
    workdir: str
    tracking_uri: str
    experiment_id: str
    env: dict[str, str] = field(default_factory=dict)
    gpus: int = 0
    log: str = ""
    measure: dict | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> Task:
        return cls(**json.loads(line))

    def run_env(self) -> dict[str, str]:
        """The variables ``mlflow run`` gives an entry point, plus the task's own."""
        return {
            "MLFLOW_RUN_ID": self.run_id,
            "MLFLOW_TRACKING_URI": self.tracking_uri,
            "MLFLOW_EXPERIMENT_ID": str(self.experiment_id),
            **self.env,
        }


def status_from_exit(exit_code: int, cancelled: bool) -> str:
    if cancelled:
        return KILLED
    return FINISHED if exit_code == 0 else FAILED


def is_local_store(uri: str) -> bool:
    """True for a tracking URI that is a file on this machine (sqlite, a folder): such a store
    takes one writer machine, not a cluster's jobs."""
    scheme = urlparse(uri).scheme.lower()
    return scheme in ("", "file", "sqlite") or (len(scheme) == 1 and os.name == "nt")


def absolute_uri(uri: str) -> str:
    """``uri`` with a relative sqlite/file path made absolute: entry points run in their project's
    folder, where ``sqlite:///mlflow.db`` would name another database."""
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        path, sep, query = uri[len("sqlite:///") :].partition("?")
        if path and path != ":memory:" and not os.path.isabs(path):
            return f"sqlite:///{os.path.abspath(path)}{sep}{query}"
    scheme = urlparse(uri).scheme
    if scheme == "" and uri and not os.path.isabs(uri):
        return os.path.abspath(uri)
    return uri


def check_cluster_store(uri: str) -> None:
    """Refuse, in one line, a tracking store that many jobs on many nodes cannot share."""
    if is_local_store(uri):
        raise ValueError(
            f"tracking URI {uri!r} is a local file: SLURM jobs write to the tracking store from many "
            "processes and nodes at once, so give them a server: run `mlflow server --backend-store-uri "
            f"{uri if uri.startswith('sqlite') else 'sqlite:///mlflow.db'} --host 0.0.0.0 --port 5000` "
            "and set MLFLOW_TRACKING_URI=http://<that host>:5000"
        )


# -- setting a run's status -------------------------------------------------------------------


def _mark_rest(uri: str, run_id: str, status: str, tags: dict[str, str], timeout_s: float) -> None:
    """Tags and status in (at most) two requests through our REST client (MLflow's auth
    environment, TLS settings and credentials file, no MLflow import)."""
    from mlflow_wattsup.sink.rest import RestClient

    client = RestClient(uri, timeout_s=timeout_s)
    try:
        if tags:
            client.log_batch(run_id, tags=tags)
        end_ms = int(time.time() * 1000) if status in TERMINAL else None
        client.update_run(run_id, status=status, end_time_ms=end_ms)
    finally:
        client.close()


def _mark_client(uri: str, run_id: str, status: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    if tags:
        client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    if status in TERMINAL:
        client.set_terminated(run_id, status)
    else:
        client.update_run(run_id, status=status)


def mark_run(
    uri: str, run_id: str, status: str, tags: dict[str, str] | None = None, attempts: int = 4
) -> bool:
    """Set ``status`` (and ``tags``) on ``run_id``. Over HTTP with our REST client (no MLflow
    import: a job's wrapper stays light; MLflow's client only where an auth plugin is asked
    for), else through ``MlflowClient``. Retries with back-off (a refusal, e.g. an unknown run,
    is not retried); False if every attempt failed (the waiting process will set it from the
    scheduler's record)."""
    from mlflow_wattsup.sink.backoff import backoff_delay_s
    from mlflow_wattsup.sink.rest import RestError
    from mlflow_wattsup.sink.transport import speaks_rest

    tags = dict(tags or {})
    for i in range(attempts):
        try:
            if speaks_rest(uri):
                _mark_rest(uri, run_id, status, tags, timeout_s=15)
            else:
                _mark_client(uri, run_id, status, tags)
            return True
        except Exception as exc:  # the store is down or busy: back off and retry
            if isinstance(exc, RestError) and not exc.retryable:
                return False
            if i + 1 < attempts:
                after = getattr(exc, "retry_after_s", None)
                time.sleep(backoff_delay_s(i, cap_s=10.0, retry_after_s=after))
    return False
