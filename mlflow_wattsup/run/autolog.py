"""``mlflow_wattsup.autolog()`` and ``WATTSUP_AUTOLOG=1``: every fluent MLflow run of the process
measured from its start to its end, with no change to the code that starts it.

**Hooks.** Every fluent run begins in ``mlflow.tracking.fluent.start_run`` and ends in its
``end_run``: ``mlflow.start_run()`` and ``with mlflow.start_run():`` (whose exit calls ``end_run``
with FAILED on an exception), the implicit run of ``mlflow.log_metric`` & co. (they call
``start_run`` through ``_get_or_start_run``), the runs ``mlflow.<flavor>.autolog`` starts and ends
(``mlflow.start_run`` / ``mlflow.end_run``), nested runs, resumed runs (``MLFLOW_RUN_ID``,
``start_run(run_id=...)``), and MLflow's own exit handler (``end_run`` again). So those two
functions are wrapped, nothing else -- the way MLflow's own autologging wraps library functions,
and never the user's code. ``start_run``'s wrapper starts a tracker, lets MLflow start the run,
then records the tracker into it (:class:`~mlflow_wattsup.run.lifecycle.TrackedRun` given the
run's id: MLflow owns the run, we never end it); ``end_run``'s wrapper logs the totals of the run
being ended, then lets MLflow end it. (MLflow's ``mlflow.run_context_provider`` hook, which our
:mod:`.plugin` implements, is called before a new run exists, never for a resumed run, and has no
counterpart at the end: it cannot say which run to measure nor when it ended.)

**WATTSUP_AUTOLOG=1.** MLflow imports our ``mlflow.run_context_provider`` entry point while
``import mlflow`` is still running, before ``mlflow.tracking.fluent`` exists. The plugin then
registers a one-shot import hook for that module: the wrappers go in as soon as its code has run,
before ``mlflow`` re-exports ``start_run``, so every name anyone binds is the wrapped one.

**Exit.** A run the process never ends gets its totals and its status from an ``atexit`` handler
registered after MLflow's (handlers run last-in first-out, so ours runs first): it ends the runs
still open, innermost first, FAILED when the process is dying of an uncaught exception, KILLED on
KeyboardInterrupt, else FINISHED (MLflow's own handler would end only the innermost, FINISHED).

**One measurement.** While a run is measured, ``$WATTSUP_RUN_ID`` names it, as under ``wattsup
run``: a ``track()`` block in it, or a ``wattsup run`` it starts, is logged as one of its stages,
not measured a second time; a run that ``wattsup run`` (or our project backends) already measure
is left to them.

A failure in our hooks never fails the user's run: it is said once (``wattsup: autolog: ...``)
and the run goes on, unmeasured if need be.
"""

from __future__ import annotations

import atexit
import functools
import importlib.abc
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from mlflow_wattsup.sink import keys

#: ``1``/``true``/``yes``/``on``: turn autolog on for every process that imports MLflow
ENV = "WATTSUP_AUTOLOG"
#: sampling interval of autolog's trackers, seconds (default 1)
INTERVAL_ENV = "WATTSUP_INTERVAL_S"
#: ``0``/``false``/``no``/``off``: no power trace (``system/wattsup_*``), totals only
TRACE_ENV = "WATTSUP_POWER_TRACE"
FLUENT = "mlflow.tracking.fluent"
_ON = ("1", "true", "yes", "on")
_OFF = ("0", "false", "no", "off")
_MARK = "_wattsup_autolog"


def requested_by_env() -> bool:
    """Whether ``$WATTSUP_AUTOLOG`` asks for autolog."""
    return os.environ.get(ENV, "").strip().lower() in _ON


@dataclass
class Settings:
    """How autolog measures: the options of :func:`autolog` (or the environment's)."""

    by: str  # the value of the ``wattsup.autolog`` tag: "autolog()" or "WATTSUP_AUTOLOG"
    silent: bool = False
    region: str | None = None
    carbon_intensity: float | None = None
    pue: float | None = None
    interval_s: float = 1.0
    log_power_trace: bool = True
    log_models: bool = True
    cpu_tdp_w: float | None = None
    cpu_w_per_thread: float | None = None
    carbon: Any = None  # CarbonConfig, resolved from the options and the environment
    cpu_model: Any = None  # the CPU estimator's model, looked up once (a table search: ~20 ms)

    @classmethod
    def from_env(cls) -> Settings:
        s = cls(by=ENV)
        raw = os.environ.get(INTERVAL_ENV, "").strip()
        if raw:
            try:
                s.interval_s = float(raw)
                if not s.interval_s > 0:
                    raise ValueError
            except ValueError:
                s.interval_s = 1.0
                _say(f"{INTERVAL_ENV}={raw!r} is not a number of seconds > 0; sampling every 1 s")
        s.log_power_trace = os.environ.get(TRACE_ENV, "").strip().lower() not in _OFF
        return s

    def resolve_carbon(self) -> None:
        """The carbon settings. Given to :func:`autolog`, a bad value raises (the caller sees it
        at once); from the environment, it is said once and carbon uses the world average, with
        its source in the run's tags, so that the energy is measured anyway."""
        from mlflow_wattsup.analysis.carbon import CarbonConfig, CarbonConfigError, world_average

        if self.by != ENV:
            self.carbon = CarbonConfig.resolve(self.carbon_intensity, self.region, self.pue)
            return
        try:
            self.carbon = CarbonConfig.resolve()
        except CarbonConfigError as exc:
            _say(f"{exc}; carbon_g uses the world average until this is fixed", silent=self.silent)
            self.carbon = CarbonConfig(world_average(), 1.0, "default")


