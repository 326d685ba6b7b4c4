"""What a user reads first on a run's Overview page in the MLflow UI: its description, written
from what the run logged: energy, carbon and mean power with how each was obtained (measured,
estimated, imported), the carbon intensity and PUE, runtime, Dice, params/FLOPs, the biggest
stages, warnings. The first line sums it up: the UI shows about four lines before "Show more".
Written through :func:`.notes.write_note` (never over a user's)."""

from __future__ import annotations

from collections.abc import Mapping

from mlflow_wattsup.report.model import energy_basis
from mlflow_wattsup.report.notes import footer, md, note_value
from mlflow_wattsup.report.numbers import energy_kwh, fmt, seconds
from mlflow_wattsup.sink import keys


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
        f"{label} {energy_kwh(m[k])}"
        for label, k in (("CPU", "energy_cpu_kwh"), ("GPU", "energy_gpu_kwh"), ("RAM", "energy_ram_kwh"))
        if k in m
    ]
    line = f"**Energy** {energy_kwh(m['energy_kwh'])}" + (f" ({', '.join(split)})" if split else "")
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
        how.append(f"as logged by {md(t[keys.IMPORT_TOOL])}")
    if how:
        line += ": " + "; ".join(how)
    if "machine_energy_kwh" in m:
        line += f". Whole machine over the same time: {energy_kwh(m['machine_energy_kwh'])}"
    if keys.SOURCE_SLURM in t:  # SLURM's own accounting, beside ours (issue 22)
        slurm = (
            t.get(keys.SLURM_ALLOCATION, "") if keys.SLURM_ENERGY_KWH in m else t.get(keys.SLURM_ENERGY, "")
        )
        got = energy_kwh(m[keys.SLURM_ENERGY_KWH]) if keys.SLURM_ENERGY_KWH in m else "not collected"
        line += f". SLURM's accounting: {got} ({md(slurm)})"
    return line + "."


def _carbon_line(m: Mapping[str, float], p: Mapping[str, str], t: Mapping[str, str]) -> str:
    line = f"**Carbon** {fmt(m['carbon_g'])} g CO2eq"
    intensity = p.get(keys.CARBON_INTENSITY)
    if intensity is None:
        return line + " (intensity not recorded)."
    region = p.get(keys.REGION, "none")
    where = "no region given" if region in ("", "none") else f"region {md(region)}"
    src = t.get(keys.SOURCE_CARBON_INTENSITY)
    pue_src = t.get(keys.SOURCE_PUE)
    return (
        f"{line} = energy x PUE {p.get(keys.PUE, '1')}"
        + (f" ({md(pue_src)})" if pue_src else "")
        + f" x {intensity} g CO2eq/kWh ({where}"
        + (f"; {md(src)}" if src else "")
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
        cost.append(f"{fmt(m['params'], big=True)} params")
    if "train_flops_estimate" in m:
        cost.append(
            f"{fmt(m['train_flops_estimate'], big=True)} FLOPs of training (estimated: 3 x forward x samples)"
        )
    elif "flops" in m:
        cost.append(f"{fmt(m['flops'], big=True)} FLOPs")
    if cost:
        backend = t.get(keys.FLOPS_BACKEND)
        return "**Model** " + ", ".join(cost) + (f" (counted by {md(backend)})" if backend else "") + "."
    if t.get(keys.MODEL_COST):
        return f"**Model** {md(t[keys.MODEL_COST])}."
    return None


def summary_line(m: Mapping[str, float], t: Mapping[str, str]) -> str:
    """The first line: energy (and how obtained), carbon, Dice, runtime."""
    how = energy_basis(t)
    parts = [energy_kwh(m["energy_kwh"]) + ("" if how == "measured" else f" ({how})")]
    if "carbon_g" in m:
        parts.append(f"{fmt(m['carbon_g'])} g CO2eq")
    if "dice_mean" in m:
        parts.append(f"Dice {m['dice_mean']:.3f}")
    if "duration_s" in m:
        parts.append(seconds(m["duration_s"]))
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
    what = " ".join(md(x) for x in what if x)
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
            cpu = f", {seconds(m['cpu_time_s'])} CPU time of the process tree" if "cpu_time_s" in m else ""
            bits.append(f"**Runtime** {seconds(m['duration_s'])} wall{cpu}")
        items.append("; ".join(bits) + ".")
    for prefix, name in (("dice", "Dice"), ("dice_aseg", "Dice (aseg)")):
        if f"{prefix}_mean" in m:
            n = m.get(f"{prefix}_labels_n")
            names = t.get(keys.dice_names_tag(prefix))
            items.append(
                f"**{name}** {m[f'{prefix}_mean']:.3f} mean"
                + (f" over {int(n)} labels" if n else "")
                + f" (each in `{prefix}/<label>`"
                + (f"; names: {md(names)}" if names else "")
                + ")."
            )
    model = _model_line(m, t)
    if model:
        items.append(model)
    if "predicted_energy_kwh" in m and status in ("FAILED", "KILLED"):
        items.append(
            f"**Predicted** {energy_kwh(m['predicted_energy_kwh'])} for all "
            f"{md(t.get(keys.PLANNED_EPOCHS, '?'))} planned epochs (linear extrapolation)."
        )
    stages = _stages(m)
    if stages:
        total = m["energy_kwh"]
        parts = []
        for name, kwh, dur in stages:
            share = f", {100 * kwh / total:.0f} %" if total > 0 else ""
            took = f" in {seconds(dur)}" if dur is not None else ""
            parts.append(f"`{md(name)}` {energy_kwh(kwh)}{took}{share}")
        items.append("**Biggest stages** " + "; ".join(parts) + ".")
    warnings = sorted(
        (k[len(keys.WARNING_PREFIX) :], v) for k, v in t.items() if k.startswith(keys.WARNING_PREFIX)
    )
    items += [f"**Warning** ({md(k)}): {md(v)}" for k, v in warnings]
    lines = [
        head,
        "",
        *(f"- {i}" for i in items),
        "",
        footer(version, "this run's metrics, params and tags"),
    ]
    return "\n".join(lines) + "\n"


def describe_text(run) -> str | None:
    """The ``mlflow.note.content`` value describing ``run`` (MLflow's ``Run``, or the
    :class:`~mlflow_wattsup.sink.transport.Store`'s view of one) from what it logged; None when
    it logged no energy or a user's description is kept."""
    from mlflow_wattsup import __version__

    d = run.data
    text = run_markdown(d.metrics, d.params, d.tags, __version__)
    return None if text is None else note_value(text, d.tags)


def describe_run(client, run_id: str) -> bool:
    """Write the run's description from what it logged (call once its metrics are in); True if
    written, False when it logged no energy or a user's description is kept. ``client``: an
    ``MlflowClient`` or a :class:`~mlflow_wattsup.sink.transport.Store`."""
    from mlflow_wattsup.report.notes import NOTE_TAG

    value = describe_text(client.get_run(run_id))
    if value is None:
        return False
    client.set_tag(run_id, NOTE_TAG, value)
    return True
