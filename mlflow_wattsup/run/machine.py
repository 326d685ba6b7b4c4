"""The tags that describe this machine and its carbon configuration: hardware, readable meters,
the ``WATTSUP_*`` settings. Detected once per process and cached. The run-context plugin
(:mod:`.plugin`) puts them on every fluent run, and every run we record gets them too
(:mod:`.recording`). Cheap to import: nothing is detected, and MLflow is not imported, until the
first call."""

from __future__ import annotations

import functools

from mlflow_wattsup.sink import keys


@functools.lru_cache(maxsize=1)
def machine_tags() -> dict[str, str]:
    """Hardware, meters and configuration of this machine and environment (cached)."""
    from mlflow_wattsup import __version__
    from mlflow_wattsup.analysis.carbon import CarbonConfigError, resolve_intensity, resolve_pue
    from mlflow_wattsup.meters.hardware import cpu_info, total_memory_bytes
    from mlflow_wattsup.meters.nvml import open_nvml
    from mlflow_wattsup.meters.rapl import RaplUnavailable, open_rapl

    info = cpu_info()
    tags = {
        keys.PREFIX + "version": __version__,
        keys.PREFIX + "cpu_model": info.model,
        keys.PREFIX + "cpu_logical": str(info.logical_cpus),
        keys.PREFIX + "ram_total_gb": f"{total_memory_bytes() / 2**30:.1f}",
    }
    meters = []
    try:
        open_rapl().close()
        meters.append("rapl")
    except (RaplUnavailable, OSError):
        pass
    gpu = open_nvml()
    if gpu is not None:
        meters.append(gpu.source)
        tags[keys.PREFIX + "gpus"] = ", ".join(gpu.names)
        tags[keys.PREFIX + "gpu_driver"] = gpu.driver_version
        gpu.close()
    else:
        tags[keys.PREFIX + "gpus"] = "none"
    tags[keys.PREFIX + "meters"] = ",".join(meters) if meters else "none (energy will be estimated)"
    try:
        c = resolve_intensity()
        tags[keys.PREFIX + "config.carbon_intensity_g_per_kwh"] = f"{c.g_per_kwh:.6g}"
        tags[keys.PREFIX + "config.region"] = c.region or "none"
        tags[keys.PREFIX + "config.pue"] = f"{resolve_pue()[0]:g}"
    except CarbonConfigError as exc:
        tags[keys.PREFIX + "config.error"] = str(exc)
    return tags
