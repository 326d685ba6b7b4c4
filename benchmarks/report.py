"""Report speed on a big experiment: 10,000 runs in a sqlite store.

    python benchmarks/report.py [--runs 10000] [--db PATH]

Creates the runs through MLflow's own API the first time (each with the metrics, params and tags
a tracked run has: about 2.5 min for 10,000 here; the store is kept at --db and reused), then
times ``wattsup report`` end to end in this process - fetching, grouping, rendering markdown -
with the column-restricted SQL read it uses by default, and with plain ``search_runs`` paging as
the baseline, in the same run. Target: the report under 10 s.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

PIPELINES = [
    ("freesurfer", "cpu"),
    ("fastsurfer", "cpu"),
    ("fastsurfer", "gpu"),
    ("fastsurfercnn-train", "gpu"),
]


def populate(client, name: str, n: int) -> str:
    from mlflow.entities import Metric, Param

    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name)
    have = len(client.search_runs([exp_id], max_results=n))
    rng = random.Random(0)
    t0 = time.perf_counter()
    for i in range(have, n):
        pipe, dev = PIPELINES[i % len(PIPELINES)]
        tags = {
            "wattsup.pipeline": pipe,
            "wattsup.device": dev,
            "wattsup.source.cpu": rng.choice(["rapl", "estimate"]),
            "wattsup.source.gpu": "nvml-energy" if dev == "gpu" else "none",
            "wattsup.source.ram": "estimate",
            "wattsup.cpu_model": "Intel Xeon Gold 6148",
            "wattsup.gpus": "none",
            "wattsup.version": "0.1.0",
            "mlflow.user": "bench",
            "wattsup.region": "CA-QC",
        }
        rid = client.create_run(exp_id, tags=tags).info.run_id
        ms = int(time.time() * 1000)
        e = rng.uniform(0.001, 0.1)
        vals = {
            "duration_s": rng.uniform(60, 36000),
            "energy_kwh": e,
            "carbon_g": e * 30,
            "energy_cpu_kwh": e * 0.8,
            "energy_gpu_kwh": e * 0.1,
            "energy_ram_kwh": e * 0.1,
            "power_mean_w": 50.0,
            "cpu_time_s": 100.0,
            "machine_energy_kwh": 2 * e,
            "dice_mean": rng.uniform(0.7, 0.9),
            "params": 1.8e6,
            "flops": 4.7e13,
        }
        client.log_batch(
            rid,
            metrics=[Metric(k, v, ms, 0) for k, v in vals.items()],
            params=[
                Param(k, v)
                for k, v in {
                    "wattsup.pue": "1.2",
                    "wattsup.carbon_intensity_g_per_kwh": "30",
                    "wattsup.region": "CA-QC",
                    "wattsup.interval_s": "1",
                }.items()
            ],
        )
        if (i + 1) % 1000 == 0:
            print(f"  created {i + 1}/{n} runs ({time.perf_counter() - t0:.0f} s)", flush=True)
    return exp_id


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--db", default=os.path.join(tempfile.gettempdir(), "wattsup-bench-report.db"))
    args = ap.parse_args()

    from mlflow.tracking import MlflowClient

    from mlflow_wattsup.report import build, fetch_runs, to_markdown

    uri = f"sqlite:///{args.db}"
    client = MlflowClient(uri)
    name = f"bench-{args.runs}"
    populate(client, name, args.runs)

    timings = {}
    for label, fast in (("search_runs paging (baseline)", False), ("wattsup report (default)", True)):
        t0 = time.perf_counter()
        runs = fetch_runs([name], tracking_uri=uri, fast=fast)
        table = build(runs)
        text = to_markdown(table, "wide")
        timings[label] = time.perf_counter() - t0
        assert sum(table.n.values()) == args.runs, (sum(table.n.values()), args.runs)
    print(text)
    base, ours = timings["search_runs paging (baseline)"], timings["wattsup report (default)"]
    print(
        f"{args.runs} runs: wattsup report {ours:.2f} s; search_runs paging {base:.2f} s; "
        f"ratio {ours / base:.3f}"
    )
    ok = ours < 10.0
    print(f"target < 10 s: {'PASS' if ok else 'MISS'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
