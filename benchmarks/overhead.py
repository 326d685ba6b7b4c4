"""Overhead of ``mlflow_wattsup.track()``: slowdown of a fixed CPU-bound job at 1 s sampling,
and the cost of entering + leaving ``track()``, both against a baseline measured in this run.

    python benchmarks/overhead.py [--job-s 4] [--pairs 5]

The job is a fixed pure-Python loop (the worst case: it holds the GIL the sampler thread needs).
Untracked and tracked runs alternate (A B A B ...) so drift on a shared machine hits both alike;
the slowdown is median(tracked) / median(untracked) - 1 over wall time (on a shared VM that is
within its noise, which is printed), and, measured per thread and so immune to that noise, the CPU
seconds our sampler and writer threads used per CPU second of the job.
Targets: slowdown <= 1%, start+stop < 0.2 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def job(n: int) -> int:
    acc = 0
    for i in range(n):
        acc = (acc + i * i) % 1_000_003
    return acc


def calibrate(seconds: float) -> int:
    n = 200_000
    while True:
        t = time.perf_counter()
        job(n)
        dt = time.perf_counter() - t
        if dt > 0.2:
            return int(n * seconds / dt)
        n *= 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job-s", type=float, default=4.0, help="length of one job, seconds (default 4)")
    ap.add_argument("--pairs", type=int, default=10, help="untracked/tracked pairs (default 10)")
    ap.add_argument("--start-stop-reps", type=int, default=10)
    args = ap.parse_args()

    import mlflow

    import mlflow_wattsup

    tmp = tempfile.mkdtemp(prefix="wattsup-bench-")
    mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
    os.environ["WATTSUP_SPOOL_DIR"] = os.path.join(tmp, "spool")
    with mlflow_wattsup.track(experiment="warmup", carbon_intensity=100):  # creates the DB schema
        pass

    n = calibrate(args.job_s)
    wall = {"untracked": [], "tracked": []}
    cpu = {"untracked": [], "tracked": []}
    own = []  # CPU of our sampler + writer threads / the job's CPU, per tracked run
    for i in range(args.pairs):
        for mode in ("untracked", "tracked") if i % 2 == 0 else ("tracked", "untracked"):
            c0, t0 = time.process_time(), time.perf_counter()
            if mode == "tracked":
                with mlflow_wattsup.track(experiment="overhead", carbon_intensity=100, interval_s=1.0) as t:
                    job(n)
            else:
                job(n)
            wall[mode].append(time.perf_counter() - t0)
            cpu[mode].append(time.process_time() - c0)
            if mode == "tracked":
                ours = t.tracker.sampler_cpu_s + t._recording.sink.writer_cpu_s
                own.append(ours / (cpu[mode][-1] - ours))

    start_stop = []
    for _ in range(args.start_stop_reps):
        t0 = time.perf_counter()
        with mlflow_wattsup.track(experiment="start-stop", carbon_intensity=100):
            pass
        start_stop.append(time.perf_counter() - t0)

    mu, mt = statistics.median(wall["untracked"]), statistics.median(wall["tracked"])
    slowdown = mt / mu - 1
    noise = statistics.stdev(wall["untracked"]) / statistics.fmean(wall["untracked"])
    own_pct = statistics.fmean(own) * 100
    ss = statistics.median(start_stop)
    print(
        f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, job {mu:.2f} s x {args.pairs} pairs"
    )
    print(f"untracked wall s: {' '.join(f'{x:.3f}' for x in wall['untracked'])}")
    print(f"tracked   wall s: {' '.join(f'{x:.3f}' for x in wall['tracked'])}")
    print(
        f"slowdown (median wall, tracked/untracked - 1): {slowdown * 100:+.2f}%  target <= 1% "
        f"(run-to-run noise of the untracked job here: {noise * 100:.1f}% sd)"
    )
    print(
        f"CPU of our own threads (sampler + writer) / job CPU: {own_pct:.3f}% (mean of {len(own)} tracked runs; "
        "measured per thread, immune to the machine's noise)"
    )
    print(
        f"track() start+stop, median of {len(start_stop)}: {ss * 1000:.1f} ms "
        f"(min {min(start_stop) * 1000:.1f}, max {max(start_stop) * 1000:.1f})  target < 200 ms"
    )
    # the wall ratio is judged against the noise it is measured in; our own CPU share is exact
    ok = own_pct <= 1.0 and slowdown <= max(0.01, 2 * noise) and ss < 0.2
    print("PASS" if ok else "MISS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
