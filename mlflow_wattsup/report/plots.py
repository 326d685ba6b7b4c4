"""Comparison plots (matplotlib, PNG), optionally logged as artifacts of a run.

* :func:`energy_vs_runtime` - one point per run, coloured by group (pipeline/device); estimated
  energy drawn hollow.
* :func:`power_trace` - a run's power series (total, CPU, GPU) with its stages shaded.
* :func:`cost_vs_dice` - energy or carbon against mean Dice, with the Pareto front (runs no other
  run beats on both cost and quality).
* :func:`stage_energy` - energy per stage of one run (or the mean over runs), as bars.
* :func:`sweep_pareto` - a sweep's cost against Dice: the mean per swept value, one line per
  pipeline and device through the values in order, and the Pareto front.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mlflow_wattsup.report import DEFAULT_GROUP_BY, RunRow
from mlflow_wattsup.sink import keys


def _plt():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    _plt().close(fig)
    return out


def _label(run: RunRow, group_by: Sequence[str]) -> str:
    return " / ".join(run.group_value(k) for k in group_by)


def _runtime_unit(seconds: list[float]) -> tuple[float, str]:
    top = max(seconds) if seconds else 0
    if top >= 2 * 3600:
        return 1 / 3600, "h"
    if top >= 120:
        return 1 / 60, "min"
    return 1.0, "s"


def energy_vs_runtime(
    runs: Sequence[RunRow], out: str | Path, group_by: Sequence[str] = DEFAULT_GROUP_BY
) -> Path:
    plt = _plt()
    pts = [r for r in runs if "energy_kwh" in r.metrics and "duration_s" in r.metrics]
    if not pts:
        raise ValueError("no run has both energy_kwh and duration_s")
    scale, unit = _runtime_unit([r.metrics["duration_s"] for r in pts])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = sorted({_label(r, group_by) for r in pts})
    colours = plt.get_cmap("tab10")
    for i, g in enumerate(groups):
        for estimated in (False, True):
            sel = [r for r in pts if _label(r, group_by) == g and (r.basis != "measured") == estimated]
            if not sel:
                continue
            c = colours(i % 10)
            ax.scatter(
                [r.metrics["duration_s"] * scale for r in sel],
                [r.metrics["energy_kwh"] * 1000 for r in sel],
                label=f"{g}{' (estimated)' if estimated else ''}",
                s=40,
                facecolors="none" if estimated else c,
                edgecolors=c,
            )
    ax.set_xlabel(f"runtime ({unit})")
    ax.set_ylabel("energy (Wh)")
    ax.set_title("Energy vs runtime")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)


def _pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points (cost, quality) not beaten on both: lower cost and higher quality."""
    front = []
    best = float("-inf")
    for cost, q in sorted(points, key=lambda p: (p[0], -p[1])):
        if q > best:
            front.append((cost, q))
            best = q
    return front


def _draw_pareto_front(ax, points: list[tuple[float, float]]) -> None:
    """The Pareto front of ``points`` (cost, quality) as a dashed black step line."""
    front = _pareto(points)
    ax.step(
        [p[0] for p in front],
        [p[1] for p in front],
        where="post",
        color="black",
        lw=1,
        ls="--",
        label="Pareto front",
    )


def cost_vs_dice(
    runs: Sequence[RunRow], out: str | Path, cost: str = "energy", group_by: Sequence[str] = DEFAULT_GROUP_BY
) -> Path:
    plt = _plt()
    key, scale, label = {
        "energy": ("energy_kwh", 1000.0, "energy (Wh)"),
        "carbon": ("carbon_g", 1.0, "carbon (g CO2eq)"),
    }[cost]
    pts = [r for r in runs if key in r.metrics and "dice_mean" in r.metrics]
    if not pts:
        raise ValueError(f"no run has both {key} and dice_mean")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.get_cmap("tab10")
    for i, g in enumerate(sorted({_label(r, group_by) for r in pts})):
        sel = [r for r in pts if _label(r, group_by) == g]
        ax.scatter(
            [r.metrics[key] * scale for r in sel],
            [r.metrics["dice_mean"] for r in sel],
            label=g,
            s=40,
            color=colours(i % 10),
        )
    _draw_pareto_front(ax, [(r.metrics[key] * scale, r.metrics["dice_mean"]) for r in pts])
    ax.set_xscale("log")
    ax.set_xlabel(f"{label}, log scale")
    ax.set_ylabel("mean Dice")
    ax.set_title(f"Quality vs {cost}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, out)


def power_trace(client, run_id: str, out: str | Path) -> Path:
    """The run's power series (``system/wattsup_power_w``, its CPU and GPU parts) against elapsed
    time, with its stages (``stage/<name>/start_s`` .. ``end_s``) shaded and named."""
    plt = _plt()
    run = client.get_run(run_id)
    total, cpu, gpu = keys.SYSTEM_POWER_SERIES[:3]
    series = {
        k: sorted(client.get_metric_history(run_id, k), key=lambda m: m.step) for k in (total, cpu, gpu)
    }
    if not series[total]:
        raise ValueError(f"run {run_id} has no {total} series")
    seconds = [m.step for m in series[total]]
    scale, unit = _runtime_unit(seconds)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    m = run.data.metrics
    stages = sorted(
        {k.split("/")[1] for k in m if k.startswith("stage/") and k.endswith("/start_s")},
        key=lambda s: m[f"stage/{s}/start_s"],
    )
    colours = plt.get_cmap("Pastel1")
    for i, s in enumerate(stages):
        a, b = m[f"stage/{s}/start_s"] * scale, m.get(f"stage/{s}/end_s", m[f"stage/{s}/start_s"]) * scale
        ax.axvspan(a, b, color=colours(i % 9), alpha=0.6, lw=0)
        ax.text(
            (a + b) / 2,
            1.0,
            s,
            rotation=90,
            va="top",
            ha="center",
            fontsize=7,
            transform=ax.get_xaxis_transform(),
        )
    for key, style, lab in ((total, "-", "total"), (cpu, "--", "CPU"), (gpu, ":", "GPU")):
        pts = series[key]
        if pts and (key == total or any(p.value > 0 for p in pts)):
            ax.plot([p.step * scale for p in pts], [p.value for p in pts], style, label=lab)
    source = run.data.tags.get(keys.SOURCE_PREFIX + "cpu", "?")
    ax.set_xlabel(f"time since start ({unit})")
    ax.set_ylabel("attributed power (W)")
    ax.set_title(f"Power of run {run.info.run_name or run_id[:8]} (CPU: {source})")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, out)


