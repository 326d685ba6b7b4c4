"""Write runs read from other trackers' logs (see :mod:`.importers`) into MLflow, once.

Each imported run carries ``wattsup.import.key`` (a hash of the source data); importing the same
data again finds that run and creates nothing. Runs keep their real start and end times. An
imported run is a :class:`~.lifecycle.TrackedRun` like any other (created as the log says, not
from this process's context), so it is described and viewed like one.
"""

from __future__ import annotations

from mlflow_wattsup import __version__
from mlflow_wattsup.analysis.carbon import CarbonConfig, CarbonIntensity, world_average
from mlflow_wattsup.analysis.importers.eit import ImportedRun
from mlflow_wattsup.meters.units import Energy
from mlflow_wattsup.run.lifecycle import TrackedRun
from mlflow_wattsup.sink import keys
from mlflow_wattsup.sink.transport import Store
from mlflow_wattsup.tracking.tracker import stage_key


def find_imported(store: Store, experiment_id: str, key: str) -> str | None:
    runs = store.search_runs([experiment_id], f"tags.`{keys.IMPORT_KEY}` = '{key}'", max_results=1)
    return runs[0].info.run_id if runs else None


def write(
    run: ImportedRun,
    store: Store,
    experiment_id: str,
    pue: float | None = None,
    pipeline: str | None = None,
    device: str | None = None,
) -> tuple[str | None, bool]:
    """(run id, created): the run id is None when the store went away before the run could be
    created (its values are spooled). ``pue`` overrides the run's own (EIT logs have none:
    default 1.58)."""
    existing = find_imported(store, experiment_id, run.key)
    if existing:
        return existing, False
    p = pue if pue is not None else (run.pue if run.pue is not None else 1.0)
    if run.intensity_g_per_kwh is not None:
        intensity, i_source = run.intensity_g_per_kwh, run.intensity_source
    else:
        w = world_average()
        intensity, i_source = w.g_per_kwh, f"{w.source} (the log had none)"
    pue_source = "user" if pue is not None else ("log" if run.pue is not None else "default")
    carbon = CarbonConfig(CarbonIntensity(intensity, i_source, run.region or ""), p, pue_source)
    gpu_used = run.gpu_j > 0 or run.tags.get("device") == "gpu"
    tags = {
        **keys.fact_tags(run.tags),
        **keys.source_tags(
            run.importer, run.importer if gpu_used else "none", run.importer if run.ram_j > 0 else "none"
        ),
        **keys.carbon_tags(i_source, pue_source),
        **keys.import_tags(run.key, run.source, run.notes),
        "mlflow.source.name": run.source,
        "mlflow.source.type": "LOCAL",
        keys.VERSION: __version__,
    }
    if pipeline:
        tags[keys.PIPELINE] = pipeline
    if device:
        tags[keys.DEVICE] = device
    tracked = TrackedRun(
        store=store,
        create={
            "experiment_id": experiment_id,
            "run_name": run.name,
            "start_time": int(run.start_epoch_s * 1000),
        },
        flush_interval_s=0,
    )
    sink = tracked.sink
    end_ms = int(run.end_epoch_s * 1000)
    machine = Energy(run.machine_cpu_j, run.machine_gpu_j, run.machine_ram_j)
    metrics = keys.run_metrics(
        run.duration_s,
        Energy(run.cpu_j, run.gpu_j, run.ram_j),
        carbon,
        machine_energy=machine if machine.total_j > 0 else None,
    )
    if run.papi_dp_ops is not None:  # the tracking process's own DP ops, never the pipeline's FLOPs
        metrics[keys.PAPI_DP_OPS] = run.papi_dp_ops
    for st in run.stages:
        metrics.update(
            keys.stage_metrics(
                stage_key(st.name),
                st.start_s,
                st.end_s,
                st.end_s - st.start_s,
                Energy(st.cpu_j, st.gpu_j, 0.0),
                carbon,
            )
        )
        if st.dp_ops is not None:
            metrics[f"stage/{stage_key(st.name)}/{keys.PAPI_DP_OPS}"] = st.dp_ops
    sink.log_metrics(metrics, timestamp_ms=end_ms)
    last_step = -1
    for elapsed, cpu_w, gpu_w in run.series:
        step = int(round(elapsed))
        if step <= last_step:
            continue
        last_step = step
        sink.log_metrics(
            keys.power_metrics(cpu_w + gpu_w, cpu_w, gpu_w, None),
            step=step,
            timestamp_ms=int((run.start_epoch_s + elapsed) * 1000),
        )
    sink.log_params(keys.carbon_params(carbon))
    sink.set_tags(tags)
    tracked.finish("FINISHED", end_time_ms=end_ms)
    return tracked.run_id, True
