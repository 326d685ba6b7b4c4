"""What a user reads first on a run's Overview page in the MLflow UI: its description.

- :func:`describe_run` writes the run's description (MLflow's ``mlflow.note.content`` tag,
  markdown) from what the run logged: energy, carbon and mean power with how each was obtained
  (measured, estimated, imported), the carbon intensity and PUE, runtime, Dice, params/FLOPs,
  the biggest stages, warnings. The first line sums it up: the UI shows about four lines before
  "Show more".
- :func:`describe_parent` writes a parent run's description: the comparison table of its child
  runs (grouped as ``wattsup report`` groups them), links to each and to MLflow's compare view.
- A description someone wrote or edited is never overwritten. Ours ends with a hidden marker,
  ``<!-- wattsup:auto <digest> -->`` (MLflow's renderer drops HTML comments), where the digest
  is over the text before it: a note without the marker, or whose text no longer matches it, is
  the user's and is left alone. Ours is rewritten freely (e.g. once more metrics are in).
- :func:`log_report`: the comparison table as ``wattsup/report.md`` and ``wattsup/report.html``
  (a standalone page that MLflow's artifact viewer renders).

Reads and writes go through an ``MlflowClient``.
"""

from __future__ import annotations

import hashlib
import html
import math
import re
import sys
from collections.abc import Mapping, Sequence

from mlflow_wattsup.report.links import compare_fragment, run_fragment
from mlflow_wattsup.report.render import footnotes, to_html, to_markdown
from mlflow_wattsup.sink import keys

NOTE_TAG = "mlflow.note.content"
PARENT_TAG = "mlflow.parentRunId"
MARKER = re.compile(r"\n?<!-- wattsup:auto ([0-9a-f]{16}) -->\s*$")
#: MLflow refuses tag values over 8000 characters; leave room for multi-byte characters
NOTE_MAX_CHARS = 7000
#: child runs linked by name in a parent's description (the table covers all of them)
MAX_LINKS = 20


# -- numbers in words ----------------------------------------------------------------------------


