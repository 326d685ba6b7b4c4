"""One measured training (``fit`` / ``train``) as the framework callbacks see it, whatever the
framework: which run it logs to, who measures under DDP, epochs and the prediction, the model's
cost, and the end. The Lightning and Transformers callbacks only translate their hooks into the
calls of :class:`FitMeasurement` (docs/callbacks.md is the user's side of this).

Which run: the run the framework's MLflow logger uses (given to :meth:`FitMeasurement.begin` by
the callback: Lightning's ``MLFlowLogger.run_id``, Transformers' active fluent run that its
``MLflowCallback`` started), never a second one; with none, the run ``mlflow_wattsup.track()``
would use (the active fluent run, ``$MLFLOW_RUN_ID``, else a new one made MLflow's active run and
ended by us), said once. The lifecycle is :class:`~mlflow_wattsup.run.lifecycle.TrackedRun` (or
its distributed :class:`~mlflow_wattsup.run.joined.JoinedRun`): a run we did not create is never
ended by us, so its status stays the framework's.

DDP (``world_size > 1``): the distributed rules of :mod:`mlflow_wattsup.run.joined` in ``host``
mode, with the job described by the framework (its ranks, not the launcher's environment, which
Lightning's own launcher leaves incomplete): global rank 0 resolves the run and broadcasts it
(with a job key) through the framework's collective, the first process of each host measures all
of that host's ranks (its own process tree when the framework started the other local ranks as its
children, as Lightning's ``ddp`` does; else its parent's children: ``torchrun``, ``srun``,
``mp.spawn``), every host agent reports, and rank 0 adds the reports up by the one total rule
(each host's machine counters once). The other ranks measure nothing. Per-epoch figures and the
model cost come from rank 0's host agent: in a one-host job they cover every rank; across hosts
they are host 0's, and the totals are the job's.

An exception in training: the callback calls :meth:`FitMeasurement.end` with ``FAILED`` (``KILLED``
for KeyboardInterrupt) where the framework has a hook for it; where it has none (Transformers), an
``atexit`` handler does it when the process exits with the training still open. The partial
totals are logged; the run is ended only if we created it.

Our own failures never stop training: every entry point catches, says what went wrong once
(a warning of the ``mlflow_wattsup`` logger) and stops measuring.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import functools
import logging
import math
import os
import sys
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from mlflow_wattsup.analysis.carbon import CarbonConfig
from mlflow_wattsup.run.joined import tracked_run
from mlflow_wattsup.run.lifecycle import TrackedRun
from mlflow_wattsup.run.notices import say
from mlflow_wattsup.run.training import EpochEnergy
from mlflow_wattsup.sink import keys
from mlflow_wattsup.tracking.distributed import JOB_ENV, JobContext, discover, local_ranks_tree
from mlflow_wattsup.tracking.tracker import Totals, Tracker, make_tracker

log = logging.getLogger("mlflow_wattsup")

#: the one FLOPs counter the callbacks run: one forward pass (FlopCounterMode; also the layer table)
CALLBACK_FLOPS_BACKENDS = ("torch-flop-counter",)


@dataclasses.dataclass(frozen=True)
class Dist:
    """The job as the framework sees it. ``broadcast(obj)`` returns global rank 0's ``obj`` on
    every rank (all ranks must call it, in the same order); ``spawned_local``: this process
    started the other ranks of its host as its children (Lightning's ``ddp`` launcher)."""

    rank: int
    world_size: int
    local_rank: int
    local_size: int
    node: int
    nodes: int
    broadcast: Callable[[Any], Any]
    spawned_local: bool = False


def job_context(framework: str, dist: Dist, job_key: str) -> JobContext | None:
    """The :class:`JobContext` of ``dist`` (host name as :func:`discover` finds it), None when
    ``$WATTSUP_DISTRIBUTED=0`` turns joining off."""
    env = {
        **os.environ,
        "RANK": str(dist.rank),
        "LOCAL_RANK": str(dist.local_rank),
        "WORLD_SIZE": str(dist.world_size),
        "LOCAL_WORLD_SIZE": str(dist.local_size),
        "GROUP_RANK": str(dist.node),
        "GROUP_WORLD_SIZE": str(dist.nodes),
        JOB_ENV: job_key,
    }
    ctx = discover(env)
    return dataclasses.replace(ctx, launcher=framework) if ctx is not None else None


@contextlib.contextmanager
def rng_kept(device: Any = None):
    """Leave the random generators (torch CPU and the model's CUDA device, Python's, NumPy's) as
    they were: counting the model's cost must not change what training draws."""
    import random

    import torch

    py = random.getstate()
    try:
        import numpy as np

        npy = np.random.get_state()
    except Exception:  # numpy is a dependency, but the state of a user's legacy generator may not read
        np, npy = None, None
    devices = [device] if device is not None and getattr(device, "type", "") == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py)
        if np is not None and npy is not None:
            np.random.set_state(npy)


