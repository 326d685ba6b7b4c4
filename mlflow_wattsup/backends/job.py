"""The wrapper a SLURM job runs: ``python -m mlflow_wattsup.backends.job
MANIFEST`` executes task ``$SLURM_ARRAY_TASK_ID`` (0 for a plain job) of the manifest (one JSON
:class:`~.common.Task` per line) and sets its MLflow run's status.

It sets the run RUNNING (with the job id and node), runs the entry point's command in its own
process group, forwards SIGTERM/SIGINT (``scancel`` sends SIGTERM, SIGKILL ``KillWait`` seconds
later) and sets FINISHED / FAILED / KILLED with the exit code. It exits with the command's exit
code (143 when cancelled).

A task of the ``slurm`` project backend (``task.measure`` set) has its command measured into its
run, as ``wattsup run`` would (:mod:`.measured`): any project gets its energy, and a measurer
inside the command that would measure the same run (our own projects, a nested ``wattsup run``)
logs a stage of it instead ($WATTSUP_RUN_ID). Over HTTP neither imports MLflow (the store's
calls go through our REST client, :mod:`mlflow_wattsup.sink.rest`). A study's task (``measure``
None: our pipelines measure themselves) runs as it is: two REST calls at its start, one at its
end. Should the measurement fail to start (a store
error other than unreachable), the command still runs, unmeasured, and the run says why.
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
    measurement = _measurement(task) if task.measure is not None and not cancelled else None
    if measurement is not None and not cancelled:
        outcome = measurement.execute()  # forwards SIGTERM/SIGINT/SIGHUP to the command meanwhile
        if outcome.spawned:
            print(outcome.summary(), file=sys.stderr, flush=True)  # into the job's log
        _say(f"run {task.run_id} {outcome.status} (exit code {outcome.exit_code}), measured")
        return outcome.exit_code
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


def _measurement(task: Task):
    """The task's measurement made ready, or None (said, and tagged on the run) when it cannot be:
    the command must run all the same."""
    from mlflow_wattsup.backends.measured import MeasuredEntryPoint, MeterSettings, entry_point_env

    try:
        settings = MeterSettings.from_dict(task.measure, "slurm")
        env = entry_point_env(os.environ, task.run_id, task.run_env(), settings)
        m = MeasuredEntryPoint(task.command, task.workdir, env, task.run_id, task.tracking_uri, settings)
    except Exception as exc:
        why = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"
        _say(f"measurement could not start ({why}); running the entry point unmeasured")
        mark_run(task.tracking_uri, task.run_id, RUNNING, {keys.warning_tag("measurement"): why}, attempts=1)
        return None
    tasks = os.environ.get("SLURM_NTASKS", "1")
    if tasks.isdigit() and int(tasks) > 1:
        m.run.sink.set_tags(
            {
                keys.warning_tag(
                    "slurm_tasks"
                ): f"the job has {tasks} tasks: what the entry point starts with srun runs "
                "under slurmstepd, outside the measured batch script's tree, and is not in this run's energy "
                '(backend config "measure": false and `srun wattsup run -- CMD` measure such steps)'
            }
        )
    return m


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