def fmt(x: float | None) -> str:
    """3 significant digits; an exponent only below 0.001; thousands separated."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x == 0:
        return "0"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.3g}" if abs(x) >= 0.001 else f"{x:.2e}"


def fmt_big(x: float) -> str:
    """Counts with k/M/G/T/P (``88.1 k`` params, ``68.7 G`` FLOPs)."""
    for div, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g} {suffix}"
    return f"{x:.3g}"


def fmt_energy_kwh(kwh: float) -> str:
    """kWh in Wh below 1 kWh (most runs are Wh or less)."""
    return f"{fmt(kwh)} kWh" if abs(kwh) >= 1 else f"{fmt(kwh * 1000)} Wh"


def fmt_seconds(s: float) -> str:
    if s < 120:
        return f"{fmt(s)} s"
    s = int(round(s))
    h, m, sec = s // 3600, s % 3600 // 60, s % 60
    return f"{h} h {m:02d} min" if h else f"{m} min {sec:02d} s"


def source_words(source: str | None) -> str:
    """A ``wattsup.source.*`` value in words; an estimate always says so."""
    s = source or ""
    if s.startswith("import"):
        return f"imported ({s.split('-', 1)[1]})" if "-" in s else "imported"
    if s.endswith("+" + keys.GPU_UNMEASURED):  # a GPU that could not be measured for part of the run
        return source_words(s.rsplit("+", 1)[0]) + ", partly **not measured** (see the warning)"
    return {
        "rapl": "measured (RAPL counters)",
        "rapl+estimate": "measured (RAPL), then **estimated** after a meter failure",
        "estimate": "**estimated**",
        "nvml-energy": "measured (NVML energy counter)",
        "nvml-power": "measured (NVML power samples, integrated)",
        "amdsmi-energy": "measured (amdsmi energy counter)",
        "amdsmi-power": "measured (amdsmi power samples, integrated)",
        keys.GPU_UNMEASURED: "**not measured** (no energy counter or power reading; see the warning)",
        "": "source not recorded",
    }.get(s, s)


def basis(tags: Mapping[str, str]) -> str:
    """``measured``, ``estimated``, ``partly estimated`` or ``imported``, as the report says."""
    from mlflow_wattsup.report import RunRow

    return RunRow("", {}, dict(tags), {}).basis


def _md(text: object) -> str:
    """Text safe inside a markdown table cell or list item."""
    return str(text).replace("|", "\\|").replace("\n", " ").replace("<", "&lt;")


# -- one run --------------------------------------------------------------------------------------


def _estimate_detail(params: Mapping[str, str], part: str) -> str:
    if part == "cpu" and keys.ESTIMATE_CPU_W_PER_THREAD in params:
        w = params[keys.ESTIMATE_CPU_W_PER_THREAD]
        src = params.get(keys.ESTIMATE_CPU_BASIS, "")
        tdp = params.get(keys.ESTIMATE_CPU_TDP_W)
        why = f"TDP {tdp} W, {src}" if tdp else src
        return f"{w} W per busy logical CPU x CPU time" + (f", {why}" if why else "")
    if part == "ram" and keys.ESTIMATE_RAM_W_PER_GB in params:
        return f"{params[keys.ESTIMATE_RAM_W_PER_GB]} W per GB resident x time"
    return ""


def _energy_line(m: Mapping[str, float], p: Mapping[str, str], t: Mapping[str, str]) -> str:
    split = [
        f"{label} {fmt_energy_kwh(m[k])}"
        for label, k in (("CPU", "energy_cpu_kwh"), ("GPU", "energy_gpu_kwh"), ("RAM", "energy_ram_kwh"))
        if k in m
    ]
    line = f"**Energy** {fmt_energy_kwh(m['energy_kwh'])}" + (f" ({', '.join(split)})" if split else "")
    how = []
    for part, label in (("cpu", "CPU"), ("gpu", "GPU"), ("ram", "RAM")):
        src = t.get(keys.SOURCE_PREFIX + part)
        if src is None or (part == "gpu" and src == "none"):
            continue
        words = source_words(src)
        detail = _estimate_detail(p, part) if "estimate" in src else ""
        how.append(f"{label} {words}" + (f" ({detail})" if detail else ""))
    if t.get(keys.SOURCE_GPU) == "none":
        how.append("no GPU")
    if t.get(keys.IMPORT_TOOL):
        how.append(f"as logged by {_md(t[keys.IMPORT_TOOL])}")
    if how:
        line += ": " + "; ".join(how)
    if "machine_energy_kwh" in m:
        line += f". Whole machine over the same time: {fmt_energy_kwh(m['machine_energy_kwh'])}"
    if keys.SOURCE_SLURM in t:  # SLURM's own accounting, beside ours (issue 22)
        slurm = (
            t.get(keys.SLURM_ALLOCATION, "") if keys.SLURM_ENERGY_KWH in m else t.get(keys.SLURM_ENERGY, "")
        )
        got = fmt_energy_kwh(m[keys.SLURM_ENERGY_KWH]) if keys.SLURM_ENERGY_KWH in m else "not collected"
        line += f". SLURM's accounting: {got} ({_md(slurm)})"
    return line + "."


def _carbon_line(m: Mapping[str, float], p: Mapping[str, str], t: Mapping[str, str]) -> str:
    line = f"**Carbon** {fmt(m['carbon_g'])} g CO2eq"
    intensity = p.get(keys.CARBON_INTENSITY)
    if intensity is None:
        return line + " (intensity not recorded)."
    region = p.get(keys.REGION, "none")
    where = "no region given" if region in ("", "none") else f"region {_md(region)}"
    src = t.get(keys.SOURCE_CARBON_INTENSITY)
    pue_src = t.get(keys.SOURCE_PUE)
    return (
        f"{line} = energy x PUE {p.get(keys.PUE, '1')}"
        + (f" ({_md(pue_src)})" if pue_src else "")
        + f" x {intensity} g CO2eq/kWh ({where}"
        + (f"; {_md(src)}" if src else "")
        + ")."
    )


def _stages(m: Mapping[str, float], top: int = 3) -> list[tuple[str, float, float | None]]:
    """(name, energy kWh, duration s) of the ``top`` stages by energy."""
    names = {
        k[len("stage/") : -len("/energy_kwh")]
        for k in m
        if k.startswith("stage/") and k.endswith("/energy_kwh")
    }
    rows = [(n, m[f"stage/{n}/energy_kwh"], m.get(f"stage/{n}/duration_s")) for n in names]
    return sorted(rows, key=lambda r: (-r[1], r[0]))[:top]


def _model_line(m: Mapping[str, float], t: Mapping[str, str]) -> str | None:
    cost = []
    if "params" in m:
        cost.append(f"{fmt_big(m['params'])} params")
    if "train_flops_estimate" in m:
        cost.append(
            f"{fmt_big(m['train_flops_estimate'])} FLOPs of training (estimated: 3 x forward x samples)"
        )
    elif "flops" in m:
        cost.append(f"{fmt_big(m['flops'])} FLOPs")
    if cost:
        backend = t.get(keys.FLOPS_BACKEND)
        return "**Model** " + ", ".join(cost) + (f" (counted by {_md(backend)})" if backend else "") + "."
    if t.get(keys.MODEL_COST):
        return f"**Model** {_md(t[keys.MODEL_COST])}."
    return None


def summary_line(m: Mapping[str, float], t: Mapping[str, str]) -> str:
    """The first line: energy (and how obtained), carbon, Dice, runtime."""
    how = basis(t)
    parts = [fmt_energy_kwh(m["energy_kwh"]) + ("" if how == "measured" else f" ({how})")]
    if "carbon_g" in m:
        parts.append(f"{fmt(m['carbon_g'])} g CO2eq")
    if "dice_mean" in m:
        parts.append(f"Dice {m['dice_mean']:.3f}")
    if "duration_s" in m:
        parts.append(fmt_seconds(m["duration_s"]))
    return "**" + " · ".join(parts) + "**"


def run_markdown(
    metrics: Mapping[str, float],
    params: Mapping[str, str],
    tags: Mapping[str, str],
    version: str | None = None,
) -> str | None:
    """The description of one run, from its logged values; None when it logged no energy."""
    m, p, t = metrics, params, tags
    if "energy_kwh" not in m:
        return None
    what = [t.get(keys.PIPELINE, ""), f"on {t[keys.DEVICE]}" if t.get(keys.DEVICE) else ""]
    what = " ".join(_md(x) for x in what if x)
    status = t.get(keys.STATUS, "")
    head = summary_line(m, t) + (f" · {what}" if what else "") + (f" · {status}" if status else "")
    items = [_energy_line(m, p, t)]
    if "carbon_g" in m:
        items.append(_carbon_line(m, p, t))
    if "power_mean_w" in m or "duration_s" in m:
        bits = []
        if "power_mean_w" in m:
            bits.append(f"**Power** {fmt(m['power_mean_w'])} W mean (energy / runtime)")
        if "duration_s" in m:
            cpu = (
                f", {fmt_seconds(m['cpu_time_s'])} CPU time of the process tree" if "cpu_time_s" in m else ""
            )
            bits.append(f"**Runtime** {fmt_seconds(m['duration_s'])} wall{cpu}")
        items.append("; ".join(bits) + ".")
    for prefix, name in (("dice", "Dice"), ("dice_aseg", "Dice (aseg)")):
        if f"{prefix}_mean" in m:
            n = m.get(f"{prefix}_labels_n")
            names = t.get(f"{keys.PREFIX}{prefix}.names")
            items.append(
                f"**{name}** {m[f'{prefix}_mean']:.3f} mean"
                + (f" over {int(n)} labels" if n else "")
                + f" (each in `{prefix}/<label>`"
                + (f"; names: {_md(names)}" if names else "")
                + ")."
            )
    model = _model_line(m, t)
    if model:
        items.append(model)
    if "predicted_energy_kwh" in m and status in ("FAILED", "KILLED"):
        items.append(
            f"**Predicted** {fmt_energy_kwh(m['predicted_energy_kwh'])} for all "
            f"{_md(t.get(keys.PLANNED_EPOCHS, '?'))} planned epochs (linear extrapolation)."
        )
    stages = _stages(m)
    if stages:
        total = m["energy_kwh"]
        parts = []
        for name, kwh, dur in stages:
            share = f", {100 * kwh / total:.0f} %" if total > 0 else ""
            took = f" in {fmt_seconds(dur)}" if dur is not None else ""
            parts.append(f"`{_md(name)}` {fmt_energy_kwh(kwh)}{took}{share}")
        items.append("**Biggest stages** " + "; ".join(parts) + ".")
    warnings = sorted(
        (k[len(keys.WARNING_PREFIX) :], v) for k, v in t.items() if k.startswith(keys.WARNING_PREFIX)
    )
    items += [f"**Warning** ({_md(k)}): {_md(v)}" for k, v in warnings]
    lines = [
        head,
        "",
        *(f"- {i}" for i in items),
        "",
        _footer(version, "this run's metrics, params and tags"),
    ]
    return "\n".join(lines) + "\n"


def _footer(version: str | None, source: str) -> str:
    by = f"mlflow-wattsup {version}" if version else "mlflow-wattsup"
    return (
        f"_Written by {by} from {source}. Energy is IT energy; carbon applies PUE. "
        "Edit this text freely: a description you change is never overwritten._"
    )


# -- writing the note -----------------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def mark(text: str) -> str:
    """``text`` with our hidden marker appended."""
    text = text.rstrip("\n") + "\n"
    return f"{text}\n<!-- wattsup:auto {_digest(text)} -->\n"


def note_owner(note: str | None) -> str:
    """``none`` (no description), ``ours`` (written by us, unchanged since) or ``user``."""
    if not note or not note.strip():
        return "none"
    found = MARKER.search(note)
    if found and _digest(note[: found.start()].rstrip("\n") + "\n") == found.group(1):
        return "ours"
    return "user"


def write_note(client, run_id: str, text: str, tags: Mapping[str, str] | None = None) -> bool:
    """Set the run's description to ``text`` unless a user wrote one; True if written."""
    if tags is None:
        tags = client.get_run(run_id).data.tags
    if note_owner(tags.get(NOTE_TAG)) == "user":
        return False
    if len(text) > NOTE_MAX_CHARS:
        text = text[: NOTE_MAX_CHARS - 80].rsplit("\n", 1)[0] + "\n\n_(cut here: see the run's artifacts)_\n"
    client.set_tag(run_id, NOTE_TAG, mark(text))
    return True


