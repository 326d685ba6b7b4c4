"""experiment-impact-tracker (EIT) log folders, read without EIT installed.

A folder holds ``impacttracker/data.json`` (JSON Lines, one sample every few seconds),
``impacttracker/info.pkl`` (a pickle: start/end as naive local datetimes, CPU/GPU info, region and
its carbon intensity) and, beside it, per-stage CSVs (``task,start_time,duration,DP``).

Energy is computed as EIT computes it: each sample's attributable power
(``rapl_estimated_attributable_power_draw``, plus ``nvidia_estimated_attributable_power_draw``
when ``gpu_info`` is present) times the time since the previous sample, the first interval
starting at ``experiment_start``, and the last sample's power held until ``experiment_end``.
Whole-machine energy likewise from ``rapl_power_draw_absolute`` (+ ``nvidia_draw_absolute``).

``info.pkl``'s datetimes are naive local time while samples carry epoch seconds: the UTC offset is
inferred from the data (start vs first sample, else end vs last sample, rounded to a quarter
hour), never from this machine's time zone. Truncated or malformed lines, non-finite or negative
powers are skipped and counted; what was skipped is reported.

The stage CSVs the seed's scripts wrote beside the log (``compute_costs_flop.csv``) carry a ``DP``
column: PAPI's ``PAPI_DP_OPS`` counter, read with pypapi's high-level ``start_counters`` /
``stop_counters`` around each stage in the Python process that ran the tracker. It counts
double-precision floating-point operations of that process's own thread only: not the child
processes that did the work (recon-all's programs, ``run_fastsurfer.sh``), not other threads, and
no single-precision work (FastSurfer's float32 network). It is imported as
``papi_dp_ops_tracking_process`` with a tag saying so, never as the pipeline's FLOPs. The ``MAC``
and ``params`` columns beside it were never filled (0) and are not imported.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from mlflow_wattsup.analysis.importers import safe_pickle

QUARTER_HOUR_S = 900.0
OFFSET_SLACK_S = 300.0  # how far from a quarter hour the start/sample gap may be
EIT_DEFAULT_PUE = 1.58


class EitError(ValueError):
    """A folder that cannot be imported; ``str(exc)`` is one line naming it."""


@dataclass
class Stage:
    name: str
    start_s: float  # seconds after the run's start
    end_s: float
    cpu_j: float = 0.0
    gpu_j: float = 0.0
    dp_ops: float | None = None  # PAPI_DP_OPS of the tracking process during the stage (see module doc)


@dataclass
class ImportedRun:
    """A run read from another tracker's log, ready to be written to MLflow."""

    name: str
    source: str  # folder or file
    key: str  # content hash: the same data imports once
    start_epoch_s: float
    end_epoch_s: float
    cpu_j: float
    gpu_j: float
    machine_cpu_j: float
    machine_gpu_j: float
    series: list[tuple[float, float, float]]  # (elapsed s, cpu W, gpu W)
    stages: list[Stage]
    intensity_g_per_kwh: float | None
    intensity_source: str
    region: str
    # facts about the run (cpu_model, device, ...), unprefixed: the MLflow layer gives them their keys
    tags: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    samples: int = 0
    skipped: int = 0
    ram_j: float = 0.0
    machine_ram_j: float = 0.0
    pue: float | None = None
    importer: str = "import-eit"
    papi_dp_ops: float | None = None  # sum of the stage CSV's DP column (see module doc)

    @property
    def duration_s(self) -> float:
        return self.end_epoch_s - self.start_epoch_s


def _finite(x) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v >= 0 else None


def read_samples(path: Path) -> tuple[list[dict], int]:
    """Sound samples (time-ordered, one per timestamp) and the number of lines skipped."""
    samples: dict[float, dict] = {}
    skipped = 0
    with open(path, "rb") as f:
        for raw in f:
            if not raw.strip():
                continue
            try:
                d = json.loads(raw)
            except ValueError:  # truncated or corrupt line (e.g. no final newline, cut short)
                skipped += 1
                continue
            t = _finite(d.get("timestamp")) if isinstance(d, dict) else None
            cpu = _finite(d.get("rapl_estimated_attributable_power_draw")) if isinstance(d, dict) else None
            if t is None or cpu is None:
                skipped += 1
                continue
            samples[t] = d
    return [samples[t] for t in sorted(samples)], skipped


