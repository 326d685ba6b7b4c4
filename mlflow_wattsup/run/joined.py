"""One MLflow run for a distributed job (torchrun/DDP, the tasks of a SLURM step, MPI
ranks), joined by several measuring agents.

Who measures (``mode``): in ``rank`` mode (``srun wattsup run -- CMD``: one ``wattsup run`` per
task) every task is an agent; in ``host`` mode (``track()`` inside a DDP script) the first process
of each host is the agent and measures all local ranks; the other ranks do nothing.

How they meet, without a race: agent 0 (global rank 0, or host 0's agent) is the only one that
creates the run, tagged ``wattsup.dist.job`` = the job key every process derives from the
launcher's environment (see :func:`mlflow_wattsup.tracking.distributed.discover`). The others
poll the store for the RUNNING run with that tag (up to ``$WATTSUP_DIST_JOIN_S``, default 120 s)
and log into it. A run given explicitly (``--run-id``, ``$MLFLOW_RUN_ID``, an active run) is
joined by all of them, and nobody searches.

How the totals are formed: each agent streams its power series under its own prefix
(``rank/<r>/power_w`` or ``host/<host>/power_w``) and, when its command or block ends, writes
its report (exact joules, JSON) to the tag ``wattsup.dist.agent.<n>``. Agent 0 waits for every
report (up to ``$WATTSUP_DIST_REPORT_S``, default 120 s, after its own end), adds them up by
:func:`mlflow_wattsup.tracking.distributed.combine`, logs the run's totals and the per-host
(and, in rank mode, per-rank) breakdown, and ends the run: FAILED when an agent failed or did
not report, with ``wattsup.dist.missing`` saying which.

When agent 0 dies (SIGKILL, node loss), the others take over, so that no run stays RUNNING: after
writing its report, every other agent waits for the run to leave RUNNING. It watches the run's
activity (the agents' report tags and agent 0's power series); once that has been quiet for
``$WATTSUP_DIST_TAKEOVER_S`` (default 60 s; plus ``$WATTSUP_DIST_REPORT_S`` when agent 0 has
reported, i.e. may be waiting for the others), the lowest-numbered agent that reported tags the
run ``wattsup.dist.takeover``, collects the reports as agent 0 would, logs the same totals and
breakdowns and ends the run FAILED with ``wattsup.dist.missing`` naming agent 0. The next agents
in order wait one more ``$WATTSUP_DIST_TAKEOVER_S`` each (in case the one taking over dies too).
Whoever finds the run already ended (by agent 0 or by a takeover) leaves it as it is: the status
is read right before the totals are written and again right before the run is ended (MLflow has
no conditional update, so a window of one poll remains between an agent 0 silent for
``$WATTSUP_DIST_TAKEOVER_S`` yet alive and a takeover).
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from mlflow_wattsup.analysis.carbon import CarbonConfig
from mlflow_wattsup.run.lifecycle import TrackedRun, experiment_wanted
from mlflow_wattsup.run.recording import Recording, stage_metrics
from mlflow_wattsup.sink import keys
from mlflow_wattsup.sink.transport import Store, job_limiter
from mlflow_wattsup.tracking.distributed import (
    AgentReport,
    JobContext,
    JobTotals,
    combine,
    discover,
)
from mlflow_wattsup.tracking.tracker import SampleBuffer, Totals, Tracker

JOIN_ENV = "WATTSUP_DIST_JOIN_S"
REPORT_ENV = "WATTSUP_DIST_REPORT_S"
TAKEOVER_ENV = "WATTSUP_DIST_TAKEOVER_S"
POLL_S = 0.5
_SEVERITY = {"FINISHED": 0, "KILLED": 1, "FAILED": 2}


def _seconds(name: str, default: float) -> float:
    v = os.environ.get(name)
    if not v:
        return default
    try:
        return max(0.0, float(v))
    except ValueError:
        raise ValueError(f"${name}={v!r}: expected seconds (a number)") from None


def worst(*statuses: str) -> str:
    """The most severe of run statuses (FAILED > KILLED > FINISHED)."""
    return max(statuses, key=lambda s: _SEVERITY.get(s, 2))


def find_job_run(store: Store, job_key: str, experiment: str | None, timeout_s: float) -> str | None:
    """The id of the RUNNING run tagged ``wattsup.dist.job = job_key`` in the experiment a new
    run would go to (the newest, should an earlier attempt have left one RUNNING), polled until
    ``timeout_s``; None if it did not appear."""
    want = experiment_wanted(experiment)
    quoted = job_key.replace("\\", "\\\\").replace("'", "\\'")
    flt = f"tags.`{keys.DIST_JOB}` = '{quoted}' and attributes.status = 'RUNNING'"
    deadline = time.monotonic() + timeout_s
    while True:
        exp_id = want["experiment_id"] or store.find_experiment(want["experiment_name"])
        if exp_id is not None:
            runs = store.search_runs([exp_id], flt, max_results=2, order_by=["attributes.start_time DESC"])
            if runs:
                return runs[0].info.run_id
        if time.monotonic() >= deadline:
            return None
        time.sleep(POLL_S)


class _PrefixedSamples:
    """A sink as :class:`Recording` sees it, whose power series goes under ``prefix``."""

    def __init__(self, sink, prefix: str):
        self._sink, self._prefix = sink, prefix

    def log_sample(self, s) -> None:
        self._sink.log_metrics(
            keys.dist_series(self._prefix, s.power_w, s.power_cpu_w, s.power_gpu_w, s.power_ram_w),
            step=s.step,
            timestamp_ms=s.timestamp_ms,
        )

    def __getattr__(self, name):
        return getattr(self._sink, name)


class JoinedRun(TrackedRun):
    """A :class:`TrackedRun` shared by the agents of one distributed job (module docstring)."""

    def __init__(self, ctx: JobContext, mode: str, *, run_id: str | None = None, **kw: Any):
        self.ctx, self.mode = ctx, mode
        self.agent = ctx.agent(mode)
        self.agents = ctx.agents(mode)
        self.leader = ctx.leader(mode)
        self.prefix = keys.dist_prefix(mode, self.agent, ctx.host)
        self.job: JobTotals | None = None
        echo = kw.get("echo", sys.stderr)
        tags = {
            **(kw.pop("tags", None) or {}),
            **keys.dist_tags(ctx.launcher, ctx.job_key, mode, self.agents),
        }
        explicit = run_id or self._given(kw.get("join_active", True))
        alone, found = None, False
        if not self.leader and explicit is None:
            if kw.get("store") is None:
                kw["store"] = Store(
                    tracking_uri=kw.get("tracking_uri"), limiter=job_limiter()
                )  # one connection
            wait_s = _seconds(JOIN_ENV, 120.0)
            explicit = find_job_run(kw["store"], ctx.job_key, kw.get("experiment"), wait_s)
            found = explicit is not None
            if explicit is None:
                alone = (
                    f"agent {self.agent} found no running run of job {ctx.job_key} after {wait_s:g} s "
                    "(did agent 0 start?): logged to a run of its own"
                )
                if echo is not None:
                    print(f"wattsup: {alone}", file=echo)
        if explicit is not None:
            kw["fluent"] = False  # only agent 0 may own MLflow's active run
        super().__init__(run_id=explicit, tags=tags, **kw)
        self._alone = alone
        self._found = found  # agent 0 created the run (not given): it ends it, or we take over
        if alone is not None:
            self.leader, self.agents = True, 1  # a job of its own, so it ends its run itself
            self.sink.set_tags({keys.warning_tag("dist"): alone, **tags})

    @staticmethod
    def _given(join_active: bool) -> str | None:
        run_id, source = TrackedRun._which(None, join_active)
        return run_id if source in ("active", "env") else None

    # -- recording ------------------------------------------------------------------------------

    def record(
        self,
        tracker: Tracker,
        carbon: CarbonConfig,
        tags: Mapping[str, str] | None = None,
        as_stage: str | None = None,
        buffer: SampleBuffer | None = None,
    ) -> Recording:
        joined = f"joined: host {self.ctx.host}, rank {self.ctx.rank}, local rank {self.ctx.local_rank}"
        self.sink.set_tags({keys.dist_agent_tag(self.agent): joined})
        view = _PrefixedSamples(self.sink, self.prefix)
        if self.leader:
            self.recording = Recording(view, tracker, carbon, dict(tags or {}), as_stage=as_stage)
            self.recording.start(tracker_started=buffer is not None, buffer=buffer)
        else:  # the run's params and tags are agent 0's; an agent adds its series only
            self.recording = Recording(view, tracker, carbon, {}, as_stage=as_stage)
            if buffer is not None:
                buffer.forward_to(view.log_sample)
            else:
                tracker.add_callback(view.log_sample)
                tracker.start()
        self.sink.flush()  # others may be waiting for the joined tag
        return self.recording

    def _log_end(
        self,
        status: str,
        exit_code: int | None,
        extra_tags: Mapping[str, str] | None,
        before_close: Callable[[], None] | None,
    ) -> str:
        """End this agent: write its report; agent 0 (or the agent taking over from a dead
        agent 0) also waits for the others, logs the totals and returns the run's status (made
        worse by the others' failures or absence)."""
        rec = self.recording
        first = self.leader  # agent 0 itself (or an agent alone in its own run)
        if rec is not None:
            own = rec.tracker.stop()
            report = self._report(own, status, exit_code)
            self.sink.set_tags({keys.dist_agent_tag(self.agent): report.to_json()})
            self.totals = own
            if not self.leader and self._found and self.agents > 1 and self.run_id is not None:
                self.sink.flush()
                self._took_over = self._await_leader()
                self.leader = self.created = self._took_over
            if self.leader:
                dead = () if first else tuple(self._silent)
                self.job = self._collect(report, dead=dead)
                ended = self._ended_by_other()
                if ended is not None:  # the job's run was ended meanwhile: leave it as it is
                    self.leader = self.created = False
                    self._say(f"run {self.run_id} was already ended ({ended}): agent {self.agent} left it")
                else:
                    status = worst(status, self.job.status)
                    code = exit_code if first else None  # agent 0's command's exit code is unknown
                    self.totals = self._log_totals(rec, self.job, own, status, code)
        if extra_tags:
            self.sink.set_tags(extra_tags)
        if before_close is not None and self.leader and first:
            before_close()
        return status

    _took_over = False
    _silent: tuple[int, ...] = ()

    def _say(self, text: str) -> None:
        if self.echo is not None:
            print(f"wattsup: {text}", file=self.echo)

    def _ended_by_other(self) -> str | None:
        """The run's status when it is no longer RUNNING, or when another agent took it over;
        None while it is ours to end (a store that does not answer counts as ours: spooled)."""
        try:
            run = self.store.get_run(self.run_id)
        except Exception:
            return None
        if run.info.status != "RUNNING":
            return run.info.status
        taker = run.data.tags.get(keys.DIST_TAKEOVER, "")
        if taker and not taker.startswith(f"agent {self.agent} "):
            return f"taken over: {taker}"
        return None

    def _close(self, status: str, end_time_ms: int | None = None, last=None) -> None:
        if self._took_over and self.created and self._ended_by_other() is not None:
            self.created = False  # ended while we wrote the totals: do not end it a second time
        super()._close(status, end_time_ms, last)

    def _await_leader(self) -> bool:
        """An agent other than 0, after its report: wait for the run to leave RUNNING. True when
        this agent must take over (module docstring: agent 0 quiet for the takeover time, this
        the lowest-numbered agent that reported, or the next once the one before stayed quiet)."""
        margin_s = _seconds(TAKEOVER_ENV, 60.0)
        report_s = _seconds(REPORT_ENV, 120.0)
        poll_s = max(POLL_S, min(5.0, margin_s / 10))  # many agents may wait on one store
        seen, changed = None, time.monotonic()
        while True:
            now = time.monotonic()
            try:
                run = self.store.get_run(self.run_id)
            except Exception:  # the store does not answer: nobody can end the run now
                if now - changed >= margin_s + report_s:
                    self._say(
                        f"tracking store unreachable: agent {self.agent} cannot see run {self.run_id} end"
                    )
                    return False
                time.sleep(poll_s)
                continue
            if run.info.status != "RUNNING":
                return False
            tags = run.data.tags
            reports = {a: v for k, v in tags.items() if (a := keys.dist_agent_of(k)) is not None}
            reported = sorted(a for a, v in reports.items() if v.startswith("{") and 0 < a < self.agents)
            lead = _leader_series_prefix(self.mode, reports.get(0, ""))
            beats = tuple(
                sorted(
                    (m.key, m.timestamp, m.step)
                    for m in getattr(run.data, "_metric_objs", ())  # the latest point per key
                    if lead is not None and m.key.startswith(lead)
                )
            )
            fingerprint = (tuple(sorted(reports.items())), tags.get(keys.DIST_TAKEOVER), beats)
            if fingerprint != seen:
                seen, changed = fingerprint, now
            waiting = reports.get(0, "").startswith("{") or keys.DIST_TAKEOVER in tags
            place = reported.index(self.agent) if self.agent in reported else len(reported)
            patience_s = margin_s * (place + 1) + (report_s if waiting else 0.0)
            if now - changed >= patience_s:
                self._silent = () if reports.get(0, "").startswith("{") else (0,)
                why = f"agent {self.agent} took over: run still RUNNING, quiet for {now - changed:.0f} s"
                if not reports.get(0, "").startswith("{"):
                    why += ", no report from agent 0"
                self.sink.set_tags({keys.DIST_TAKEOVER: why})
                self.sink.flush()
                self._say(why)
                return True
            time.sleep(poll_s)

    def _describes(self) -> bool:
        return self.leader  # the run is described once, by agent 0, after the totals

    def _report(self, own: Totals, status: str, exit_code: int | None) -> AgentReport:
        s = own.sources
        return AgentReport(
            agent=self.agent,
            host=self.ctx.host,
            rank=self.ctx.rank,
            local_rank=self.ctx.local_rank,
            status=status,
            exit_code=exit_code,
            duration_s=own.duration_s,
            energy=own.energy,
            machine_energy=own.machine_energy,
            cpu_s=own.cpu_s,
            sources={"cpu": s.cpu, "gpu": s.gpu, "ram": s.ram, "attribution_gpu": s.attribution_gpu},
            warnings=dict(own.warnings),
        )

    def _collect(self, own: AgentReport, dead: tuple[int, ...] = ()) -> JobTotals:
        """Agent 0 (or the agent taking over): the reports in the run's tags, polled until all
        arrived (but those of the ``dead`` agents, which will not) or the deadline."""
        reports = {own.agent: own}
        self.joined: dict[int, str] = {}
        if self.agents > 1:
            self.sink.flush()
            deadline = time.monotonic() + _seconds(REPORT_ENV, 120.0)
            while True:
                try:
                    tags = self.store.get_run(self.run_id).data.tags if self.run_id else {}
                except Exception:  # the store is down: wait, then log what we have (spooled)
                    tags = {}
                for k, v in tags.items():
                    a = keys.dist_agent_of(k)
                    if a is None or a in reports or a >= self.agents:
                        continue
                    if v.startswith("{"):
                        try:
                            reports[a] = AgentReport.from_json(v)
                        except (ValueError, KeyError, TypeError):
                            self.joined[a] = f"unreadable report {v[:80]!r}"
                    else:
                        self.joined[a] = v
                if (
                    len(reports) + len(set(dead) - set(reports)) >= self.agents
                    or time.monotonic() >= deadline
                ):
                    break
                time.sleep(POLL_S)
        return combine(reports.values(), self.agents)

    def _missing_text(self, job: JobTotals) -> str:
        parts = []
        for a in job.missing:
            state = self.joined.get(a)
            parts.append(f"agent {a}: {state}, no report" if state else f"agent {a}: never joined")
        return "; ".join(parts)

    def _log_totals(self, rec: Recording, job: JobTotals, own: Totals, status: str, exit_code) -> Totals:
        carbon, sink = rec.carbon, self.sink
        if rec.as_stage is not None:  # inside an outer `wattsup run`: the job's total is a stage
            from mlflow_wattsup.tracking.tracker import StageResult

            block = StageResult(rec.as_stage, 0.0, job.duration_s, job.duration_s, job.energy, job.cpu_s)
            sink.log_metrics(stage_metrics([block], carbon))
        else:
            sink.log_metrics(
                keys.run_metrics(
                    job.duration_s,
                    job.energy,
                    carbon,
                    machine_energy=job.machine_energy,
                    cpu_time_s=job.cpu_s,
                )
            )
            if not self._took_over:  # agent 0's own stages (another agent's are not the run's)
                sink.log_metrics(stage_metrics(rec.tracker.stages, carbon))
        for h in job.hosts.values():
            p = keys.dist_prefix("host", 0, h.host)
            sink.log_metrics(keys.dist_part_metrics(p, h.energy, h.machine_energy, h.cpu_s, None))
        if self.mode == "rank":
            for r in job.reports.values():
                p = keys.dist_prefix("rank", r.agent, r.host)
                sink.log_metrics(keys.dist_part_metrics(p, r.energy, None, r.cpu_s, r.duration_s))
        warnings: dict[str, list[str]] = {}
        for r in job.reports.values():
            for k, v in r.warnings.items():
                warnings.setdefault(k, []).append(f"agent {r.agent} ({r.host}): {v}")
        src = job.sources
        tags = {
            **keys.source_tags(src["cpu"], src["gpu"], src["ram"], src["attribution_gpu"]),
            **keys.warning_tags({k: "; ".join(v) for k, v in warnings.items()}),
            keys.DIST_HOSTS: ",".join(job.hosts),
            **keys.end_tags(status, exit_code),
        }
        if job.missing:
            tags[keys.DIST_MISSING] = self._missing_text(job)
        capped = [f"{h.host}: {','.join(h.capped)}" for h in job.hosts.values() if h.capped]
        if capped:
            tags[keys.DIST_CAPPED] = "; ".join(capped)
        sink.set_tags(tags)
        from mlflow_wattsup.tracking.tracker import Sources

        return Totals(
            duration_s=job.duration_s,
            energy=job.energy,
            machine_energy=job.machine_energy,
            cpu_s=job.cpu_s,
            sources=Sources(src["cpu"], src["gpu"], src["ram"], src["attribution_gpu"] or "process"),
            samples=own.samples,
            warnings={k: "; ".join(v) for k, v in warnings.items()},
        )


