"""A tracker wired to a run's sink - what is logged at the start, during, and at the end
(the key names come from :mod:`.keys`), and the printed summary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mlflow_wattsup.analysis.carbon import CarbonConfig
from mlflow_wattsup.sink import keys
from mlflow_wattsup.sink.writer import MlflowSink
from mlflow_wattsup.tracking.tracker import Sample, SampleBuffer, StageResult, Totals, Tracker


def source_tags(t: Tracker | Totals) -> dict[str, str]:
    s = t.sources
    return keys.source_tags(s.cpu, s.gpu, s.ram, s.attribution_gpu)


def stage_metrics(stages: list[StageResult], carbon: CarbonConfig) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in stages:
        out.update(keys.stage_metrics(s.name, s.start_s, s.end_s, s.duration_s, s.energy, carbon, s.cpu_s))
    return out


def summary_metrics(t: Totals, carbon: CarbonConfig) -> dict[str, float]:
    """The run-level metrics of ``docs/metrics.md``."""
    return {
        **keys.run_metrics(
            t.duration_s, t.energy, carbon, machine_energy=t.machine_energy, cpu_time_s=t.cpu_s
        ),
        **keys.container_metrics(t.containers),
    }


@dataclass
class Recording:
    """A tracker wired to a sink: logs the start-time params/tags, streams the power series,
    and on :meth:`finish` logs totals, stages, carbon and sources.

    With ``as_stage`` (a tracked block inside a command already tracked by ``wattsup run`` for
    the same run) only ``stage/<as_stage>/...`` metrics are written, so the outer totals are not
    overwritten.
    """

    sink: MlflowSink
    tracker: Tracker
    carbon: CarbonConfig
    tags: dict[str, str] = field(default_factory=dict)
    as_stage: str | None = None
    totals: Totals | None = None

    def start(self, tracker_started: bool = False, buffer: SampleBuffer | None = None) -> Recording:
        """Log the start params and tags and stream the samples; start the tracker unless
        ``tracker_started`` (then ``buffer``, if given, holds the samples taken so far)."""
        t = self.tracker
        if self.as_stage is None:
            params = {**keys.carbon_params(self.carbon), keys.INTERVAL_S: f"{t.interval_s:g}"}
            if t.sources.cpu.endswith("estimate") or t.sources.ram.endswith("estimate"):
                params.update(keys.estimate_params(t.cpu_model, t.ram_model))
            self.sink.log_params(params)
            # hardware tags, as the run-context plugin gives fluent runs
            from mlflow_wattsup.run.machine import machine_tags

            self.sink.set_tags(
                {
                    **machine_tags(),  # wattsup.version included
                    **source_tags(t),
                    **keys.carbon_tags(self.carbon.intensity.source, self.carbon.pue_source),
                    **self.tags,
                }
            )
            # a distributed run's view of the sink writes each agent's trace under its own prefix
            log_sample = getattr(self.sink, "log_sample", self.log_sample)
            if buffer is not None:
                buffer.forward_to(log_sample)
            else:
                t.add_callback(log_sample)
        elif self.tags:
            # a stage: the measurement's tags are the enclosing one's, but the block's own facts
            # (pipeline, device, dataset...) still describe the run
            self.sink.set_tags({k: v for k, v in self.tags.items() if k != keys.COMMAND})
        if not tracker_started:
            t.start()
        return self

    def log_sample(self, s: Sample) -> None:
        """One tracker sample as the run's trace: power and energy so far under ``system/``
        (the run page's System metrics tab), step = elapsed seconds."""
        self.sink.log_metrics(
            keys.sample_metrics(s.power_w, s.power_cpu_w, s.power_gpu_w, s.power_ram_w, s.energy.total_j),
            step=s.step,
            timestamp_ms=s.timestamp_ms,
        )

    def finish(self, extra_tags: Mapping[str, str] | None = None) -> Totals:
        totals = self.tracker.stop()
        self.totals = totals
        if self.as_stage is not None:
            block = StageResult(
                self.as_stage, 0.0, totals.duration_s, totals.duration_s, totals.energy, totals.cpu_s
            )
            self.sink.log_metrics(stage_metrics([block, *self._stages()], self.carbon))
        else:
            self.sink.log_metrics(
                {**summary_metrics(totals, self.carbon), **keys.slurm_metrics(totals.slurm)}
            )
            self.sink.log_metrics(stage_metrics(self._stages(), self.carbon))
            tags = {
                **source_tags(totals),
                **keys.slurm_tags(totals.slurm),
                **keys.warning_tags(totals.warnings),
            }
            self.sink.set_tags({**tags, **keys.container_tags(totals.containers)})
        if extra_tags:
            self.sink.set_tags(extra_tags)
        return totals

    def _stages(self) -> list[StageResult]:
        if self.as_stage is None:
            return self.tracker.stages
        return [
            StageResult(
                f"{self.as_stage}.{s.name}", s.start_s, s.end_s, s.duration_s, s.energy, s.cpu_s, s.count
            )
            for s in self.tracker.stages
        ]


def summary_text(where: list[str], totals: Totals, carbon: CarbonConfig, exit_code: int, status: str) -> str:
    """``where``: the lines saying which run and how to open it."""
    from mlflow_wattsup.report.numbers import clock, energy_j

    e = totals.energy
    src = totals.sources
    lines = [
        f"wattsup: {status} in {clock(totals.duration_s)} ({totals.duration_s:.1f} s), exit code {exit_code}",
        f"  energy  {energy_j(e.total_j)}: CPU {energy_j(e.cpu_j)} [{src.cpu}], GPU {energy_j(e.gpu_j)} "
        f"[{src.gpu}], "
        f"RAM {energy_j(e.ram_j)} [{src.ram}]; whole machine {energy_j(totals.machine_energy.total_j)}",
        f"  carbon  {carbon.carbon_g(e.total_j):.4g} g CO2eq at {carbon.intensity.g_per_kwh:.4g} g/kWh "
        f"({carbon.intensity.region or 'no region'}: {carbon.intensity.source}), PUE {carbon.pue:g}",
        f"  cpu time {totals.cpu_s:.1f} s; mean power {totals.power_mean_w:.1f} W",
        *([_slurm_line(totals.slurm)] if totals.slurm is not None else []),
        *(f"  {line}" for line in where),
    ]
    lines += [f"  container {u.label} ({u.method}): {u.cpu_s:.1f} CPU-s" for u in totals.containers[:5]]
    lines += [f"  warning ({k}): {v}" for k, v in totals.warnings.items()]
    return "\n".join(lines)


def _slurm_line(slurm) -> str:
    """SLURM's own figure beside ours: its value and share rule, or why there is none."""
    from mlflow_wattsup.report.numbers import energy_j

    if slurm.energy_j is None:
        return f"  slurm   not collected ({slurm.detail})"
    return f"  slurm   {energy_j(slurm.energy_j)} by SLURM's accounting ({slurm.allocation.rule})"