def describe_run(client, run_id: str) -> bool:
    """Write the run's description from what it logged (call once its metrics are in); True if
    written, False when it logged no energy or a user's description is kept."""
    from mlflow_wattsup import __version__

    d = client.get_run(run_id).data
    text = run_markdown(d.metrics, d.params, d.tags, __version__)
    return text is not None and write_note(client, run_id, text, d.tags)


# -- a parent run ----------------------------------------------------------------------------------


def children(client, run_id: str, experiment_id: str | None = None) -> list:
    """The parent's child runs (tag ``mlflow.parentRunId``), oldest first."""
    if experiment_id is None:
        experiment_id = client.get_run(run_id).info.experiment_id
    out, token = [], None
    while True:
        page = client.search_runs(
            [experiment_id],
            f"tags.`{PARENT_TAG}` = '{run_id}'",
            max_results=1000,
            order_by=["attributes.start_time ASC"],
            page_token=token,
        )
        out.extend(page)
        token = page.token
        if not token:
            return out


def rows_of(runs) -> list:
    """The report's :class:`~.report.RunRow` of MLflow runs."""
    from mlflow_wattsup.report import NEEDED_METRICS, NEEDED_PARAMS, TAG_PREFIX, RunRow

    return [
        RunRow(
            r.info.run_id,
            {k: v for k, v in r.data.metrics.items() if k in NEEDED_METRICS},
            {k: v for k, v in r.data.tags.items() if k.startswith(TAG_PREFIX)},
            {k: v for k, v in r.data.params.items() if k in NEEDED_PARAMS},
        )
        for r in runs
    ]