def stage_energy(client, run_ids: Sequence[str], out: str | Path) -> Path:
    """Energy per stage (Wh): one run's stages, or their mean over several runs."""
    plt = _plt()
    per_stage: dict[str, list[float]] = {}
    order: dict[str, float] = {}
    for rid in run_ids:
        m = client.get_run(rid).data.metrics
        for k, v in m.items():
            if k.startswith("stage/") and k.endswith("/energy_kwh"):
                name = k[len("stage/") : -len("/energy_kwh")]
                per_stage.setdefault(name, []).append(v * 1000)
                order.setdefault(name, m.get(f"stage/{name}/start_s", len(order)))
    if not per_stage:
        raise ValueError("no stage/<name>/energy_kwh in the given run(s)")
    names = sorted(per_stage, key=lambda n: order[n])
    means = [sum(per_stage[n]) / len(per_stage[n]) for n in names]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.5))
    bars = ax.barh(names, means, color="tab:orange")
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in means], padding=3, fontsize=8)
    ax.margins(x=0.12)
    ax.invert_yaxis()
    ax.set_xlabel("energy (Wh)" + (f", mean of {len(run_ids)} runs" if len(run_ids) > 1 else ""))
    ax.set_title("Energy per stage")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, out)


def sweep_pareto(runs: Sequence[RunRow], out: str | Path, names: Sequence[str], cost: str = "energy") -> Path:
    """Mean cost (energy Wh, carbon g or runtime s) against mean Dice per swept value(s), one line
    per pipeline and device in the order of the values (numbers numerically), each point named
    with its value(s); the dashed step is the Pareto front over all points (no other point has
    lower cost and higher Dice). ``runs`` carry their swept values as ``wattsup.sweep.<name>``."""
    plt = _plt()
    key, scale, label = {
        "energy": (keys.ENERGY_KWH, 1000.0, "energy (Wh)"),
        "carbon": (keys.CARBON_G, 1.0, "carbon (g CO2eq)"),
        "runtime": (keys.DURATION_S, 1.0, "runtime (s)"),
    }[cost]

    def order(v: str) -> tuple:
        try:
            return (0, float(v), v)
        except ValueError:
            return (1, 0.0, v)

    means: dict[tuple[str, str], dict[tuple[str, ...], list[tuple[float, float]]]] = {}
    for r in runs:
        if key not in r.metrics or "dice_mean" not in r.metrics:
            continue
        swept = keys.swept_values(r.tags)
        values = tuple(swept.get(n, "-") for n in names)
        line = (r.group_value("pipeline"), r.group_value("device"))
        means.setdefault(line, {}).setdefault(values, []).append(
            (r.metrics[key] * scale, r.metrics["dice_mean"])
        )
    if not means:
        raise ValueError(f"no run has both {key} and dice_mean")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.get_cmap("tab10")
    points = []
    for i, (line, by_value) in enumerate(sorted(means.items())):
        xs, ys, tags = [], [], []
        for values in sorted(by_value, key=lambda v: tuple(order(x) for x in v)):
            pts = by_value[values]
            xs.append(sum(p[0] for p in pts) / len(pts))
            ys.append(sum(p[1] for p in pts) / len(pts))
            tags.append(",".join(values))
        ax.plot(xs, ys, "-o", color=colours(i % 10), label=" / ".join(line), ms=5)
        for x, y, t in zip(xs, ys, tags, strict=True):
            ax.annotate(t, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
        points += list(zip(xs, ys, strict=True))
    _draw_pareto_front(ax, points)
    ax.set_xlabel(f"{label}, mean per value")
    ax.set_ylabel("mean Dice")
    ax.set_title(f"Quality vs {cost} across {', '.join(names)}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out)