@dataclass
class _State:
    lock: threading.RLock = field(default_factory=threading.RLock)
    settings: Settings | None = None
    open: dict[str, _Measured] = field(default_factory=dict)  # run id -> its measurement


_state = _State()
_said: set[str] = set()


def _say(message: str, silent: bool = False) -> None:
    """One line on stderr, once per process per message (never with ``silent``)."""
    if silent or message in _said:
        return
    _said.add(message)
    print(f"wattsup: autolog: {message}", file=sys.stderr)


def _failed(what: str, exc: BaseException) -> None:
    s = _state.settings
    _say(f"{what} failed ({type(exc).__name__}: {exc}); the run goes on", silent=bool(s and s.silent))


# -- public -----------------------------------------------------------------------------------------


def autolog(
    disable: bool = False,
    silent: bool = False,
    *,
    region: str | None = None,
    carbon_intensity: float | None = None,
    pue: float | None = None,
    interval_s: float = 1.0,
    log_power_trace: bool = True,
    log_models: bool = True,
    cpu_tdp_w: float | None = None,
    cpu_w_per_thread: float | None = None,
) -> None:
    """Measure every fluent MLflow run started from now on in this process, from its start to
    its end: energy (CPU, GPU, RAM; measured where the hardware allows, else estimated and
    labelled so), carbon, runtime and CPU time of the process and its children, as the run's
    metrics, params and tags (``docs/metrics.md``), the power trace on the run's System metrics
    tab, and the cost of each model the run logs on that model.

    ``disable=True`` turns it off for runs started afterwards (runs being measured are measured
    to their end); ``silent=True``: no notices on stderr. ``region`` / ``carbon_intensity`` (g
    CO2eq/kWh) and ``pue`` as for :func:`mlflow_wattsup.track` (default: the ``WATTSUP_*``
    environment, else the world average and 1.0); ``interval_s``: sampling interval;
    ``log_power_trace=False``: totals only, no ``system/wattsup_*`` series; ``log_models=False``:
    no cost on the run's logged models. Calling it again replaces the settings.

    Call it before ``from mlflow import start_run`` binds MLflow's function under another name (or
    set ``WATTSUP_AUTOLOG=1``, which needs no call at all). A bad region or PUE raises
    :class:`~mlflow_wattsup.analysis.carbon.CarbonConfigError` here, a bad TDP or watts per thread
    :class:`~mlflow_wattsup.meters.estimator.EstimatorConfigError`, before any run. See
    ``docs/autolog.md``.
    """
    if disable:
        with _state.lock:
            _state.settings = None
        return
    if not interval_s > 0:
        raise ValueError(f"interval_s must be > 0, got {interval_s}")
    settings = Settings(
        by="autolog()",
        silent=silent,
        region=region,
        carbon_intensity=carbon_intensity,
        pue=pue,
        interval_s=float(interval_s),
        log_power_trace=log_power_trace,
        log_models=log_models,
        cpu_tdp_w=cpu_tdp_w,
        cpu_w_per_thread=cpu_w_per_thread,
    )
    settings.resolve_carbon()
    if cpu_tdp_w is not None or cpu_w_per_thread is not None:  # a bad value raises now, not at a run
        settings.cpu_model = _cpu_model(cpu_w_per_thread, cpu_tdp_w)
    from mlflow.tracking import fluent  # imports MLflow whole: its exit handler is registered first

    with _state.lock:
        _state.settings = settings
    install(fluent)


