"""Layer 4: write runs read from other trackers' logs (see :mod:`.importers`) into MLflow, once.

Each imported run carries ``wattsup.import.key`` (a hash of the source data); importing the same
data again finds that run and creates nothing. Runs keep their real start and end times.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from mlflow_wattsup.analysis.carbon import carbon_g, world_average
from mlflow_wattsup.analysis.importers.eit import ImportedRun
from mlflow_wattsup.mlflow_layer.sink import MlflowSink
from mlflow_wattsup.tracking.tracker import J_PER_KWH, stage_key


def find_imported(client: MlflowClient, experiment_id: str, key: str) -> str | None:
    runs = client.search_runs([experiment_id], f"tags.`wattsup.import.key` = '{key}'", max_results=1)
    return runs[0].info.run_id if runs else None


def write(
    run: ImportedRun,
    client: MlflowClient,
    experiment_id: str,
    pue: float | None = None,
    pipeline: str | None = None,
    device: str | None = None,
) -> tuple[str, bool]:
    """(run id, created). ``pue`` overrides the run's own (EIT logs have none: default 1.58)."""
    existing = find_imported(client, experiment_id, run.key)
    if existing:
        return existing, False
    p = pue if pue is not None else (run.pue if run.pue is not None else 1.0)
    if run.intensity_g_per_kwh is not None:
        intensity, i_source = run.intensity_g_per_kwh, run.intensity_source
    else:
        w = world_average()
        intensity, i_source = w.g_per_kwh, f"{w.source} (the log had none)"
    tags = {
        **run.tags,
        "wattsup.source.cpu": run.importer,
        "wattsup.source.gpu": run.importer
        if run.gpu_j > 0 or run.tags.get("wattsup.device") == "gpu"
        else "none",
        "wattsup.source.ram": run.importer if run.ram_j > 0 else "none",
        "wattsup.source.carbon_intensity": i_source,
        "wattsup.source.pue": "user" if pue is not None else ("log" if run.pue is not None else "default"),
        "wattsup.import.key": run.key,
        "wattsup.import.source": run.source,
        "mlflow.source.name": run.source,
        "mlflow.source.type": "LOCAL",
    }
    if pipeline:
        tags["wattsup.pipeline"] = pipeline
    if device:
        tags["wattsup.device"] = device
    if run.notes:
        tags["wattsup.import.notes"] = "; ".join(run.notes)
    from mlflow_wattsup import __version__

    tags["wattsup.version"] = __version__
    run_id = client.create_run(
        experiment_id, start_time=int(run.start_epoch_s * 1000), run_name=run.name
    ).info.run_id
    sink = MlflowSink(run_id, client, flush_interval_s=0)
    end_ms = int(run.end_epoch_s * 1000)
    total_j = run.cpu_j + run.gpu_j + run.ram_j
    machine_j = run.machine_cpu_j + run.machine_gpu_j + run.machine_ram_j
    metrics = {
        "duration_s": run.duration_s,
        "energy_kwh": total_j / J_PER_KWH,
        "energy_cpu_kwh": run.cpu_j / J_PER_KWH,
        "energy_gpu_kwh": run.gpu_j / J_PER_KWH,
        "energy_ram_kwh": run.ram_j / J_PER_KWH,
        "carbon_g": carbon_g(total_j / J_PER_KWH, intensity, p),
        "power_mean_w": total_j / run.duration_s if run.duration_s > 0 else 0.0,
    }
    if run.papi_dp_ops is not None:  # the tracking process's own DP ops, never the pipeline's FLOPs
        metrics["papi_dp_ops_tracking_process"] = run.papi_dp_ops
    if machine_j > 0:
        metrics.update(
            {
                "machine_energy_kwh": machine_j / J_PER_KWH,
                "machine_energy_cpu_kwh": run.machine_cpu_j / J_PER_KWH,
                "machine_energy_gpu_kwh": run.machine_gpu_j / J_PER_KWH,
                "machine_energy_ram_kwh": run.machine_ram_j / J_PER_KWH,
            }
        )
    for st in run.stages:
        pfx = f"stage/{stage_key(st.name)}/"
        e = st.cpu_j + st.gpu_j
        metrics.update(
            {
                pfx + "start_s": st.start_s,
                pfx + "end_s": st.end_s,
                pfx + "duration_s": st.end_s - st.start_s,
                pfx + "energy_kwh": e / J_PER_KWH,
                pfx + "energy_cpu_kwh": st.cpu_j / J_PER_KWH,
                pfx + "energy_gpu_kwh": st.gpu_j / J_PER_KWH,
                pfx + "energy_ram_kwh": 0.0,
                pfx + "carbon_g": carbon_g(e / J_PER_KWH, intensity, p),
            }
        )
        if st.dp_ops is not None:
            metrics[f"stage/{stage_key(st.name)}/papi_dp_ops_tracking_process"] = st.dp_ops
    sink.log_metrics(metrics, timestamp_ms=end_ms)
    last_step = -1
    for elapsed, cpu_w, gpu_w in run.series:
        step = int(round(elapsed))
        if step <= last_step:
            continue
        last_step = step
        sink.log_metrics(
            {"power_w": cpu_w + gpu_w, "power_cpu_w": cpu_w, "power_gpu_w": gpu_w},
            step=step,
            timestamp_ms=int((run.start_epoch_s + elapsed) * 1000),
        )
    sink.log_params(
        {
            "wattsup.pue": f"{p:g}",
            "wattsup.carbon_intensity_g_per_kwh": f"{intensity:.6g}",
            "wattsup.region": run.region or "none",
        }
    )
    sink.set_tags(tags)
    sink.terminate("FINISHED", end_ms)
    sink.close()
    return run_id, True
