"""The one run lifecycle every entry path uses (``wattsup run``, the pipeline projects,
:func:`mlflow_wattsup.track`, and the one-shot loggers of Dice and model cost).

A :class:`TrackedRun` resolves the run to log to (in this order: an explicit run id; the active
fluent run; ``$MLFLOW_RUN_ID``, as set by ``mlflow run``; else a new run in the experiment),
creates it through the sink's store (or defers its creation while the store is unreachable: the
work is measured anyway and the run is created when the store answers), records a tracker into
it, and at the end logs the totals, ends the run *only if we created it*, and closes the sink.
"""

from __future__ import annotations

import getpass
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mlflow_wattsup.analysis.carbon import CarbonConfig
from mlflow_wattsup.run.recording import Recording
from mlflow_wattsup.sink import keys
from mlflow_wattsup.sink.transport import Store, job_limiter, now_ms, unreachable
from mlflow_wattsup.sink.writer import MlflowSink, timed_out, with_create_token
from mlflow_wattsup.tracking.tracker import SampleBuffer, Totals, Tracker

DEFAULT_EXPERIMENT = "Default"


def command_tag(cmd: Sequence[str]) -> str:
    """The ``wattsup.command`` tag: the command as a shell would need it typed."""
    return shlex.join(cmd)


def experiment_wanted(name: str | None) -> dict[str, str | None]:
    """Which experiment a new run goes to: ``name``, else ``$MLFLOW_EXPERIMENT_NAME``, else
    ``$MLFLOW_EXPERIMENT_ID``, else Default (MLflow's own order)."""
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME")
    if name:
        return {"experiment_name": name, "experiment_id": None}
    env_id = os.environ.get("MLFLOW_EXPERIMENT_ID")
    if env_id:
        return {"experiment_name": None, "experiment_id": env_id}
    return {"experiment_name": DEFAULT_EXPERIMENT, "experiment_id": None}


def new_run_tags(tags: Mapping[str, str] | None = None, store: Store | None = None) -> dict[str, str]:
    """Tags of a run we create: MLflow's own context tags (user, source, git; and our plugin's
    hardware tags) as ``mlflow.start_run`` would set them, then ``tags``.

    Over HTTP (``store`` speaks REST) and while this process has not imported MLflow, they are
    computed without it (:func:`~mlflow_wattsup.sink.rest.context_tags`, our plugin's tags added
    unless ``WATTSUP_DISABLE_PLUGIN`` is set): context-provider plugins of other packages are
    then not asked; everywhere else MLflow's own ``resolve_tags`` gives them."""
    if store is not None and store.is_rest and "mlflow" not in sys.modules:
        from mlflow_wattsup.run.machine import machine_tags
        from mlflow_wattsup.sink.rest import context_tags

        extra: dict[str, str] = {}
        if os.environ.get("WATTSUP_DISABLE_PLUGIN", "").lower() not in ("1", "true", "yes"):
            try:
                extra = dict(machine_tags())
            except Exception:  # never fail a run over its context tags
                extra = {}
        base = context_tags(extra=extra)
    else:
        try:
            from mlflow.tracking.context.registry import resolve_tags

            base = dict(resolve_tags())
        except Exception:  # never fail a run over its context tags
            base = {}
    base.setdefault("mlflow.user", _user())
    base.setdefault("mlflow.source.type", "LOCAL")
    base.setdefault("mlflow.source.name", sys.argv[0] or "<console>")
    base.update(tags or {})
    return base


def ensure_experiment(store: Store, name: str | None = None) -> str:
    """The id of the experiment a new run would go to (see :func:`experiment_wanted`), created if
    missing."""
    want = experiment_wanted(name)
    return want["experiment_id"] or store.experiment_id(want["experiment_name"])


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