def from_environment() -> None:
    """``WATTSUP_AUTOLOG=1``: called by the run-context plugin when MLflow imports it (cheap: it
    imports nothing); the hooks go in once MLflow's fluent API exists."""
    if not requested_by_env():
        value = os.environ.get(ENV, "").strip()
        if value and value.lower() not in _OFF:
            _say(f"{ENV}={value!r} is not one of {'/'.join(_ON)}: autolog stays off")
        return
    with _state.lock:
        if _state.settings is None:
            _state.settings = Settings.from_env()
    fluent = sys.modules.get(FLUENT)
    if fluent is None:
        sys.meta_path.insert(0, _AfterImport(FLUENT, install))
    elif not getattr(getattr(fluent, "__spec__", None), "_initializing", False):
        install(fluent)
    else:  # an import order MLflow does not use today: say so rather than measure half the runs
        _say(
            f"{ENV} is set but MLflow's fluent API was imported in an unexpected order; "
            "call mlflow_wattsup.autolog() in the script instead"
        )


def measured_runs() -> list[str]:
    """Ids of the runs this process is measuring now."""
    with _state.lock:
        return [r for r, m in _state.open.items() if m.pid == os.getpid()]


# -- the hooks --------------------------------------------------------------------------------------


def install(fluent) -> None:
    """Wrap ``fluent.start_run`` and ``fluent.end_run`` (once), rebind MLflow's re-exports of
    them, and register the exit handler."""
    with _state.lock:
        if getattr(fluent.start_run, _MARK, False):
            return
        originals = {"start_run": fluent.start_run, "end_run": fluent.end_run}
        wrappers = {"start_run": _wrap_start(fluent.start_run), "end_run": _wrap_end(fluent.end_run, fluent)}
        for name, module in list(sys.modules.items()):  # fluent, `mlflow.start_run`, any other binding
            if module is None or not (name == "mlflow" or name.startswith("mlflow.")):
                continue
            try:
                names = vars(module)  # never getattr: it would load MLflow's lazily imported flavors
            except TypeError:
                continue
            for attr, original in originals.items():
                if names.get(attr) is original:
                    setattr(module, attr, wrappers[attr])
        atexit.register(_at_exit)


def _wrap_start(start_run):
    @functools.wraps(start_run)
    def wrapper(*args, **kwargs):
        settings = _state.settings
        pending = _Pending.begin(settings) if settings is not None else None
        try:
            active = start_run(*args, **kwargs)
        except BaseException:
            if pending is not None:
                pending.discard()
            raise
        if pending is not None:
            pending.attach(active.info.run_id, active.info.experiment_id)
        return active

    setattr(wrapper, _MARK, True)
    return wrapper


def _wrap_end(end_run, fluent):
    @functools.wraps(end_run)
    def wrapper(*args, **kwargs):
        status = kwargs.get("status", args[0] if args else "FINISHED")
        try:
            active = fluent.active_run()
            if active is not None:
                _finish(active.info.run_id, status)
        except Exception as exc:
            _failed("logging the run's totals", exc)
        return end_run(*args, **kwargs)

    setattr(wrapper, _MARK, True)
    return wrapper


def _finish(run_id: str, status: str) -> None:
    with _state.lock:
        m = _state.open.get(run_id)
        if m is None or m.pid != os.getpid():
            return
        del _state.open[run_id]
    m.finish(str(status))


def exit_status() -> str:
    """The status of runs still open at exit: how the interpreter is ending (an uncaught exception
    has been printed and left in ``sys.last_value``)."""
    exc = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    if isinstance(exc, KeyboardInterrupt):
        return "KILLED"
    if isinstance(exc, BaseException) and not isinstance(exc, SystemExit):
        return "FAILED"
    return "FINISHED"


def _at_exit() -> None:
    if not measured_runs():
        return
    status = exit_status()
    fluent = sys.modules.get(FLUENT)
    try:  # this thread's runs, innermost first, through end_run: MLflow ends each one
        for _ in range(len(measured_runs())):
            active = fluent.active_run() if fluent is not None else None
            if active is None or active.info.run_id not in measured_runs():
                break
            fluent.end_run(status)
    except Exception as exc:
        _failed("ending the runs left open at exit", exc)
    for run_id in measured_runs():  # runs another thread started and left open
        try:
            with _state.lock:
                m = _state.open.pop(run_id)
            m.finish(status)
            m.run.store.client.set_terminated(run_id, status)
        except Exception as exc:
            _failed(f"ending run {run_id} at exit", exc)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Run ``callback(module)`` right after module ``name`` is first imported (once)."""

    def __init__(self, name: str, callback):
        self.name = name
        self.callback = callback

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        try:
            sys.meta_path.remove(self)
        except ValueError:
            pass
        for finder in sys.meta_path:
            find = getattr(finder, "find_spec", None)
            spec = find(fullname, path, target) if find is not None else None
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            _say(f"cannot hook {fullname} (loader {type(loader).__name__}); call mlflow_wattsup.autolog()")
            return spec
        exec_module = loader.exec_module

        def exec_then_hook(module):
            exec_module(module)
            try:
                self.callback(module)
            except Exception as exc:
                _failed(f"hooking {fullname}", exc)

        loader.exec_module = exec_then_hook  # this module's own loader instance
        return spec


# -- one measured run -------------------------------------------------------------------------------


def _cpu_model(w_per_thread: float | None, tdp_w: float | None):
    """The CPU estimator's model for these settings and the ``WATTSUP_CPU_*`` environment, looked
    up in CodeCarbon's TDP table once per process (~20 ms each time otherwise)."""
    from mlflow_wattsup.meters.estimator import CPU_TDP_ENV, CPU_W_PER_THREAD_ENV, cpu_power_model

    key = (w_per_thread, tdp_w, os.environ.get(CPU_W_PER_THREAD_ENV), os.environ.get(CPU_TDP_ENV))
    if key not in _cpu_models:
        _cpu_models[key] = cpu_power_model(cpu_w_per_thread=w_per_thread, cpu_tdp_w=tdp_w)
    return _cpu_models[key]


