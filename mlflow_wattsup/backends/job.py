"""The wrapper a SLURM job runs: ``python -m mlflow_wattsup.backends.job
MANIFEST`` executes task ``$SLURM_ARRAY_TASK_ID`` (0 for a plain job) of the manifest (one JSON
:class:`~.common.Task` per line) and sets its MLflow run's status.

It sets the run RUNNING (with the job id and node), runs the entry point's command in its own
process group, forwards SIGTERM/SIGINT (``scancel`` sends SIGTERM, SIGKILL ``KillWait`` seconds
later) and sets FINISHED / FAILED / KILLED with the exit code. Over HTTP this takes two REST calls
and no MLflow import. It exits with the command's exit code (143 when cancelled).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from mlflow_wattsup.backends.common import (
    KILLED,
    RUNNING,
    Task,
    mark_run,
    status_from_exit,
)
from mlflow_wattsup.sink import keys


def read_task(manifest: str, index: int) -> Task:
    with open(manifest, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if i == index:
                return Task.from_json(line)
    raise SystemExit(f"wattsup job: no task {index} in {manifest}")


def job_id() -> str:
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array:
        return f"{array}_{os.environ.get('SLURM_ARRAY_TASK_ID', '0')}"
    return os.environ.get("SLURM_JOB_ID", "")


def run_task(task: Task) -> int:
    cancelled: list[int] = []
    proc: list[subprocess.Popen] = []

    def forward(signum, _frame):
        cancelled.append(signum)
        if proc:
            try:
                os.killpg(proc[0].pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(s, forward)
    ok = mark_run(
        task.tracking_uri,
        task.run_id,
        RUNNING,
        {keys.SLURM_JOB_ID: job_id(), keys.SLURM_NODE: socket.gethostname()},
    )
    _say(f"run {task.run_id} {'RUNNING' if ok else 'could not be set RUNNING'} (job {job_id()})")
    code = 0
    if not cancelled:
        env = dict(os.environ, **task.run_env())
        proc.append(
            subprocess.Popen(["bash", "-c", task.command], cwd=task.workdir, env=env, start_new_session=True)
        )
        while True:
            try:
                code = proc[0].wait()
                break
            except InterruptedError:  # pragma: no cover - PEP 475 retries for us
                continue
    code = code if code >= 0 else 128 - code  # killed by signal N: the shell's 128+N
    status = status_from_exit(code, bool(cancelled))
    if status == KILLED and code == 0:
        code = 128 + cancelled[0]
    if cancelled:
        _say(f"signal {cancelled[0]}: entry point stopped")
    ok = mark_run(task.tracking_uri, task.run_id, status, {keys.EXIT_CODE: str(code)})
    _say(f"run {task.run_id} {status if ok else 'NOT set ' + status} (exit code {code})")
    return code


def _say(msg: str) -> None:
    print(f"wattsup job {time.strftime('%H:%M:%S')}: {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        raise SystemExit("usage: python -m mlflow_wattsup.backends.job MANIFEST [INDEX]")
    index = int(argv[1]) if len(argv) > 1 else int(os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    return run_task(read_task(argv[0], index))


if __name__ == "__main__":
    sys.exit(main())
