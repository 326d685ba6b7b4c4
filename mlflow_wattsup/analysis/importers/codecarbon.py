"""CodeCarbon's ``emissions.csv``: one row per tracked run (or task).

Units there: ``duration`` s, ``*_energy`` and ``energy_consumed`` kWh, ``emissions`` kg CO2eq,
``timestamp`` the end (ISO 8601). CodeCarbon multiplies energies by its ``pue``; we store IT
energy (``energy / pue``) and keep the PUE, so ``carbon_g = energy_kwh x pue x intensity`` gives
back CodeCarbon's ``emissions``. The intensity is CodeCarbon's own: ``emissions / energy``.
"""

from __future__ import annotations

import csv
import hashlib
import io
from datetime import datetime, timezone
from pathlib import Path

from mlflow_wattsup.analysis.importers.eit import ImportedRun, _finite

REQUIRED = ("timestamp", "duration", "emissions", "energy_consumed")


class CodeCarbonError(ValueError):
    """An unusable file; ``str(exc)`` is one line naming it."""


def _epoch(ts: str) -> float | None:
    try:
        d = datetime.fromisoformat(ts.strip().replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    if d.tzinfo is None:
        d = d.replace(tzinfo=timezone.utc)  # CodeCarbon writes UTC
    return d.timestamp()


def read_csv(path: str | Path) -> tuple[list[ImportedRun], list[str]]:
    """(runs, notes about skipped rows). Raises :class:`CodeCarbonError` for an unusable file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CodeCarbonError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if b"\x00" in raw[:4096]:
        raise CodeCarbonError(f"{path}: binary data, not a CodeCarbon emissions.csv")
    text = raw.decode("utf-8-sig", errors="replace")
    try:
        reader = csv.DictReader(io.StringIO(text))
        header = reader.fieldnames or []
        rows = list(reader)
    except csv.Error as exc:
        raise CodeCarbonError(f"{path}: not a CSV file ({exc})") from None
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise CodeCarbonError(
            f"{path}: not a CodeCarbon emissions.csv (missing column(s) {', '.join(missing)})"
        )
    runs, notes = [], []
    for i, r in enumerate(rows, start=2):
        end = _epoch(r.get("timestamp") or "")
        dur, kg, kwh = (
            _finite(r.get("duration")),
            _finite(r.get("emissions")),
            _finite(r.get("energy_consumed")),
        )
        if end is None or dur is None or kg is None or kwh is None:
            notes.append(
                f"{path.name} line {i}: missing or invalid timestamp/duration/emissions/energy_consumed, "
                "skipped"
            )
            continue
        pue = _finite(r.get("pue")) or 1.0
        pue = pue if pue >= 1 else 1.0
        part = {k: (_finite(r.get(f"{k}_energy")) or 0.0) * 3.6e6 / pue for k in ("cpu", "gpu", "ram")}
        if not any(part.values()):
            part["cpu"] = kwh * 3.6e6 / pue  # no breakdown: count it as CPU, say so
            notes.append(f"{path.name} line {i}: no per-component energy; all counted as CPU")
        key_src = "|".join(
            str(r.get(k, "")) for k in ("run_id", "timestamp", "project_name", "duration", "emissions")
        )
        region = (r.get("region") or r.get("country_iso_code") or "").strip()
        run = ImportedRun(
            name=(r.get("project_name") or "codecarbon").strip() or "codecarbon",
            source=f"{path.resolve()}:{i}",
            key="cc-" + hashlib.sha256(key_src.encode()).hexdigest()[:32],
            start_epoch_s=end - dur,
            end_epoch_s=end,
            cpu_j=part["cpu"],
            gpu_j=part["gpu"],
            ram_j=part["ram"],
            machine_cpu_j=0.0,
            machine_gpu_j=0.0,
            series=[],
            stages=[],
            intensity_g_per_kwh=kg * 1000 / kwh if kwh > 0 else None,
            intensity_source=f"codecarbon {r.get('codecarbon_version', '?')} (emissions / energy_consumed)",
            region=region,
            tags={
                "cpu_model": (r.get("cpu_model") or "unknown").strip(),
                "gpus": (r.get("gpu_model") or "").strip() or "none",
                "import.tool": (
                    f"codecarbon {r.get('codecarbon_version', '?')} ({r.get('tracking_mode', '?')} mode)"
                ),
                "device": "gpu" if (_finite(r.get("gpu_energy")) or 0) > 0 else "cpu",
            },
            pue=pue,
            importer="import-codecarbon",
        )
        if r.get("task_name"):
            run.tags["codecarbon.task"] = r["task_name"]
        runs.append(run)
    return runs, notes
