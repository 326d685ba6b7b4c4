"""An MLflow Project entry point's command run measured into its run: what the ``wattsup``
project backend and the SLURM job wrapper (:mod:`.job`) share with ``wattsup run``.

It is the same lifecycle as ``wattsup run``: a :class:`~mlflow_wattsup.run.lifecycle.TrackedRun`
joined to the run the backend created, a tracker over this process's children (the command and
every process it starts, orphans adopted), :func:`~mlflow_wattsup.tracking.runner.execute` (its
own process group, signals forwarded, exit code passed on) and the lifecycle's ``finish`` (totals,
sources, end tags, the description); then the run's final status, set by us because the backend
owns the run.

No double measurement: the command's environment carries ``WATTSUP_RUN_ID`` (``keys.RUN_ENV``) =
the run we measure. Whoever would measure that same run inside the command (a ``track()``
block, one of our pipeline projects, a nested ``wattsup run``) honours it by logging its figures
as a stage of this run (``stage/<name>/...``) instead of the run's totals.

Settings (the backend config of ``--backend wattsup`` and ``--backend slurm``; dashes or
underscores): ``region``, ``carbon_intensity`` (g/kWh), ``pue``, ``interval_s`` (sampling,
default 1), ``cpu_tdp_w``, ``cpu_w_per_thread`` (the CPU estimate, where there is no RAPL).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from mlflow_wattsup.sink import keys

#: backend-config keys that set the measurement (the rest belongs to the backend)
MEASURE_KEYS = ("region", "carbon_intensity", "pue", "interval_s", "cpu_tdp_w", "cpu_w_per_thread")


@dataclass(frozen=True)
class MeterSettings:
    """How the entry point is measured and priced; None: the ``WATTSUP_*`` environment, then the
    defaults (world-average intensity, PUE 1.0), exactly as for ``wattsup run``."""

    region: str | None = None
    carbon_intensity: float | None = None
    pue: float | None = None
    interval_s: float = 1.0
    cpu_tdp_w: float | None = None
    cpu_w_per_thread: float | None = None

    @classmethod
    def split(cls, config: Mapping[str, Any] | None, backend: str) -> tuple[MeterSettings, dict[str, Any]]:
        """``(settings, the other keys)`` of a backend config; raises ``ValueError`` (one line, naming
        the key) for a value that cannot be used."""
        mine: dict[str, Any] = {}
        rest: dict[str, Any] = {}
        for key, value in (config or {}).items():
            k = str(key).replace("-", "_")
            if k in MEASURE_KEYS:
                if value is not None and value != "":
                    mine[k] = value
            else:
                rest[key] = value
        return cls.from_dict(mine, backend), rest

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None, backend: str = "wattsup") -> MeterSettings:
        """From a task manifest or a backend config's measurement keys (validated)."""
        kw: dict[str, Any] = {}
        for k, v in (values or {}).items():
            if k == "region":
                if not isinstance(v, str):
                    raise ValueError(
                        f"{backend} backend config: region must be a string such as 'CA-QC', got {v!r}"
                    )
                kw[k] = v.strip()
            else:
                kw[k] = _positive(backend, k, v)
        s = cls(**kw)
        from mlflow_wattsup.analysis.carbon import CarbonConfigError

        try:
            s.carbon()  # an unknown region or a PUE < 1: one line now, not after the run started
        except CarbonConfigError as exc:
            raise ValueError(f"{backend} backend config: {exc}") from None
        _check_estimate(backend, s)
        return s

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def carbon(self):
        """The run's :class:`~mlflow_wattsup.analysis.carbon.CarbonConfig`."""
        from mlflow_wattsup.analysis.carbon import CarbonConfig

        return CarbonConfig.resolve(self.carbon_intensity, self.region, self.pue)

    def env(self) -> dict[str, str]:
        """The settings given, as the ``WATTSUP_*`` variables of the entry point's environment: a
        measurer inside it that joins this run as a stage prices and estimates it the same way."""
        from mlflow_wattsup.analysis.carbon import INTENSITY_ENV, PUE_ENV, REGION_ENV
        from mlflow_wattsup.meters.estimator import CPU_TDP_ENV, CPU_W_PER_THREAD_ENV

        out = {}
        for value, name in (
            (self.region, REGION_ENV),
            (self.carbon_intensity, INTENSITY_ENV),
            (self.pue, PUE_ENV),
            (self.cpu_tdp_w, CPU_TDP_ENV),
            (self.cpu_w_per_thread, CPU_W_PER_THREAD_ENV),
        ):
            if value is not None:
                out[name] = value if isinstance(value, str) else f"{value:g}"
        return out