def infer_offset_s(
    naive_start: datetime, naive_end: datetime | None, first_ts: float, last_ts: float
) -> float:
    """Seconds to add to a naive local time to get UTC, from where the samples sit."""
    candidates = [(naive_start.replace(tzinfo=timezone.utc).timestamp(), first_ts)]
    if naive_end is not None:
        candidates.append((naive_end.replace(tzinfo=timezone.utc).timestamp(), last_ts))
    for naive_as_utc, ts in candidates:
        gap = ts - naive_as_utc  # = offset + (sample - event), the latter small
        quarter = round(gap / QUARTER_HOUR_S) * QUARTER_HOUR_S
        if abs(gap - quarter) <= OFFSET_SLACK_S and abs(quarter) <= 14 * 3600:
            return quarter
    raise EitError(
        f"cannot match info.pkl's local start/end times to the samples' epoch times (first sample "
        f"{first_ts:.0f}, start {naive_start.isoformat()})"
    )


def _load_info(path: Path) -> dict:
    try:
        info = safe_pickle.load(path.read_bytes(), str(path))
    except safe_pickle.UnsafePickleError as exc:
        raise EitError(str(exc).splitlines()[0]) from None
    if not isinstance(info, dict) or not isinstance(info.get("experiment_start"), datetime):
        raise EitError(f"{path}: not an experiment-impact-tracker info.pkl (no experiment_start)")
    return info


def _integrate(
    samples: list[dict], start: float, end: float, keys: tuple[str, ...]
) -> tuple[float, list[float]]:
    """EIT's rule: p_i x (t_i - t_{i-1}) from the start, last power held to the end."""
    total = 0.0
    per = []
    prev = start
    for d in samples:
        t = float(d["timestamp"])
        p = sum(_finite(d.get(k)) or 0.0 for k in keys)
        e = p * max(0.0, t - prev)
        per.append(e)
        total += e
        prev = t
    if samples:
        p_last = sum(_finite(samples[-1].get(k)) or 0.0 for k in keys)
        tail = p_last * max(0.0, end - prev)
        per[-1] += tail
        total += tail
    return total, per


def _stage_csvs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.csv") if p.is_file())


def _dp(value) -> float | None:
    """A DP cell: ``748428232``, or ``[779]`` as one of the seed's files wrote it."""
    text = str(value or "").strip().strip("[]").strip()
    return _finite(text) if text else None


def _read_stage_csv(
    path: Path,
) -> tuple[list[tuple[str, float, float, float | None]] | None, str | None]:
    """(task, start epoch, duration, DP or None) rows, or (None, why not)."""
    try:
        with open(path, newline="", errors="replace") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error) as exc:
        return None, f"{path.name}: unreadable ({exc})"
    if not rows or "task" not in rows[0]:
        return None, f"{path.name}: no 'task' column"
    if "start_time" not in rows[0] or "duration" not in rows[0]:
        dp = "; its DP column cannot be tied to this run either (not imported)" if "DP" in rows[0] else ""
        return None, f"{path.name}: no start_time/duration columns (stages cannot be placed in time){dp}"
    out = []
    for r in rows:
        t, d = _finite(r.get("start_time")), _finite(r.get("duration"))
        if t is None or d is None or not r.get("task"):
            continue
        out.append((r["task"].strip(), t, d, _dp(r.get("DP"))))
    if not out:
        return None, f"{path.name}: no row with a task, start_time and duration"
    return out, None


_V1_VIEW = re.compile(r"(Axial|Coronal|Sagittal) View Tested in ([\d.]+) seconds")
_V1_TOTAL = re.compile(r"Total processing time: ([\d.]+) seconds")


