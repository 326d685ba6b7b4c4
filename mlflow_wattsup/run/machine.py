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
    from mlflow_wattsup.meters.amdsmi import open_amdsmi
    from mlflow_wattsup.meters.hardware import cpu_info, total_memory_bytes
    from mlflow_wattsup.meters.nvml import open_nvml
    from mlflow_wattsup.meters.rapl import RaplUnavailable, open_rapl

    info = cpu_info()
    tags = {
        keys.VERSION: __version__,
        keys.CPU_MODEL: info.model,
        keys.CPU_LOGICAL: str(info.logical_cpus),
        keys.RAM_TOTAL_GB: f"{total_memory_bytes() / 2**30:.1f}",
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
        tags[keys.GPUS] = ", ".join(gpu.names)
        tags[keys.GPU_DRIVER] = gpu.driver_version
        gpu.close()
    elif (amd := open_amdsmi()) is not None:  # AMD GPUs are read only where no NVIDIA GPU is
        meters.append(amd.source)
        tags[keys.GPUS] = ", ".join(amd.names)
        amd.close()
    else:
        tags[keys.GPUS] = "none"
    tags[keys.METERS] = ",".join(meters) if meters else "none (energy will be estimated)"
    try:
        c = resolve_intensity()
        tags[keys.CONFIG_CARBON_INTENSITY] = f"{c.g_per_kwh:.6g}"
        tags[keys.CONFIG_REGION] = c.region or "none"
        tags[keys.CONFIG_PUE] = f"{resolve_pue()[0]:g}"
    except CarbonConfigError as exc:
        tags[keys.CONFIG_ERROR] = str(exc)
    return tags
