"""Run tasks on this machine, a bounded number at a time, each GPU task on GPUs of its
own (``CUDA_VISIBLE_DEVICES``), setting each run's status from its exit code.

Never more tasks at once than ``max_jobs`` (a study's default: usable cores // CPUs per task),
and a GPU task only starts when enough GPUs are free. Every task runs in its own process group
with its output in ``task.log``; :meth:`LocalPool.cancel` (Ctrl-C) sends SIGTERM to every group,
SIGKILL after ``kill_wait_s``, and their runs end KILLED.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

from mlflow_wattsup.backends.common import (
    KILLED,
    RUNNING,
    Task,
    status_from_exit,
)
from mlflow_wattsup.sink import keys


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@dataclass
class _Running:
    task: Task
    proc: subprocess.Popen
    gpus: list[str]
    log: object


class LocalPool:
    """``max_jobs`` slots; ``gpu_ids`` the GPUs tasks may be given (e.g. ``["0", "1"]``)."""

    def __init__(
        self, max_jobs: int, gpu_ids: list[str] | None = None, poll_s: float = 0.1, kill_wait_s: float = 5
    ):
        if max_jobs < 1:
            raise ValueError(f"max jobs must be at least 1, got {max_jobs}")
        self.max_jobs = max_jobs
        self.free_gpus = list(gpu_ids or [])
        self.poll_s = poll_s
        self.kill_wait_s = kill_wait_s
        self.running: list[_Running] = []
        self.cancelled = False

    def _start(self, task: Task) -> _Running:
        gpus = [self.free_gpus.pop(0) for _ in range(task.gpus)]
        env = dict(os.environ, **task.run_env())
        if task.gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        elif "CUDA_VISIBLE_DEVICES" not in task.env:
            env["CUDA_VISIBLE_DEVICES"] = ""  # a CPU task does not touch the GPUs GPU tasks were given
        log = open(task.log, "ab") if task.log else subprocess.DEVNULL
        proc = subprocess.Popen(
            ["bash", "-c", task.command],
            cwd=task.workdir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        return _Running(task, proc, gpus, log)

    def run(
        self,
        tasks: list[Task],
        on_start: Callable[[Task], None] | None = None,
        on_end: Callable[[Task, str, int], None] | None = None,
    ) -> dict[str, tuple[str, int]]:
        """Run every task; returns {run_id: (status, exit code)}. ``on_start``/``on_end`` are
        called in this thread (they set the run's status in MLflow)."""
        pending = list(tasks)
        for t in pending:
            if t.gpus > len(self.free_gpus):
                raise ValueError(
                    f"a task wants {t.gpus} GPU(s) but {len(self.free_gpus)} can be given out (--gpus)"
                )
        results: dict[str, tuple[str, int]] = {}
        try:
            while pending or self.running:
                started = True
                while started and pending and len(self.running) < self.max_jobs:
                    started = False
                    for i, t in enumerate(pending):
                        if t.gpus <= len(self.free_gpus):
                            if on_start:
                                on_start(t)
                            self.running.append(self._start(pending.pop(i)))
                            started = True
                            break
                for r in list(self.running):
                    code = r.proc.poll()
                    if code is None:
                        continue
                    self._release(r)
                    code = code if code >= 0 else 128 - code
                    status = status_from_exit(code, self.cancelled)
                    results[r.task.run_id] = (status, code)
                    if on_end:
                        on_end(r.task, status, code)
                time.sleep(self.poll_s)
        except BaseException:
            self.cancel()
            for r in list(self.running):
                self._release(r)
                code = r.proc.returncode
                code = 143 if code is None else (code if code >= 0 else 128 - code)
                results[r.task.run_id] = (KILLED, code)
                if on_end:
                    on_end(r.task, KILLED, code)
            for t in pending:
                results[t.run_id] = (KILLED, -1)
                if on_end:
                    on_end(t, KILLED, -1)
            raise
        return results

    def _release(self, r: _Running) -> None:
        self.running.remove(r)
        self.free_gpus.extend(r.gpus)
        if r.log is not subprocess.DEVNULL:
            r.log.close()

    def cancel(self) -> None:
        """SIGTERM every running task's process group, SIGKILL what is left after ``kill_wait_s``."""
        self.cancelled = True
        for r in self.running:
            _signal_group(r.proc, signal.SIGTERM)
        deadline = time.monotonic() + self.kill_wait_s
        for r in self.running:
            try:
                r.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(r.proc, signal.SIGKILL)
                r.proc.wait()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def mark_start(client, task: Task) -> None:
    client.update_run(task.run_id, status=RUNNING)


def mark_end(client, task: Task, status: str, exit_code: int) -> None:
    from mlflow.entities import RunTag

    tags = [RunTag(keys.JOB_LOG, task.log)] if task.log else []
    if exit_code >= 0:
        tags.append(RunTag(keys.EXIT_CODE, str(exit_code)))
    if tags:
        client.log_batch(task.run_id, tags=tags)
    client.set_terminated(task.run_id, status)