def _stages_from_v1_log(folder: Path, end: float) -> tuple[list[tuple[str, float, float]], str] | None:
    """FastSurfer 1.x eval.py logs give each view's duration but no clock times: place the views
    back to back from ``end - total processing time`` (model loading gaps are not known)."""
    for log in sorted(folder.glob("*.log")):
        text = log.read_text(errors="replace")
        views = _V1_VIEW.findall(text)
        total = _V1_TOTAL.search(text)
        if views and total:
            t = end - float(total.group(1))
            out = []
            for name, secs in views:
                out.append((name.lower(), t, float(secs), None))
                t += float(secs)
            return out, f"{log.name} (view durations, placed back to back from end - total processing time)"
    return None


def _content_key(info_path: Path, data_path: Path | None) -> str:
    h = hashlib.sha256(info_path.read_bytes())
    if data_path is not None:
        with open(data_path, "rb") as f:
            h.update(f.read(1 << 20))
        h.update(str(data_path.stat().st_size).encode())
    return "eit-" + h.hexdigest()[:32]


def guess_pipeline(name: str) -> str:
    low = name.lower()
    if "fastsurfer" in low:
        return "fastsurfer"
    if "freesurfer" in low or "recon" in low:
        return "freesurfer"
    return "unknown"


def read_folder(folder: str | Path) -> ImportedRun:
    """Read one EIT run folder (the one holding ``impacttracker/``). Raises :class:`EitError`."""
    folder = Path(folder)
    base = folder / "impacttracker" if (folder / "impacttracker").is_dir() else folder
    info_path, data_path = base / "info.pkl", base / "data.json"
    if not info_path.is_file():
        raise EitError(f"{folder}: no impacttracker/info.pkl: not an experiment-impact-tracker log folder")
    if not data_path.is_file():
        raise EitError(
            f"{folder}: impacttracker/data.json is missing, so there are no power samples to import"
        )
    info = _load_info(info_path)
    samples, skipped = read_samples(data_path)
    if not samples:
        raise EitError(f"{folder}: data.json has no readable sample ({skipped} line(s) skipped)")
    naive_start = info["experiment_start"]
    naive_end = info.get("experiment_end") if isinstance(info.get("experiment_end"), datetime) else None
    first, last = float(samples[0]["timestamp"]), float(samples[-1]["timestamp"])
    offset = infer_offset_s(naive_start, naive_end, first, last)
    start = naive_start.replace(tzinfo=timezone.utc).timestamp() + offset
    end = naive_end.replace(tzinfo=timezone.utc).timestamp() + offset if naive_end else last
    notes = []
    if naive_end is None:
        notes.append("info.pkl has no experiment_end: the run ends at the last sample")
    if end < start:
        raise EitError(
            f"{folder}: info.pkl's experiment_end ({naive_end}) is before experiment_start ({naive_start})"
        )
    samples = [d for d in samples if start - 60 <= float(d["timestamp"]) <= end + 60]
    gpu = bool(info.get("gpu_info"))
    cpu_keys = ("rapl_estimated_attributable_power_draw",)
    gpu_keys = ("nvidia_estimated_attributable_power_draw",)
    cpu_j, cpu_per = _integrate(samples, start, end, cpu_keys)
    gpu_j, gpu_per = _integrate(samples, start, end, gpu_keys) if gpu else (0.0, [0.0] * len(samples))
    m_cpu, _ = _integrate(samples, start, end, ("rapl_power_draw_absolute",))
    m_gpu, _ = _integrate(samples, start, end, ("nvidia_draw_absolute",)) if gpu else (0.0, [])
    series = []
    for d in samples:
        cpu_w = _finite(d.get(cpu_keys[0])) or 0.0
        gpu_w = (_finite(d.get(gpu_keys[0])) or 0.0) if gpu else 0.0
        series.append((float(d["timestamp"]) - start, cpu_w, gpu_w))

    # stages: CSVs whose windows fall in this run; else a FastSurfer 1.x log
    stage_rows: list[tuple[str, float, float, float | None]] = []
    stage_source = ""
    for path in _stage_csvs(folder):
        rows, why = _read_stage_csv(path)
        if rows is None:
            notes.append(f"stages: {why}")
            continue
        inside = [r for r in rows if start - 60 <= r[1] <= end + 60]
        if len(inside) < max(1, len(rows) // 2):
            span = datetime.fromtimestamp(rows[0][1], timezone.utc).isoformat(timespec="seconds")
            notes.append(
                f"stages: {path.name} is from another run (starts {span}, outside this run), skipped"
            )
        elif stage_rows:
            notes.append(f"stages: {path.name} also matches this run; {stage_source} was used")
        else:
            stage_rows, stage_source = rows, path.name
    if not stage_rows:
        v1 = _stages_from_v1_log(folder, end)
        if v1:
            stage_rows, stage_source = v1
    stages = []
    times = [float(d["timestamp"]) for d in samples]
    for name, t0, dur, dp in stage_rows:
        st = Stage(name, t0 - start, t0 + dur - start, dp_ops=dp)
        for t, ec, eg in zip(times, cpu_per, gpu_per, strict=False):
            if t0 <= t < t0 + dur:  # a sample belongs to the stage whose window holds it
                st.cpu_j += ec
                st.gpu_j += eg
        stages.append(st)
    if skipped:
        notes.append(f"data.json: {skipped} unreadable line(s) skipped")

    ci = info.get("region_carbon_intensity_estimate") or {}
    region = info.get("region") if isinstance(info.get("region"), dict) else {}
    cpu_info = info.get("cpu_info") if isinstance(info.get("cpu_info"), dict) else {}
    gpus = [g.get("name", "?") for g in info.get("gpu_info") or [] if isinstance(g, dict)]
    tags = {
        "cpu_model": str(cpu_info.get("brand_raw", "unknown")),
        "cpu_logical": str(cpu_info.get("count", "")),
        "gpus": ", ".join(gpus) if gpus else "none",
        "pipeline": guess_pipeline(folder.name),
        "device": "gpu" if gpu else "cpu",
        "import.tool": f"experiment-impact-tracker {info.get('experiment_impact_tracker_version', '?')}",
    }
    if stage_source:
        tags["stages_source"] = stage_source
    papi_dp_ops = None
    if stage_rows and all(r[3] is not None for r in stage_rows):
        papi_dp_ops = sum(r[3] for r in stage_rows)
        tags["papi_dp_ops"] = (
            f"PAPI_DP_OPS from {stage_source} (column DP): double-precision operations counted in the "
            "tracking Python process's own thread only, not its child processes nor other threads; "
            "not the pipeline's FLOPs"
        )
    elif stage_rows and any(r[3] is not None for r in stage_rows):
        notes.append(f"stages: {stage_source} has DP values for some stages only: DP not imported")
    notes += _unfilled_columns(folder / stage_source) if stage_source.endswith(".csv") else []
    return ImportedRun(
        name=folder.name,
        source=str(folder.resolve()),
        key=_content_key(info_path, data_path),
        start_epoch_s=start,
        end_epoch_s=end,
        cpu_j=cpu_j,
        gpu_j=gpu_j,
        machine_cpu_j=m_cpu,
        machine_gpu_j=m_gpu,
        series=series,
        stages=stages,
        intensity_g_per_kwh=_finite(ci.get("carbonIntensity")),
        intensity_source=f"experiment-impact-tracker info.pkl: {ci.get('_source', 'unknown source')}",
        region=str(region.get("id") or (region.get("properties") or {}).get("zoneName") or ""),
        tags=tags,
        notes=notes,
        samples=len(samples),
        skipped=skipped,
        papi_dp_ops=papi_dp_ops,
    )


def _unfilled_columns(path: Path) -> list[str]:
    """A note for the seed's MAC/params columns, which hold zeros (never counted)."""
    try:
        with open(path, newline="", errors="replace") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error):
        return []
    cols = [c for c in ("MAC", "params") if rows and c in rows[0]]
    if not cols:
        return []
    zero = all(_finite(r.get(c)) == 0 for r in rows for c in cols)
    why = (
        "all 0 (never counted by the script that wrote them)" if zero else "their input size is not recorded"
    )
    return [f"stages: {path.name}'s {'/'.join(cols)} columns not imported: {why}"]
