"""The ``mlflow.run_context_provider`` plugin - hardware and configuration tags on every
run created by ``mlflow.start_run()``.

Tags: CPU model and logical CPUs, GPU models and driver, total RAM, which meters are readable here
(``wattsup.meters``), the configured region, intensity and PUE (``wattsup.config.*``, from the
``WATTSUP_*`` environment), and our version. Everything is detected once per process and cached:
a run costs a dict copy, no subprocess, no file read. ``WATTSUP_DISABLE_PLUGIN=1`` turns it off.

MLflow applies context providers only to runs made by ``mlflow.start_run()``, not to those
``mlflow run`` creates; the tracker sets the same tags itself on every run it attaches to.
"""

from __future__ import annotations

import functools
import os

from mlflow.tracking.context.abstract_context import RunContextProvider

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


class WattsupRunContextProvider(RunContextProvider):
    def in_context(self) -> bool:
        return os.environ.get("WATTSUP_DISABLE_PLUGIN", "").lower() not in ("1", "true", "yes")

    def tags(self) -> dict[str, str]:
        try:
            return dict(machine_tags())
        except Exception:  # never break someone's start_run
            return {}
