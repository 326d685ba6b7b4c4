"""Layer 4: one tracked MLflow run - which run, what to log, and the key names (the contract in
``docs/metrics.md``). Used by :func:`mlflow_wattsup.track` and ``wattsup run``."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mlflow.tracking import MlflowClient

from mlflow_wattsup.analysis.carbon import CarbonIntensity, carbon_g, resolve_intensity, resolve_pue
from mlflow_wattsup.meters.estimator import cpu_power_model
from mlflow_wattsup.mlflow_layer.sink import MlflowSink
from mlflow_wattsup.tracking.tracker import J_PER_KWH, Energy, StageResult, Totals, Tracker

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"  # opens the MLflow 3 UI in the training view
#: set in the environment of a command run by ``wattsup run``: the run it is logged to
RUN_ENV = "WATTSUP_RUN_ID"


@dataclass
class CarbonConfig:
    intensity: CarbonIntensity
    pue: float
    pue_source: str

    @classmethod
    def resolve(
        cls, carbon_intensity: Any = None, region: str | None = None, pue: Any = None
    ) -> CarbonConfig:
        value, source = resolve_pue(pue)
        return cls(resolve_intensity(carbon_intensity, region), value, source)

    def params(self) -> dict[str, str]:
        return {
            "wattsup.pue": f"{self.pue:g}",
            "wattsup.carbon_intensity_g_per_kwh": f"{self.intensity.g_per_kwh:.6g}",
            "wattsup.region": self.intensity.region or "none",
        }

    def tags(self) -> dict[str, str]:
        return {
            "wattsup.source.carbon_intensity": self.intensity.source,
            "wattsup.source.pue": self.pue_source,
        }

    def carbon_g(self, energy_j: float) -> float:
        return carbon_g(energy_j / J_PER_KWH, self.intensity.g_per_kwh, self.pue)


def energy_metrics(e: Energy, prefix: str = "energy") -> dict[str, float]:
    return {
        f"{prefix}_kwh": e.total_j / J_PER_KWH,
        f"{prefix}_cpu_kwh": e.cpu_j / J_PER_KWH,
        f"{prefix}_gpu_kwh": e.gpu_j / J_PER_KWH,
        f"{prefix}_ram_kwh": e.ram_j / J_PER_KWH,
    }


def summary_metrics(t: Totals, carbon: CarbonConfig) -> dict[str, float]:
    """The run-level metrics of ``docs/metrics.md``."""
    out = {"duration_s": t.duration_s, **energy_metrics(t.energy)}
    out.update(energy_metrics(t.machine_energy, "machine_energy"))
    out.update(
        {
            "carbon_g": carbon.carbon_g(t.energy.total_j),
            "power_mean_w": t.power_mean_w,
            "cpu_time_s": t.cpu_s,
        }
    )
    return out


def stage_metrics(stages: list[StageResult], carbon: CarbonConfig) -> dict[str, float]:
    out: dict[str, float] = {}
    for s in stages:
        p = f"stage/{s.name}/"
        out[p + "start_s"] = s.start_s
        out[p + "end_s"] = s.end_s
        out[p + "duration_s"] = s.duration_s
        out[p + "energy_kwh"] = s.energy.total_j / J_PER_KWH
        out[p + "energy_cpu_kwh"] = s.energy.cpu_j / J_PER_KWH
        out[p + "energy_gpu_kwh"] = s.energy.gpu_j / J_PER_KWH
        out[p + "energy_ram_kwh"] = s.energy.ram_j / J_PER_KWH
        out[p + "carbon_g"] = carbon.carbon_g(s.energy.total_j)
        out[p + "cpu_time_s"] = s.cpu_s
    return out


def source_tags(t: Tracker | Totals) -> dict[str, str]:
    s = t.sources
    tags = {
        "wattsup.source.cpu": s.cpu,
        "wattsup.source.gpu": s.gpu,
        "wattsup.source.ram": s.ram,
    }
    if s.gpu != "none":
        tags["wattsup.gpu_attribution"] = s.attribution_gpu
    return tags


def ensure_experiment(client: MlflowClient, name: str | None = None, experiment_id: str | None = None) -> str:
    """Experiment id for ``experiment_id``, else ``name`` (created if missing), else
    ``$MLFLOW_EXPERIMENT_ID`` / ``$MLFLOW_EXPERIMENT_NAME``, else the Default experiment."""
    experiment_id = experiment_id or (None if name else os.environ.get("MLFLOW_EXPERIMENT_ID"))
    if experiment_id:
        return str(experiment_id)
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
        except Exception as exc:
            # another job created it between our lookup and our create (8 jobs starting at once)
            if "already exists" not in str(exc) and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                raise
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if EXPERIMENT_KIND_TAG not in exp.tags:
        client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return exp.experiment_id


def create_run(
    client: MlflowClient, experiment_id: str, run_name: str | None, tags: Mapping[str, str] | None = None
) -> str:
    base = {
        "mlflow.user": _user(),
        "mlflow.source.type": "LOCAL",
        "mlflow.source.name": sys.argv[0] or "python",
    }
    base.update(tags or {})
    return client.create_run(experiment_id, run_name=run_name, tags=base).info.run_id


def resolve_run(
    client: MlflowClient,
    run_id: str | None = None,
    experiment: str | None = None,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> tuple[str | None, bool, dict | None]:
    """(run id, created by us, deferred creation): ``run_id``, else ``$MLFLOW_RUN_ID`` (the run
    ``mlflow run`` made), else a new run in ``experiment``.

    When the tracking store cannot be reached, nothing is raised: an existing run id is trusted,
    and a new run comes back as ``(None, True, create)`` for :class:`~.sink.MlflowSink` to create
    once the store answers. An unknown run id raises ValueError (one line).
    """
    from mlflow_wattsup.mlflow_layer.sink import unreachable

    run_id = run_id or os.environ.get("MLFLOW_RUN_ID")
    try:
        if run_id is None:
            return create_run(client, ensure_experiment(client, experiment), run_name, tags), True, None
        client.get_run(run_id)
        return run_id, False, None
    except Exception as exc:
        if not unreachable(exc):
            if run_id is not None:
                raise ValueError(
                    f"run {run_id} not found at {client.tracking_uri} ({type(exc).__name__})"
                ) from None
            raise
        print(
            f"wattsup: tracking store {client.tracking_uri} unreachable ({type(exc).__name__}); measuring anyway: "
            "results are spooled and written when it answers",
            file=sys.stderr,
        )
        if run_id is not None:
            return run_id, False, None
        base = {
            "mlflow.user": _user(),
            "mlflow.source.type": "LOCAL",
            "mlflow.source.name": sys.argv[0] or "python",
        }
        base.update(tags or {})
        exp_id = None if experiment else os.environ.get("MLFLOW_EXPERIMENT_ID")
        create = {
            "experiment_name": experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default",
            "experiment_id": exp_id,
            "run_name": run_name,
            "tags": base,
        }
        return None, True, create


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "unknown"


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

    def start(self) -> Recording:
        if self.as_stage is None:
            t = self.tracker
            params = {**self.carbon.params(), "wattsup.interval_s": f"{t.interval_s:g}"}
            if t.sources.cpu.endswith("estimate") or t.sources.ram.endswith("estimate"):
                params.update(t.cpu_model.params())
                params.update(t.ram_model.params())
            self.sink.log_params(params)
            from mlflow_wattsup.mlflow_layer.plugin import (
                machine_tags,
            )  # hardware tags, as the run-context plugin gives fluent runs

            self.sink.set_tags(
                {
                    **machine_tags(),  # wattsup.version included
                    **source_tags(t),
                    **self.carbon.tags(),
                    **self.tags,
                }
            )
            t.add_callback(self.sink.log_sample)
        self.tracker.start()
        return self

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
            tags = source_tags(totals)
            tags.update({f"wattsup.warning.{k}": v for k, v in totals.warnings.items()})
            self.sink.set_tags(tags)
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


def make_tracker(
    *,
    tree=None,
    interval_s: float = 1.0,
    cpu_tdp_w: float | None = None,
    cpu_w_per_thread: float | None = None,
    powercap_root: str | None = None,
    nvml: Any = None,
) -> Tracker:
    return Tracker(
        tree,
        interval_s=interval_s,
        powercap_root=powercap_root,
        nvml=nvml,
        cpu_model=cpu_power_model(cpu_w_per_thread=cpu_w_per_thread, cpu_tdp_w=cpu_tdp_w),
    )


def fmt_duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def summary_text(run_id: str, uri: str, totals, carbon, exit_code: int, status: str) -> str:
    e = totals.energy
    src = totals.sources
    wh = lambda j: f"{j / 3600:.4g} Wh"  # noqa: E731
    lines = [
        f"wattsup: {status} in {fmt_duration(totals.duration_s)} ({totals.duration_s:.1f} s), exit code {exit_code}",
        f"  energy  {wh(e.total_j)}: CPU {wh(e.cpu_j)} [{src.cpu}], GPU {wh(e.gpu_j)} [{src.gpu}], "
        f"RAM {wh(e.ram_j)} [{src.ram}]; whole machine {wh(totals.machine_energy.total_j)}",
        f"  carbon  {carbon.carbon_g(e.total_j):.4g} g CO2eq at {carbon.intensity.g_per_kwh:.4g} g/kWh "
        f"({carbon.intensity.region or 'no region'}: {carbon.intensity.source}), PUE {carbon.pue:g}",
        f"  cpu time {totals.cpu_s:.1f} s; mean power {totals.power_mean_w:.1f} W",
        f"  run {run_id} at {uri}",
    ]
    lines += [f"  warning ({k}): {v}" for k, v in totals.warnings.items()]
    return "\n".join(lines)
