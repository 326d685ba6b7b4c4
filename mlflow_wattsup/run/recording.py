"""A tracker wired to a run's sink - what is logged at the start, during, and at the end
(the key names come from :mod:`.keys`), and the printed summary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from mlflow_wattsup.analysis.carbon import CarbonConfig
from mlflow_wattsup.meters.units import wh
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
    return keys.run_metrics(
        t.duration_s, t.energy, carbon, machine_energy=t.machine_energy, cpu_time_s=t.cpu_s
    )


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
            if buffer is not None:
                buffer.forward_to(self.log_sample)
            else:
                t.add_callback(self.log_sample)
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
            self.sink.log_metrics(summary_metrics(totals, self.carbon))
            self.sink.log_metrics(stage_metrics(self._stages(), self.carbon))
            self.sink.set_tags({**source_tags(totals), **keys.warning_tags(totals.warnings)})
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


def fmt_duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def summary_text(where: list[str], totals: Totals, carbon: CarbonConfig, exit_code: int, status: str) -> str:
    """``where``: the lines saying which run and how to open it."""
    e = totals.energy
    src = totals.sources

    def fmt_wh(j: float) -> str:
        return f"{wh(j):.4g} Wh"

    lines = [
        f"wattsup: {status} in {fmt_duration(totals.duration_s)} ({totals.duration_s:.1f} s), exit code "
        f"{exit_code}",
        f"  energy  {fmt_wh(e.total_j)}: CPU {fmt_wh(e.cpu_j)} [{src.cpu}], GPU {fmt_wh(e.gpu_j)} "
        f"[{src.gpu}], "
        f"RAM {fmt_wh(e.ram_j)} [{src.ram}]; whole machine {fmt_wh(totals.machine_energy.total_j)}",
        f"  carbon  {carbon.carbon_g(e.total_j):.4g} g CO2eq at {carbon.intensity.g_per_kwh:.4g} g/kWh "
        f"({carbon.intensity.region or 'no region'}: {carbon.intensity.source}), PUE {carbon.pue:g}",
        f"  cpu time {totals.cpu_s:.1f} s; mean power {totals.power_mean_w:.1f} W",
        *(f"  {line}" for line in where),
    ]
    lines += [f"  warning ({k}): {v}" for k, v in totals.warnings.items()]
    return "\n".join(lines)
