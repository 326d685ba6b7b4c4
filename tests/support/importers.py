"""Shared by several tests (moved out of test_importers.py so that no test module imports another)."""

import json
import pickle
import sys
import types
from datetime import datetime, timedelta, timezone
from pathlib import Path


def foreign_pickle(obj_factory):
    """Pickle an object whose class lives in a module that will not exist when loading."""
    mod = types.ModuleType("fakeshapely")

    class MultiPolygon:
        def __init__(self, coords):
            self.coords = coords

    MultiPolygon.__module__ = "fakeshapely"
    MultiPolygon.__qualname__ = "MultiPolygon"
    mod.MultiPolygon = MultiPolygon
    sys.modules["fakeshapely"] = mod
    try:
        return pickle.dumps(obj_factory(MultiPolygon), protocol=2)
    finally:
        del sys.modules["fakeshapely"]


def make_eit(
    folder: Path,
    offset_h: float = -4.0,
    powers=(10.0, 20.0, 30.0),
    gpu=False,
    stage_csv=True,
    truncate=False,
    shuffle=False,
):
    """An EIT folder: start at local naive 12:00:00, samples at +2, +5, +9 s, end at +12 s."""
    imp = folder / "impacttracker"
    imp.mkdir(parents=True)
    local_start = datetime(2021, 4, 2, 12, 0, 0)
    utc_start = local_start.replace(tzinfo=timezone.utc).timestamp() - offset_h * 3600
    times = [utc_start + d for d in (2.0, 5.0, 9.0)]
    lines = []
    for t, p in zip(times, powers, strict=False):
        d = {"timestamp": t, "rapl_estimated_attributable_power_draw": p, "rapl_power_draw_absolute": 2 * p}
        if gpu:
            d.update({"nvidia_estimated_attributable_power_draw": 100.0, "nvidia_draw_absolute": 150.0})
        lines.append(json.dumps(d))
    if shuffle:
        lines = [lines[2], lines[0], lines[1]]
    text = "\n".join(lines) + "\n"
    if truncate:
        text += '{"timestamp": 16173'  # cut mid-line, no newline
    (imp / "data.json").write_text(text)
    info = {
        "experiment_start": local_start,
        "experiment_end": local_start + timedelta(seconds=12),
        "cpu_info": {"brand_raw": "Intel(R) Xeon(R) Gold 6148 CPU @ 2.40GHz", "count": 40},
        "region_carbon_intensity_estimate": {"_source": "test table", "carbonIntensity": 30.0},
        "experiment_impact_tracker_version": "0.1.9",
    }
    if gpu:
        info["gpu_info"] = [{"name": "Tesla V100-SXM2-16GB"}]
    raw = foreign_pickle(lambda MP: {**info, "region": {"id": "CA-QC", "geometry": MP([1, 2, 3])}})
    (imp / "info.pkl").write_bytes(raw)
    if stage_csv:
        (folder / "stages.csv").write_text(
            f",task,start_time,duration,DP\n0,first,{utc_start},6.0,1\n1,second,{utc_start + 6},6.0,2\n"
        )
    return utc_start


def cc_csv(path, rows):
    head = (
        "timestamp,project_name,run_id,duration,emissions,emissions_rate,cpu_power,gpu_power,ram_power,"
        "cpu_energy,gpu_energy,ram_energy,energy_consumed,country_name,country_iso_code,region,codecarbon_version,"
        "cpu_model,gpu_model,tracking_mode,pue\n"
    )
    path.write_text(head + "".join(rows))
