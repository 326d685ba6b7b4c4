"""What ``mlflow_wattsup.autolog()`` costs a user, against MLflow alone, measured in this run.

    python benchmarks/autolog.py [--pairs 30] [--job-s 30]

1. ``mlflow.start_run()`` + ``mlflow.end_run()`` (a sqlite store in a temporary folder): the
   median milliseconds of a pair with autolog on, and of a bare pair, alternated (A B A B ...) in
   one process so that drift on a shared machine hits both alike. The bare pairs go through the
   installed but disabled wrappers (``autolog(disable=True)``); pairs timed before autolog was
   ever installed are printed too, to show the disabled wrappers cost nothing. An autologged pair
   includes everything ours does at a run's start and end: the tracker's start (meters opened, the
   first reading), the recorder's params and tags, and at the end the totals, the description,
   and the search for the run's logged models.
2. A 30 s job (a pure-Python loop, the worst case: it holds the GIL the samplers need) in an
   autologged run, with MLflow's ``log_system_metrics`` off and on, alternated (``--repeats``
   times each): the CPU seconds of our sampler and writer threads (``tracker_cpu_s``, each
   thread's own CPU clock) and of MLflow's ``SystemMetricsMonitor`` thread (its ``/proc`` task
   counters), so immune to other users' load, as a share of the job's wall time (one core = 100%)
   and of the job's own CPU time; and how many power-trace points arrived.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.pop("WATTSUP_AUTOLOG", None)


def pair(mlflow) -> float:
    t = time.perf_counter()
    mlflow.start_run()
    mlflow.end_run()
    return (time.perf_counter() - t) * 1000


def pairs(mlflow, autolog, n: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"before install": [], "bare": [], "autolog": []}
    for _ in range(3):  # warm-up: the store's first writes, imports of first use
        pair(mlflow)
    for _ in range(n):
        out["before install"].append(pair(mlflow))
    autolog(silent=True)
    pair(mlflow)  # warm-up of our own first use (meters, hardware tags)
    for _ in range(n):
        autolog(disable=True)
        out["bare"].append(pair(mlflow))
        autolog(silent=True)
        out["autolog"].append(pair(mlflow))
    autolog(disable=True)
    return out


def thread_cpu_s(thread: threading.Thread) -> float:
    """user + system seconds of one thread of this process (``/proc/self/task/<tid>/stat``)."""
    with open(f"/proc/self/task/{thread.native_id}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def busy(seconds: float) -> int:
    acc, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        for i in range(10_000):
            acc = (acc + i * i) % 1_000_003
    return acc


def job_run(mlflow, client, autolog, job_s: float, system_metrics: bool) -> dict[str, float]:
    autolog(silent=True)
    with mlflow.start_run(log_system_metrics=system_metrics) as run:
        cpu0 = time.process_time()
        wall0 = time.monotonic()
        busy(job_s)
        wall = time.monotonic() - wall0
        job_cpu = time.process_time() - cpu0
        monitor = [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]
        mlflow_cpu = sum(thread_cpu_s(t) for t in monitor)
    autolog(disable=True)
    data = client.get_run(run.info.run_id).data
    points = len(client.get_metric_history(run.info.run_id, "system/wattsup_power_w"))
    mlflow_points = len(client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage"))
    return {
        "wall_s": wall,
        "job_cpu_s": job_cpu,
        "ours_cpu_s": data.metrics["tracker_cpu_s"],
        "mlflow_cpu_s": mlflow_cpu,
        "monitor_threads": len(monitor),
        "points": points,
        "mlflow_points": mlflow_points,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=30, help="start_run + end_run pairs per mode")
    p.add_argument("--job-s", type=float, default=30.0, help="length of the busy job")
    p.add_argument("--repeats", type=int, default=2, help="jobs per setting (off, on, off, on, ...)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="wattsup-bench-autolog-") as tmp:
        os.environ["WATTSUP_SPOOL_DIR"] = os.path.join(tmp, "spool")
        import mlflow
        from mlflow.tracking import MlflowClient

        from mlflow_wattsup import autolog

        uri = f"sqlite:///{tmp}/bench.db"
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("autolog-bench")
        client = MlflowClient(uri)

        print(f"python {sys.version.split()[0]}, mlflow {mlflow.__version__}, {os.cpu_count()} CPUs, {uri}")
        times = pairs(mlflow, autolog, args.pairs)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"\nstart_run + end_run, median of {args.pairs} (ms; min-max):")
        for k, v in times.items():
            print(f"  {k:15s} {med[k]:8.1f}   ({min(v):.1f}-{max(v):.1f})")
        print(
            f"  autolog adds {med['autolog'] - med['bare']:.1f} ms per run "
            f"({med['autolog'] / med['bare']:.2f}x a bare pair)"
        )

        print(f"\n{args.job_s:g} s pure-Python job in an autologged run (1 s sampling):")
        for system_metrics in [False, True] * args.repeats:
            r = job_run(mlflow, client, autolog, args.job_s, system_metrics)
            ours = r["ours_cpu_s"]
            line = (
                f"  log_system_metrics={str(system_metrics):5s}: ours {ours:.3f} CPU-s = "
                f"{100 * ours / r['wall_s']:.2f}% of a core, {100 * ours / r['job_cpu_s']:.2f}% of the job's "
                f"CPU; {r['points']} trace points"
            )
            if system_metrics:
                m = r["mlflow_cpu_s"]
                line += (
                    f"; MLflow's monitor {m:.3f} CPU-s = {100 * m / r['wall_s']:.2f}% of a core "
                    f"({r['mlflow_points']} points)"
                )
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
