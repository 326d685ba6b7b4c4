"""``mlflow_wattsup.track`` - measure a Python block or function into an MLflow run."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping
from typing import Any

from mlflow_wattsup.analysis.carbon import CarbonConfig
from mlflow_wattsup.run.joined import distributed_role, tracked_run
from mlflow_wattsup.run.lifecycle import TrackedRun
from mlflow_wattsup.run.notices import say
from mlflow_wattsup.run.recording import Recording
from mlflow_wattsup.sink import keys
from mlflow_wattsup.tracking.tracker import StageResult, Totals, Tracker, make_tracker


class track:
    """Measure the energy, carbon and runtime of a block (or, as a decorator, of each call).

    ::

        with mlflow_wattsup.track("train", experiment="unet", region="CA-QC") as t:
            with t.stage("epoch-1"):
                ...
        t.totals.energy_kwh

    The run is, in order: ``run_id``; the active fluent run (``mlflow.start_run``, or the run
    ``mlflow run`` set in ``MLFLOW_RUN_ID``); else a new run in ``experiment`` that is ended when
    the block ends (FINISHED, FAILED on an exception, KILLED on KeyboardInterrupt). Inside the
    block ``mlflow.log_metric`` & co. log to the same run. An exception in the block is re-raised
    after the totals are logged; a failure of our own logging never raises.

    Carbon: ``carbon_intensity`` (g/kWh) or ``region`` (see ``wattsup regions``), else the
    ``WATTSUP_CARBON_INTENSITY`` / ``WATTSUP_REGION`` environment, else the world average.
    ``pue`` defaults to 1.0 (IT energy only). CPU estimates use ``cpu_tdp_w`` or
    ``cpu_w_per_thread`` when the CPU model is not in CodeCarbon's table.
    """

    def __init__(
        self,
        run_name: str | None = None,
        *,
        experiment: str | None = None,
        run_id: str | None = None,
        tracking_uri: str | None = None,
        interval_s: float = 1.0,
        region: str | None = None,
        carbon_intensity: float | None = None,
        pue: float | None = None,
        cpu_tdp_w: float | None = None,
        cpu_w_per_thread: float | None = None,
        tags: Mapping[str, str] | None = None,
        powercap_root: str | None = None,
        nvml: Any = None,
        flush_interval_s: float = 10.0,
    ):
        self._kwargs = dict(locals())
        del self._kwargs["self"]
        self.run_name = run_name
        self.experiment = experiment
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.carbon = CarbonConfig.resolve(carbon_intensity, region, pue)
        self._ctx, tree, self._note = distributed_role()  # DDP: one agent per host measures
        self.tracker: Tracker = make_tracker(
            tree=tree,
            interval_s=interval_s,
            cpu_tdp_w=cpu_tdp_w,
            cpu_w_per_thread=cpu_w_per_thread,
            powercap_root=powercap_root,
            nvml=nvml,
        )
        self._tags = dict(tags or {})
        self._flush_interval_s = flush_interval_s
        self._recording: Recording | None = None
        self._run: TrackedRun | None = None
        self.totals: Totals | None = None

    # -- context manager ------------------------------------------------------------------------

    def __enter__(self) -> track:
        if self._ctx is not None and not self._ctx.host_agent:
            return self  # another rank of this host measures and logs; no run here
        run = tracked_run(
            mode="host",
            ctx=self._ctx,
            tracking_uri=self.tracking_uri,
            run_id=self.run_id,
            experiment=self.experiment,
            run_name=self.run_name,
            fluent=True,
            flush_interval_s=self._flush_interval_s,
        )
        self._run = run
        self.run_id = run.run_id
        say([*self.tracker.notes, self.carbon.intensity.warning, self._note], echo=None, once=True)
        as_stage = (self.run_name or "python") if run.as_stage_of_outer else None
        self._recording = run.record(self.tracker, self.carbon, self._tags, as_stage=as_stage)
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        run = self._run
        if run is None and self._ctx is not None and not self._ctx.host_agent:
            return False
        assert run is not None and self._recording is not None, "track.__exit__ without __enter__"
        status = "FINISHED"
        if exc_type is not None:
            status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        sink = run.sink

        def own_cpu() -> None:  # our threads ran in the measured process: part of cpu_time_s
            sink.log_metrics({keys.TRACKER_CPU_S: self.tracker.sampler_cpu_s + sink.writer_cpu_s})

        self.totals = run.finish(status, before_close=own_cpu)
        self.run_id = run.run_id
        return False  # never swallow the block's exception

    # -- stages ---------------------------------------------------------------------------------

    def stage(self, name: str):
        """Context manager measuring a named stage: ``stage/<name>/energy_kwh`` etc."""
        if self._run is None and self._ctx is not None:
            return contextlib.nullcontext()  # a rank that does not measure
        return self.tracker.stage(name)

    @property
    def stages(self) -> list[StageResult]:
        return self.tracker.stages

    def epochs(self, planned: int | None = None, warmup: int = 1):
        """Per-epoch energy and a predicted total for ``planned`` epochs, see
        :mod:`mlflow_wattsup.run.training`."""
        from mlflow_wattsup.run.training import EpochEnergy

        if self._recording is None:
            raise RuntimeError("call epochs() inside the 'with track(...)' block")
        return EpochEnergy(self.tracker, self._recording.sink, self.carbon, planned, warmup)

    def log_model_cost(
        self, model, input_shape=None, example_inputs=None, samples_seen=None, passes: int = 1
    ):
        """:func:`mlflow_wattsup.log_model_cost` into this run."""
        from mlflow_wattsup.run.log import log_model_cost

        return log_model_cost(
            model, input_shape, example_inputs, samples_seen=samples_seen, passes=passes, run_id=self.run_id
        )

    def log_dice(self, result, prefix: str = "dice"):
        """:func:`mlflow_wattsup.log_dice` into this run."""
        from mlflow_wattsup.run.log import log_dice

        return log_dice(result, prefix=prefix, sink=self._recording.sink)

    # -- decorator ------------------------------------------------------------------------------

    def __call__(self, fn: Callable) -> Callable:
        kwargs = dict(self._kwargs)
        kwargs["run_name"] = kwargs["run_name"] or fn.__name__

        @functools.wraps(fn)
        def wrapper(*args, **kw):
            with track(**kwargs):
                return fn(*args, **kw)

        return wrapper
