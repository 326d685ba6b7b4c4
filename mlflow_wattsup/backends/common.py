"""What the local and SLURM backends share - one task (an MLflow Project entry point's
command for one run), the run statuses a job's end maps to, and setting them in MLflow.

A task's run is created before its job starts (status ``SCHEDULED`` while it waits in a queue),
set ``RUNNING`` when the job starts and ``FINISHED`` / ``FAILED`` / ``KILLED`` when it ends, with
the exit code in the ``wattsup.exit_code`` tag. Whoever sees the end first sets it: the job's own
wrapper (:mod:`.job`), else the process that waits for the job (from the scheduler's record).
"""

from __future__ import annotations

import base64
import json
import os
import time
import urllib.error
import urllib.request
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


def _auth_header() -> dict[str, str]:
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, pw = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and pw:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}
    return {}


def _post(uri: str, path: str, body: dict, timeout_s: float) -> None:
    req = urllib.request.Request(
        uri.rstrip("/") + path,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **_auth_header()},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=timeout_s) as r:
        r.read()


def _mark_rest(uri: str, run_id: str, status: str, tags: dict[str, str], timeout_s: float) -> None:
    if tags:
        tag_list = [{"key": k, "value": str(v)} for k, v in tags.items()]
        _post(uri, "/api/2.0/mlflow/runs/log-batch", {"run_id": run_id, "tags": tag_list}, timeout_s)
    body: dict = {"run_id": run_id, "status": status}
    if status in TERMINAL:
        body["end_time"] = int(time.time() * 1000)
    _post(uri, "/api/2.0/mlflow/runs/update", body, timeout_s)


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
    """Set ``status`` (and ``tags``) on ``run_id``. Over HTTP with two plain REST calls (no MLflow
    import: a job's wrapper stays light), else through ``MlflowClient``. Retries with back-off;
    False if every attempt failed (the waiting process will set it from the scheduler's record)."""
    tags = dict(tags or {})
    for i in range(attempts):
        try:
            if urlparse(uri).scheme in ("http", "https"):
                try:
                    _mark_rest(uri, run_id, status, tags, timeout_s=15)
                    return True
                except urllib.error.HTTPError as exc:
                    if exc.code not in (401, 403, 404):  # server error: retry; auth: try the client
                        raise
            _mark_client(uri, run_id, status, tags)
            return True
        except Exception:  # the store is down or busy: back off and retry
            if i + 1 < attempts:
                time.sleep(min(2.0**i, 10.0))
    return False