def _guarded(fn):
    """A :class:`FitMeasurement` entry point that never raises into the training loop: a failure
    is said once and measuring stops (what was measured so far is logged)."""

    @functools.wraps(fn)
    def wrapper(self, *args, **kwargs):
        if self.broken:
            return None
        try:
            return fn(self, *args, **kwargs)
        except Exception as exc:
            self.broken = True
            say(
                [
                    f"{self.framework} callback: measuring stopped ({fn.__name__}: {type(exc).__name__}: "
                    f"{str(exc).splitlines()[0] if str(exc) else ''}); training goes on"
                ],
                echo=None,
                once=True,
            )
            with contextlib.suppress(Exception):
                self._finish("FAILED")
            return None

    return wrapper


class FitMeasurement:
    """One training's measurement, fed by a framework callback (see the module docstring).

    Options (the callbacks take the same keywords): ``experiment``, ``run_name``,
    ``tracking_uri`` (for a run of our own only: a framework logger's run brings its own),
    ``interval_s``, ``region`` / ``carbon_intensity`` / ``pue``, ``cpu_tdp_w`` /
    ``cpu_w_per_thread``, ``tags``, ``planned_epochs`` / ``planned_steps`` (override the
    framework's plan), ``model_cost`` (count params/FLOPs on a sample; default on),
    ``flush_interval_s``.
    """

    def __init__(
        self,
        framework: str,
        version: str,
        *,
        experiment: str | None = None,
        run_name: str | None = None,
        tracking_uri: str | None = None,
        interval_s: float = 1.0,
        region: str | None = None,
        carbon_intensity: float | None = None,
        pue: float | None = None,
        cpu_tdp_w: float | None = None,
        cpu_w_per_thread: float | None = None,
        tags: Mapping[str, str] | None = None,
        planned_epochs: int | None = None,
        planned_steps: int | None = None,
        model_cost: bool = True,
        flush_interval_s: float = 10.0,
    ):
        for name, v in (("planned_epochs", planned_epochs), ("planned_steps", planned_steps)):
            if v is not None and int(v) < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.framework, self.version = framework, version
        self.experiment, self.run_name, self.tracking_uri = experiment, run_name, tracking_uri
        self.interval_s = interval_s
        self.carbon = CarbonConfig.resolve(carbon_intensity, region, pue)
        self.cpu_tdp_w, self.cpu_w_per_thread = cpu_tdp_w, cpu_w_per_thread
        self.tags = dict(tags or {})
        self.planned_epochs_given, self.planned_steps_given = planned_epochs, planned_steps
        self.count_cost = model_cost
        self.flush_interval_s = flush_interval_s
        self.broken = False
        self._reset()

    def _reset(self) -> None:
        self.run: TrackedRun | None = None
        self.tracker: Tracker | None = None
        self.epochs: EpochEnergy | None = None
        self.planned_steps: int | None = None
        self.cost = None  # the ModelCost counted
        self.cost_unit: str | None = None  # what one counted pass is: "batch" or "sample"
        self.totals: Totals | None = None
        self._cost_tried = False
        self._steps0: int | None = None
        self._exit_hook: Callable[[], None] | None = None
        self._run_id: str | None = None

    # -- properties -----------------------------------------------------------------------------

    @property
    def measuring(self) -> bool:
        """This process measures (single process, or a host agent under DDP) and has not ended."""
        return self.run is not None and self.run.recording is not None and not self.broken

    @property
    def leads(self) -> bool:
        """This process logs the run's own figures (epochs, prediction, model cost)."""
        if not self.measuring:
            return False
        rec = self.run.recording
        return getattr(self.run, "leader", True) and rec.as_stage is None

    @property
    def run_id(self) -> str | None:
        """The run measured into (kept after the end; None on a rank that measures nothing)."""
        if self.run is not None:
            self._run_id = self.run.run_id
        return self._run_id

    # -- begin ----------------------------------------------------------------------------------

    @_guarded
    def begin(
        self,
        *,
        run_id: str | None,
        tracking_uri: str | None,
        source: str | None,
        no_logger_note: str,
        dist: Dist | None = None,
    ) -> None:
        """Resolve the run and start measuring. ``run_id``/``tracking_uri``/``source``: the run
        the framework's logger uses (``source`` ``logger`` or ``active``; on rank 0, the others
        receive it), or None: a run of our own (``no_logger_note`` is said once)."""
        if self.run is not None:  # a training that never ended (e.g. an exception we had no hook for)
            self.end("FAILED")
        self.broken = False
        self._reset()
        ctx = None
        if dist is not None and dist.world_size > 1:
            key, run_id, tracking_uri, source = dist.broadcast(
                (f"{self.framework}:{uuid.uuid4().hex}", run_id, tracking_uri, source)
            )
            ctx = job_context(self.framework, dist, key)
            if ctx is None and dist.rank != 0:
                return  # joining is off ($WATTSUP_DISTRIBUTED=0): rank 0 measures itself alone
        if source is None and (dist is None or dist.rank == 0):
            say([no_logger_note], echo=None, once=True)
        uri = tracking_uri if source is not None else self.tracking_uri
        own = source is None
        kw = dict(
            tracking_uri=uri,
            experiment=self.experiment,
            run_name=self.run_name,
            flush_interval_s=self.flush_interval_s,
        )
        if ctx is None:
            self._start(TrackedRun(run_id=run_id, fluent=own, **kw), None, source)
            return
        tree, note = (None, None) if dist.spawned_local else local_ranks_tree(ctx)
        run = None
        if ctx.leader("host"):
            run = tracked_run(mode="host", ctx=ctx, run_id=run_id, fluent=own, **kw)
        made = dist.broadcast(run.run_id if run is not None else None)
        if ctx.host_agent and run is None:  # another host's agent joins the run rank 0 resolved
            run = tracked_run(mode="host", ctx=ctx, run_id=made, fluent=False, **kw)
        if run is not None:
            self._start(run, tree, source, note)

    def _start(self, run: TrackedRun, tree, source: str | None, note: str | None = None) -> None:
        self.run = run
        if source is None:
            source = "own" if run.created else "active"
        tracker = make_tracker(
            tree=tree,
            interval_s=self.interval_s,
            cpu_tdp_w=self.cpu_tdp_w,
            cpu_w_per_thread=self.cpu_w_per_thread,
        )
        self.tracker = tracker
        as_stage = self.framework if run.as_stage_of_outer else None
        tags = {**keys.callback_tags(self.framework, self.version, source), **self.tags}
        ctx = getattr(run, "ctx", None)  # a JoinedRun: say what the job is, also in a run we joined
        if ctx is not None:
            tags.update(keys.dist_tags(ctx.launcher, ctx.job_key, run.mode, run.agents))
        run.record(tracker, self.carbon, tags, as_stage=as_stage)
        say([*tracker.notes, self.carbon.intensity.warning, note], echo=None, once=True)
        self._exit_hook = self._at_exit
        atexit.register(self._exit_hook)

    # -- the plan and the epochs ----------------------------------------------------------------

    @_guarded
    def plan(self, epochs: int | None = None, steps: int | None = None) -> None:
        """What the framework plans: whole ``epochs``, or optimizer ``steps`` (when a step limit
        ends training, possibly mid-epoch); the options given to the callback win. The
        prediction is in epochs where the plan is (EpochEnergy's), else in steps."""
        if not self.measuring:
            return
        epochs = self.planned_epochs_given or epochs
        steps = self.planned_steps_given or (None if self.planned_epochs_given else steps)
        lead = self.leads
        if steps is not None and steps >= 1:
            self.planned_steps = int(steps)
            if lead:
                self.run.sink.set_tags(keys.step_prediction_tags(self.planned_steps))
            epochs = None
        elif epochs is None or epochs < 1:
            epochs = None
            if lead:
                say(
                    [f"{self.framework} callback: no planned epochs or steps: no predicted total"],
                    echo=None,
                    once=True,
                )
        if lead:
            self.epochs = EpochEnergy(self.tracker, self.run.sink, self.carbon, planned=epochs)

    @_guarded
    def epoch_start(self, steps_done: int) -> None:
        if self.epochs is None:
            return
        if self._steps0 is None:
            self._steps0 = int(steps_done)
        self.epochs.start_epoch()

    @_guarded
    def epoch_end(self, epoch: int, steps_done: int) -> None:
        """Log the epoch (energy, duration, carbon, cumulative, mean power) and the prediction."""
        if self.epochs is None:
            return
        e_j = self.epochs.end_epoch(epoch)
        d_s = self.epochs.epoch_duration_s[-1]
        metrics = keys.epoch_power_metrics(e_j, d_s)
        steps = int(steps_done) - (self._steps0 or 0)
        if self.planned_steps is not None and steps > 0:
            elapsed, so_far_j = self.epochs.last_end  # the same reading as the epoch's own figures
            left = max(0, self.planned_steps - int(steps_done))
            per_step_j = sum(self.epochs.epoch_energy_j) / steps
            per_step_s = sum(self.epochs.epoch_duration_s) / steps
            metrics.update(
                keys.prediction_metrics(
                    so_far_j + per_step_j * left, elapsed + per_step_s * left, self.carbon
                )
            )
        self.run.sink.log_metrics(metrics, step=epoch)

    # -- the model's cost -----------------------------------------------------------------------

    def wants_cost(self) -> bool:
        """Whether the model's cost is still to be counted here (once, by the lead process)."""
        return self.count_cost and not self._cost_tried and self.leads

    @_guarded
    def model_cost(
        self,
        model: Any,
        candidates: Iterable[Any] | Callable[[], Iterable[Any]],
        unit: str,
        device: Any = None,
    ) -> None:
        """Count params and FLOPs with one forward pass on the first of ``candidates`` (example
        inputs: a tensor, a tuple of positional inputs, a dict of keyword inputs; or a function
        returning them, called with the random generators kept, e.g. to read a sample) the model
        accepts, and log them; ``unit``: what one such input is (``batch``, ``sample``, or
        ``example``). A model that cannot be counted is said once (``wattsup.warning.flops``)."""
        if not self.wants_cost():
            return
        self._cost_tried = True
        from mlflow_wattsup.analysis.flops import ModelCostError, model_cost
        from mlflow_wattsup.run.log import log_cost

        errors = []
        cost = None
        with rng_kept(device):
            if callable(candidates):
                try:
                    candidates = list(candidates())
                except Exception as exc:
                    errors.append(
                        f"no sample: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                    )
                    candidates = []
            for inputs in candidates:
                try:
                    cost = model_cost(model, example_inputs=inputs, backends=CALLBACK_FLOPS_BACKENDS)
                    break
                except ModelCostError as exc:
                    errors.append(str(exc))
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
        if cost is None:
            why = "; ".join(errors) or "no sample input to count with"
            note = (
                f"{self.framework} callback: model params/FLOPs not counted ({why[:300]}); training goes on: "
                "log them with mlflow_wattsup.log_model_cost(model, example_inputs=..., run_id=...)"
            )
            say([note], echo=None, once=True)
            self.run.sink.set_tags({keys.WARNING_FLOPS: note})
            return
        self.cost, self.cost_unit = cost, unit
        log_cost(cost, self.run.sink)

    # -- end ------------------------------------------------------------------------------------

    @_guarded
    def end(self, status: str, passes_seen: int | None = None) -> Totals | None:
        """Log the totals (partial ones after an exception) and, if the run is ours, end it with
        ``status``; ``passes_seen``: counted inputs (``cost_unit``) trained on, for
        ``train_flops_estimate``."""
        return self._finish(status, passes_seen)

    def _finish(self, status: str, passes_seen: int | None = None) -> Totals | None:
        run = self.run
        if run is None:
            return None
        if self._exit_hook is not None:
            atexit.unregister(self._exit_hook)
            self._exit_hook = None
        self._run_id = run.run_id
        self.run = None
        tracker, cost, sink = self.tracker, self.cost, run.sink

        def last_values() -> None:  # the leader's (JoinedRun calls it on agent 0 only)
            cpu = {keys.TRACKER_CPU_S: tracker.sampler_cpu_s + sink.writer_cpu_s}
            sink.log_metrics(cpu)
            if cost is not None and passes_seen:
                sink.log_metrics(keys.train_flops_metrics(cost, int(passes_seen)))

        if run.recording is None:
            run.finish(status)
            return None
        self.totals = run.finish(status, before_close=last_values)
        return self.totals

    def _at_exit(self) -> None:
        """The process exits with the training still open (no end hook came: an exception the
        framework has no callback hook for, or one the user caught): log the partial totals."""
        last = getattr(sys, "last_value", None)  # set by Python for the exception that ends the process
        status = "KILLED" if isinstance(last, KeyboardInterrupt) else "FAILED"
        say(
            [
                f"{self.framework} callback: the process exits before the end of training: partial totals, {status}"
            ],
            echo=None,
            once=True,
        )
        self._exit_hook = None
        self.end(status)


def planned_epochs_of(max_epochs: Any) -> int | None:
    """A whole, finite number of planned epochs, else None."""
    try:
        f = float(max_epochs)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f) or f < 1 or f != int(f):
        return None
    return int(f)