def _positive(backend: str, key: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = float("nan")
    if not v > 0 or isinstance(value, bool):
        raise ValueError(f"{backend} backend config: {key} must be a number > 0, got {value!r}")
    return v


def _check_estimate(backend: str, s: MeterSettings) -> None:
    if s.cpu_tdp_w is None and s.cpu_w_per_thread is None:
        return
    from mlflow_wattsup.meters.estimator import EstimatorConfigError, cpu_power_model

    try:
        cpu_power_model(cpu_w_per_thread=s.cpu_w_per_thread, cpu_tdp_w=s.cpu_tdp_w)
    except EstimatorConfigError as exc:
        raise ValueError(f"{backend} backend config: {exc}") from None


@dataclass
class Outcome:
    """How a measured entry point ended; ``run`` is the lifecycle's run (its ``summary``)."""

    exit_code: int
    status: str
    run: Any
    carbon: Any
    spawned: bool = True

    def summary(self) -> str:
        return self.run.summary(self.carbon, self.exit_code, self.status)


def shell_command(command: str, workdir: str) -> list[str]:
    """``bash -c`` running the entry point's command in ``workdir`` (the runner starts commands in
    our own directory; ``cd`` on a line of its own leaves the command's own ``&&``/``||`` alone)."""
    return ["bash", "-c", f"cd -- {shlex.quote(str(workdir))} || exit 1\n{command}"]


def entry_point_env(
    base: Mapping[str, str], run_id: str, run_env: Mapping[str, str], s: MeterSettings
) -> dict:
    """The entry point's environment: ``base``, the settings' ``WATTSUP_*`` variables, MLflow's
    run variables (``run_env``: MLFLOW_RUN_ID, MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_ID) and the
    marker that this run is measured (``keys.RUN_ENV``)."""
    return {**base, **s.env(), **run_env, keys.RUN_ENV: run_id}


class MeasuredEntryPoint:
    """The measurement of one entry point: made ready when created (the run resolved, the start
    params and tags logged, the tracker started: MLflow's import, seconds where it was not
    imported yet; raises if the store refuses), then :meth:`execute` runs the command.

    ``command`` (a shell line) runs in ``workdir`` with ``env`` (see :func:`entry_point_env`),
    measured into ``run_id`` at ``tracking_uri``."""

    def __init__(
        self,
        command: str,
        workdir: str,
        env: Mapping[str, str],
        run_id: str,
        tracking_uri: str,
        settings: MeterSettings,
        echo: Any = sys.stderr,
    ):
        from mlflow_wattsup.meters.proctree import ProcessTreeMeter
        from mlflow_wattsup.run.lifecycle import TrackedRun
        from mlflow_wattsup.run.overhead import cpu_now_s
        from mlflow_wattsup.tracking.tracker import make_tracker

        self._cpu0 = cpu_now_s()
        self.command, self.workdir, self.env = command, str(workdir), dict(env)
        self.run_id, self.tracking_uri, self.echo = run_id, tracking_uri, echo
        self.carbon = settings.carbon()
        self.run = TrackedRun(tracking_uri=tracking_uri, run_id=run_id, echo=echo)
        self.tracker = make_tracker(
            tree=ProcessTreeMeter(children_of=os.getpid()),
            interval_s=settings.interval_s,
            cpu_tdp_w=settings.cpu_tdp_w,
            cpu_w_per_thread=settings.cpu_w_per_thread,
        )
        if echo is not None:
            from mlflow_wattsup.run.notices import say

            say([*self.tracker.notes, self.carbon.intensity.warning], echo=echo)
        self.run.record(self.tracker, self.carbon, {keys.COMMAND: command})

    def execute(self) -> Outcome:
        """Run the command measured; log the totals and end tags, then set the run's final status
        (FINISHED, FAILED, KILLED from the exit code). The command's exit code is what counts:
        the store being away is said, never raised."""
        from mlflow_wattsup.backends.common import mark_run
        from mlflow_wattsup.tracking.runner import SpawnError, execute, run_status

        run, echo = self.run, self.echo
        spawned = True
        try:
            exit_code, signalled = execute(shell_command(self.command, self.workdir), self.tracker, self.env)
            status = run_status(exit_code, signalled)
        except SpawnError as exc:
            spawned, exit_code, status = False, exc.exit_code, "FAILED"
            if echo is not None:
                print(f"wattsup: error: {exc.message}", file=echo)
        try:
            from mlflow_wattsup.run.overhead import overhead_cpu_s

            run.finish(
                status,
                exit_code,
                last=lambda: run.sink.log_metrics(
                    {keys.OVERHEAD_CPU_S: overhead_cpu_s(self.tracker, self._cpu0)}
                ),
            )
        except Exception as exc:  # the command has run: its status still goes to the run
            if echo is not None:
                print(f"wattsup: the totals could not be logged ({type(exc).__name__}: {exc})", file=echo)
        if not mark_run(self.tracking_uri, self.run_id, status) and echo is not None:
            print(
                f"wattsup: run {self.run_id} could not be set {status} (tracking store unreachable)",
                file=echo,
            )
        return Outcome(exit_code, status, run, self.carbon, spawned)