_cpu_models: dict[tuple, Any] = {}


class _Pending:
    """A tracker started just before MLflow creates (or resumes) the run; its samples are held
    until the run exists."""

    def __init__(self, settings: Settings, tracker, buffer, start_wall_s: float):
        self.settings = settings
        self.tracker = tracker
        self.buffer = buffer
        self.start_wall_s = start_wall_s

    @classmethod
    def begin(cls, settings: Settings) -> _Pending | None:
        try:
            from mlflow_wattsup.tracking.tracker import SampleBuffer, Tracker

            with _state.lock:
                if settings.carbon is None:
                    settings.resolve_carbon()
                if settings.cpu_model is None:
                    settings.cpu_model = _cpu_model(settings.cpu_w_per_thread, settings.cpu_tdp_w)
            tracker = Tracker(interval_s=settings.interval_s, cpu_model=settings.cpu_model)
            # no trace: the buffer is never fed, so the recording streams nothing
            buffer = SampleBuffer()
            if settings.log_power_trace:
                tracker.add_callback(buffer)
            tracker.start()
            return cls(settings, tracker, buffer, time.time() - tracker.elapsed_s())
        except Exception as exc:
            _failed("starting the measurement", exc)
            return None

    def discard(self) -> None:
        try:
            self.tracker.stop()
        except Exception:
            pass

    def attach(self, run_id: str, experiment_id: str) -> None:
        """Record the tracker into the run MLflow just started, unless someone measures it already."""
        with _state.lock:
            theirs = os.environ.get(keys.RUN_ENV) == run_id or run_id in _state.open
        if theirs:
            self.discard()
            return
        s = self.settings
        try:
            from mlflow_wattsup.run.lifecycle import TrackedRun
            from mlflow_wattsup.run.notices import say

            echo = None if s.silent else sys.stderr
            run = TrackedRun(run_id=run_id, join_active=False, echo=echo)
            run.record(self.tracker, s.carbon, {keys.AUTOLOG: s.by}, buffer=self.buffer)
            if not s.silent:
                say([*self.tracker.notes, s.carbon.intensity.warning], once=True)
        except Exception as exc:
            self.discard()
            _failed("starting the measurement", exc)
            return
        with _state.lock:
            _state.open[run_id] = _Measured(run, experiment_id, self, os.environ.get(keys.RUN_ENV))
            os.environ[keys.RUN_ENV] = run_id


class _Measured:
    """A run being measured: its :class:`TrackedRun` and what ending it needs."""

    def __init__(self, run, experiment_id: str, pending: _Pending, outer_env: str | None):
        self.run = run
        self.experiment_id = experiment_id
        self.pending = pending
        self.outer_env = outer_env  # $WATTSUP_RUN_ID before this run: restored at its end
        self.pid = os.getpid()

    def finish(self, status: str) -> None:
        run, p = self.run, self.pending
        try:
            sink = run.sink

            def own_cpu() -> None:  # our threads ran in the measured process: part of cpu_time_s
                sink.log_metrics({keys.TRACKER_CPU_S: p.tracker.sampler_cpu_s + sink.writer_cpu_s})

            totals = run.finish(status, before_close=own_cpu)
            if p.settings.log_models and totals is not None and run.run_id:
                from mlflow_wattsup.run.logged_models import log_model_costs
                from mlflow_wattsup.run.recording import source_tags

                log_model_costs(
                    run.store.client,
                    run.run_id,
                    self.experiment_id,
                    p.tracker,
                    p.start_wall_s,
                    totals.duration_s,
                    p.settings.carbon,
                    source_tags(totals),
                )
        except Exception as exc:
            _failed("logging the run's totals", exc)
        finally:
            with _state.lock:
                if os.environ.get(keys.RUN_ENV) == run.run_id:
                    if self.outer_env is None:
                        os.environ.pop(keys.RUN_ENV, None)
                    else:
                        os.environ[keys.RUN_ENV] = self.outer_env