def compact_table(table) -> list[str]:
    """A :class:`~.report.Report` as a markdown table narrow enough for the Overview page: one
    row per group, the energy basis as a mark on the energy, ``mean ± sd`` only when N > 1."""
    from mlflow_wattsup.report import ESTIMATE_MARK

    head = [
        "Runs",
        "N",
        *(
            ("Carbon (g, recomputed)" if c.key == "carbon" and table.recomputed else c.label)
            for c in table.cols
        ),
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in table.groups:
        row = [_md(" · ".join(g[:-1])), str(table.n[g])]
        for c in table.cols:
            cell = table.cells[g][c.key]
            if cell.mean is None:
                text = "n/a"
            elif cell.n > 1 and cell.sd is not None:
                text = f"{_fmt_col(cell.mean, c.big)} ± {_fmt_col(cell.sd, c.big)}"
            else:
                text = _fmt_col(cell.mean, c.big)
            if c.key == "energy" and g[-1] != "measured":
                text += f" {ESTIMATE_MARK}"
            row.append(text)
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _fmt_col(x: float, big: bool) -> str:
    return fmt_big(x) if big else fmt(x)


def parent_markdown(experiment_id: str, kids: Sequence, table, title: str | None = None) -> str | None:
    """The parent's description: the children's total, ``table`` (a :class:`~.report.Report` of
    ``kids``), its footnotes, links to the children and to the compare view."""
    measured = [r for r in kids if "energy_kwh" in r.data.metrics]
    if not measured:
        return None
    energy = sum(r.data.metrics["energy_kwh"] for r in measured)
    bases = sorted({basis(r.data.tags) for r in measured})
    head = f"**{len(measured)} runs: {fmt_energy_kwh(energy)}"
    if bases != ["measured"]:
        head += f" ({', '.join(bases)})"
    if all("carbon_g" in r.data.metrics for r in measured):
        head += f" · {fmt(sum(r.data.metrics['carbon_g'] for r in measured))} g CO2eq"
    head += " in all**"
    scored = [r for r in measured if "dice_mean" in r.data.metrics]
    if scored:
        best = max(scored, key=lambda r: r.data.metrics["dice_mean"])
        head += (
            f" · best Dice {best.data.metrics['dice_mean']:.3f}: {_md(best.data.tags.get(keys.PIPELINE, best.info.run_name))}"
            f" at {fmt_energy_kwh(best.data.metrics['energy_kwh'])}"
        )
    lines = [head, ""]
    if title:
        lines += [f"{_md(title)}, per pipeline and device:", ""]
    lines += compact_table(table)
    notes = [
        n.replace("cells: mean (sd) over N runs; N/A:", "cells: mean over N runs, ± sd when N > 1; n/a:")
        for n in footnotes(table)
    ]
    lines += ["", *(f"_{_md(n)}_  " for n in notes)]
    links = [
        f"[{_md(r.info.run_name or r.info.run_id[:8])}]({run_fragment(experiment_id, r.info.run_id)})"
        for r in kids
    ]
    more = f" and {len(links) - MAX_LINKS} more" if len(links) > MAX_LINKS else ""
    lines += ["", "Runs: " + " · ".join(links[:MAX_LINKS]) + more + "  "]
    ids = [r.info.run_id for r in kids][:100]
    lines += [
        f"[Compare them in MLflow]({compare_fragment(experiment_id, ids)}) · the table as a page: artifact `wattsup/report.html`"
    ]
    lines += ["", _footer(None, "the child runs")]
    return "\n".join(lines) + "\n"


def describe_parent(client, run_id: str, title: str | None = None, runtime_unit: str = "s") -> bool:
    """Write the parent run's description: the comparison table of its children (grouped by
    pipeline and device, as ``wattsup report`` does). True if written."""
    from mlflow_wattsup.report import build

    run = client.get_run(run_id)
    kids = children(client, run_id, run.info.experiment_id)
    rows = [r for r in rows_of(kids) if "energy_kwh" in r.metrics]
    if not rows:
        return False
    text = parent_markdown(run.info.experiment_id, kids, build(rows, runtime_unit=runtime_unit), title)
    return text is not None and write_note(client, run_id, text, run.data.tags)


def describe_or_warn(
    client, run_id: str | None, prog: str = "wattsup", parent: bool = False, title: str | None = None
) -> bool:
    """:func:`describe_run` (``parent``: :func:`describe_parent`) that never raises: the run's
    measurements are already logged, so a description that cannot be written is one line on
    stderr. True if written."""
    if not run_id:
        return False
    try:
        return describe_parent(client, run_id, title) if parent else describe_run(client, run_id)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"{prog}: run {run_id}: description not written ({type(exc).__name__}: {first})", file=sys.stderr
        )
        return False


# -- the comparison report as artifacts -----------------------------------------------------------

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 16px; color: #1f272d; }
h1 { font-size: 18px; margin: 0 0 12px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #d1d9e1; padding: 4px 8px; text-align: right; white-space: nowrap; }
th { background: #f3f5f7; }
td:nth-child(-n+3), th:nth-child(-n+3) { text-align: left; }
p { font-size: 12px; color: #5f7281; max-width: 60em; }
"""


def report_html(table, title: str, layout: str = "long") -> str:
    """A standalone HTML page of the comparison table (MLflow's artifact viewer renders it)."""
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
        f"<h1>{html.escape(title)}</h1>\n{to_html(table, layout)}</body></html>\n"
    )


def log_report(client, run_id: str, table, title: str, layout: str = "long") -> list[str]:
    """Log the comparison table to ``run_id`` as ``wattsup/report.md`` and ``wattsup/report.html``;
    returns the artifact paths."""
    client.log_text(run_id, to_markdown(table, layout), "wattsup/report.md")
    client.log_text(run_id, report_html(table, title, layout), "wattsup/report.html")
    return ["wattsup/report.md", "wattsup/report.html"]