_JOINED = re.compile(r"^joined: host (?P<host>.*), rank \d+, local rank \d+$")


def _leader_series_prefix(mode: str, agent0_tag: str) -> str | None:
    """Where agent 0's power series goes (its heartbeat while it measures): ``rank/0/``, or in
    host mode ``host/<its host>/`` read from its ``joined: host ...`` tag; None if unknown."""
    if mode == "rank":
        return keys.dist_prefix("rank", 0, "")
    m = _JOINED.match(agent0_tag)
    return keys.dist_prefix("host", 0, m["host"]) if m else None


def tracked_run(*, mode: str = "rank", ctx: JobContext | None = None, **kw: Any) -> TrackedRun:
    """The run a process logs to: a :class:`JoinedRun` when it is part of a distributed job
    (``ctx``, else discovered from the environment), else a plain :class:`TrackedRun`."""
    ctx = ctx if ctx is not None else discover()
    if ctx is None or (mode == "host" and os.environ.get(keys.RUN_ENV)):
        # an outer `wattsup run` (one per task under srun) owns the job's run: a tracked block
        # inside is one of its stages, not an agent of its own
        return TrackedRun(**kw)
    return JoinedRun(ctx, mode, **kw)


def distributed_role():
    """For ``track()``: ``(ctx, tree, note)``: the job context (None outside a distributed job),
    the process tree a host agent measures (all local ranks; None: the default, this process)
    and a one-line note when that tree looks incomplete."""
    ctx = discover()
    if ctx is None or not ctx.host_agent:
        return ctx, None, None
    from mlflow_wattsup.tracking.distributed import local_ranks_tree

    tree, note = local_ranks_tree(ctx)
    return ctx, tree, note