class TrackedRun:
    """One MLflow run we log to, from resolution to end (see the module docstring).

    ``fluent``: make the run MLflow's active run while it lasts (``track()``: the user's own
    ``mlflow.log_*`` calls in the block go to it), resuming ``$MLFLOW_RUN_ID`` like
    ``mlflow.start_run()`` does. ``join_active``: an active fluent run counts as the run to log
    to. ``flush_interval_s``: the sink's writer period (0: write at close only).

    ``store``: the tracking store (default: one for ``tracking_uri``); the run's one connection,
    shared with its sink. ``create``: create exactly this run (``experiment_id``, ``run_name``,
    ``tags``, ``start_time`` in epoch ms, as :meth:`~mlflow_wattsup.sink.transport.Store.create_run`
    takes them), never the active or ``$MLFLOW_RUN_ID`` run and without this process's context
    tags: a run that happened elsewhere (an import).
    """

    def __init__(
        self,
        *,
        tracking_uri: str | None = None,
        run_id: str | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
        tags: Mapping[str, str] | None = None,
        join_active: bool = True,
        fluent: bool = False,
        flush_interval_s: float = 10.0,
        echo: Any = sys.stderr,
        store: Store | None = None,
        create: Mapping[str, Any] | None = None,
    ):
        if store is None:
            store = Store(tracking_uri=tracking_uri, limiter=job_limiter())
        self.store = store
        self.echo = echo
        self.recording: Recording | None = None
        self.totals: Totals | None = None
        self._fluent = False
        run_id, source = (None, "new") if create is not None else self._which(run_id, join_active)
        self.created = False  # we created (or will create) the run, so we end it
        answered = False
        sent_at = None  # when our own creation was sent, kept if it timed out (the server may make it)
        try:
            if fluent and source in ("new", "env") and create is None and self.store.reachable():
                run_id = self._start_fluent(source, experiment, run_name, tags)
            elif run_id is not None:
                self.store.run_exists(run_id)
            else:
                create = (
                    {**create, "start_time": create.get("start_time") or now_ms()}
                    if create is not None
                    else {
                        **experiment_wanted(experiment),
                        "run_name": run_name,
                        "tags": new_run_tags(tags, self.store),
                        "start_time": now_ms(),
                    }
                )
                # a token the sink can find the run by, should this attempt time out after all
                create = with_create_token(create)
                sent_at = time.monotonic()
                run_id = self.store.create_run(create)
                create = None
                self.created = True
            answered = True
        except Exception as exc:
            if not unreachable(exc):
                raise
            self._say_unreachable(exc)
            self.created = run_id is None
            if not timed_out(exc):
                sent_at = None
        self.sink = MlflowSink(
            run_id,
            self.store,
            create=create,
            flush_interval_s=flush_interval_s,
            echo=echo,
            store_answered=answered,
            create_timed_out_at=sent_at if create is not None else None,
        )

    def _start_fluent(self, source: str, experiment: str | None, run_name: str | None, tags) -> str:
        """Start MLflow's active run: resume ``$MLFLOW_RUN_ID`` (as ``mlflow.start_run()`` does, and
        end it at the end like it), or create a new run through MLflow's fluent API -- the one run
        we do not create through the store, because MLflow's fluent state must own it."""
        import mlflow

        mlflow.set_tracking_uri(self.store.uri)
        if source == "env":
            run = mlflow.start_run()
        else:
            exp_id = ensure_experiment(self.store, experiment)
            run = mlflow.start_run(experiment_id=exp_id, run_name=run_name, tags=dict(tags or {}))
        self._fluent = True
        self.created = True
        return run.info.run_id

    @staticmethod
    def _which(run_id: str | None, join_active: bool) -> tuple[str | None, str]:
        if run_id:
            return run_id, "explicit"
        if join_active and "mlflow" in sys.modules:
            import mlflow

            active = mlflow.active_run()
            if active is not None:
                return active.info.run_id, "active"
        env = os.environ.get("MLFLOW_RUN_ID")
        return (env, "env") if env else (None, "new")

    def _say_unreachable(self, exc: Exception) -> None:
        if self.echo is not None:
            print(
                f"wattsup: tracking store {self.store.uri} unreachable ({type(exc).__name__}); measuring anyway: "
                "results are spooled and written when it answers",
                file=self.echo,
            )

    @property
    def run_id(self) -> str | None:
        """The run's id (None while a deferred run is not created yet)."""
        return self.sink.run_id

    @property
    def as_stage_of_outer(self) -> bool:
        """Whether this run is the one an enclosing ``wattsup run`` already tracks (then a
        tracked block inside logs itself as a stage, not as the run's totals)."""
        return self.run_id is not None and os.environ.get(keys.RUN_ENV) == self.run_id

    # -- recording -------------------------------------------------------------------------------

    def record(
        self,
        tracker: Tracker,
        carbon: CarbonConfig,
        tags: Mapping[str, str] | None = None,
        as_stage: str | None = None,
        buffer: SampleBuffer | None = None,
    ) -> Recording:
        """Log the start params/tags and stream ``tracker``'s samples into the run; starts the
        tracker, unless ``buffer`` is given: then the tracker was started earlier with ``buffer``
        as a callback, and the samples it holds are logged first."""
        self.recording = Recording(self.sink, tracker, carbon, dict(tags or {}), as_stage=as_stage)
        self.recording.start(tracker_started=buffer is not None, buffer=buffer)
        return self.recording

    def finish(
        self,
        status: str,
        exit_code: int | None = None,
        extra_tags: Mapping[str, str] | None = None,
        before_close: Callable[[], None] | None = None,
        end_time_ms: int | None = None,
        last: Callable[[], None] | None = None,
    ) -> Totals | None:
        """Log the totals (if recording) with the end tags, call ``before_close`` (last values),
        describe the run, call ``last`` (the very last values, e.g. what measuring cost: it is
        called after the description is made, and only where the run is described), end the run
        if we created it (at ``end_time_ms``, default now) and close the sink."""
        try:
            status = self._log_end(status, exit_code, extra_tags, before_close)
        finally:
            self._close(status, end_time_ms, last)
        return self.totals

    def _log_end(
        self,
        status: str,
        exit_code: int | None,
        extra_tags: Mapping[str, str] | None,
        before_close: Callable[[], None] | None,
    ) -> str:
        """Log what the run measured; returns the status to end it with."""
        if self.recording is not None:
            self.totals = self.recording.finish({**keys.end_tags(status, exit_code), **(extra_tags or {})})
        elif extra_tags:
            self.sink.set_tags(extra_tags)
        if before_close is not None:
            before_close()
        return status

    def _close(
        self, status: str, end_time_ms: int | None = None, last: Callable[[], None] | None = None
    ) -> None:
        """Write what is queued; describe the run from it (the description goes in the last batch,
        with ``last``'s values); end the run if we created it; close the sink."""
        describes = self._describes()
        if describes and self.sink.flush() and self.run_id is not None:  # a deferred run is created here
            self._describe()
        if describes and last is not None:
            try:
                last()
            except Exception:
                pass  # what measuring cost is a convenience
        if self.created:
            self.sink.terminate(status, end_time_ms)
        written = self.sink.close()
        if self._fluent:
            self._end_fluent(status, written)

    def _describes(self) -> bool:
        """Whether this run's end writes its description (a block logged as a stage of an outer
        run does not: the outer run describes itself)."""
        return self.recording is None or self.recording.as_stage is None

    def _describe(self) -> None:
        """The run's description in words (never over a user's), queued as the run's last tag,
        and our saved runs-table view in an experiment we created the run in; a failure here is
        one line, never an error. One request (the run read back, with what the command itself
        logged); the view costs none once the experiment has it."""
        from mlflow_wattsup.report.run_note import describe_text

        run_id = self.run_id
        try:
            text = describe_text(self.store.get_run(run_id))
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            print(
                f"wattsup: run {run_id}: description not written ({type(exc).__name__}: {first})",
                file=sys.stderr,
            )
            return
        if text is not None:
            from mlflow_wattsup.report.notes import NOTE_TAG

            self.sink.set_tags({NOTE_TAG: text})
        if self.created:
            try:
                from mlflow_wattsup.report.links import ensure_runs_view

                ensure_runs_view(self.store, self.store.experiment_of(run_id))
            except Exception:
                pass  # a saved view is a convenience

    def _end_fluent(self, status: str, written: bool) -> None:
        """Pop the fluent run. Our sink already wrote (or spooled) its status; MLflow's end_run
        writes it again, which is quick when the store answered and must not be tried (MLflow
        retries for minutes) when it did not."""
        import mlflow

        try:
            if written:
                mlflow.end_run(status)
            else:
                from mlflow.tracking import fluent

                fluent._active_run_stack.get().pop()  # no public way to leave a run without a store call
        except Exception:
            pass

    def __enter__(self) -> TrackedRun:
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        status = "FINISHED"
        if exc_type is not None:
            status = "KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED"
        self.finish(status)
        return False

    def summary(self, carbon: CarbonConfig, exit_code: int, status: str) -> str:
        """The printed summary: totals with their sources, and where to see the run in the UI."""
        from mlflow_wattsup.run.recording import summary_text

        where = [f"run {self.run_id or '(not created yet: spooled)'} at {self.store.uri}"]
        if self.run_id:
            try:
                from mlflow_wattsup.report.links import open_lines

                exp_id = self.store.experiment_of(self.run_id)
                where = [f"run {self.run_id}", *open_lines(self.store.uri, exp_id, self.run_id)]
            except Exception:
                pass  # the store is away: the plain line
        return summary_text(where, self.totals, carbon, exit_code, status)
