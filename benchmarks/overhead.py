"""Overhead of ``mlflow_wattsup.track()``: slowdown of a fixed CPU-bound job at 1 s sampling,
and the cost of entering + leaving ``track()``, both against a baseline measured in this run;
and of the ``wattsup run`` wrapper: how soon the command starts after launch and how much CPU the
wrapper itself spends (start-up included), against a bare run of the same command and a plain
MLflow run around it (``mlflow.start_run()`` + subprocess), measured in this run.

    python benchmarks/overhead.py [--job-s 4] [--pairs 5] [--wrapper-reps 5]

The job is a fixed pure-Python loop (the worst case: it holds the GIL the sampler thread needs).
Untracked and tracked runs alternate (A B A B ...) so drift on a shared machine hits both alike;
the slowdown is median(tracked) / median(untracked) - 1 over wall time (on a shared VM that is
within its noise, which is printed), and, measured per thread and so immune to that noise, the CPU
seconds our sampler and writer threads used per CPU second of the job.
Targets: slowdown <= 1%, start+stop < 0.2 s; ``wattsup run`` inside an existing run (as in
``mlflow run``) starts the command within 0.2 s of launch, and the wrapper's CPU is no more than
a plain MLflow run's. A *new* run is created before the command starts (so the command's own
MLflow logging can join it): its start latency is printed, not judged.
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


WRAPPED = (
    "import sys, time; open(sys.argv[1], 'w').write(repr(time.time()))\n"
    "t = time.process_time()\nwhile time.process_time() - t < 1.0: sum(range(1000))"
)
PLAIN_MLFLOW = (
    "import subprocess, sys, mlflow\n"
    "mlflow.set_experiment('plain')\n"
    "with mlflow.start_run():\n    subprocess.run(sys.argv[1:], check=True)"
)


def wrapper_costs(reps: int, tmp: str) -> dict[str, tuple[list[float], list[float]]]:
    """Per mode: (seconds from launch to the command's first line, CPU seconds of the whole tree)."""
    import resource
    import subprocess

    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp}/wrapper.db"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, WATTSUP_SPOOL_DIR=os.path.join(tmp, "spool"))
    client = MlflowClient(uri)
    exp = client.create_experiment("known")
    marker = os.path.join(tmp, "started")
    cmd = [sys.executable, "-c", WRAPPED, marker]
    wattsup = [sys.executable, "-m", "mlflow_wattsup", "run", "--quiet"]
    modes = {
        "bare": lambda: (cmd, env),
        "plain mlflow run": lambda: ([sys.executable, "-c", PLAIN_MLFLOW, *cmd], env),
        "wattsup run (new run)": lambda: ([*wattsup, "--experiment", "new", "--", *cmd], env),
        "wattsup run (in a run)": lambda: (
            [*wattsup, "--", *cmd],
            dict(env, MLFLOW_RUN_ID=client.create_run(exp).info.run_id),
        ),
    }
    out = {m: ([], []) for m in modes}
    subprocess.run(modes["wattsup run (new run)"]()[0], env=env, check=True)  # schema, caches
    for i in range(reps):
        for mode, make in modes.items() if i % 2 == 0 else reversed(modes.items()):
            argv, e = make()
            r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            t0 = time.time()
            subprocess.run(argv, env=e, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            with open(marker) as f:
                out[mode][0].append(float(f.read()) - t0)
            out[mode][1].append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job-s", type=float, default=4.0, help="length of one job, seconds (default 4)")
    ap.add_argument("--pairs", type=int, default=10, help="untracked/tracked pairs (default 10)")
    ap.add_argument("--start-stop-reps", type=int, default=10)
    ap.add_argument("--wrapper-reps", type=int, default=5, help="launches of each wrapper mode (default 5)")
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
        f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, job {mu:.2f} s x {args.pairs} "
        "pairs"
    )
    print(f"untracked wall s: {' '.join(f'{x:.3f}' for x in wall['untracked'])}")
    print(f"tracked   wall s: {' '.join(f'{x:.3f}' for x in wall['tracked'])}")
    print(
        f"slowdown (median wall, tracked/untracked - 1): {slowdown * 100:+.2f}%  target <= 1% "
        f"(run-to-run noise of the untracked job here: {noise * 100:.1f}% sd)"
    )
    print(
        f"CPU of our own threads (sampler + writer) / job CPU: {own_pct:.3f}% (mean of {len(own)} tracked "
        "runs; "
        "measured per thread, immune to the machine's noise)"
    )
    print(
        f"track() start+stop, median of {len(start_stop)}: {ss * 1000:.1f} ms "
        f"(min {min(start_stop) * 1000:.1f}, max {max(start_stop) * 1000:.1f})  target < 200 ms"
    )
    costs = wrapper_costs(args.wrapper_reps, tmp)
    bare_cpu = statistics.median(costs["bare"][1])
    print(f"wattsup run wrapper, median of {args.wrapper_reps} launches (command: 1 CPU-s of Python):")
    print(f"  {'mode':<24} {'start after launch s':>21} {'wrapper CPU s':>14} {'vs plain mlflow':>16}")
    plain_extra = statistics.median(costs["plain mlflow run"][1]) - bare_cpu
    for mode, (starts, cpus) in costs.items():
        extra = statistics.median(cpus) - bare_cpu
        ratio = f"{extra / plain_extra:.2f}" if mode != "bare" and plain_extra > 0 else "-"
        print(f"  {mode:<24} {statistics.median(starts):21.3f} {extra:14.2f} {ratio:>16}")
    start_in_run = statistics.median(costs["wattsup run (in a run)"][0])
    start_bare = statistics.median(costs["bare"][0])
    cpu_ok = all(
        statistics.median(costs[m][1]) - bare_cpu <= plain_extra
        for m in ("wattsup run (in a run)", "wattsup run (new run)")
    )
    print(
        f"  in a run, the command starts {start_in_run - start_bare:+.3f} s after a bare launch's start "
        "(target < 0.2 s); wrapper CPU <= plain MLflow run's: " + ("yes" if cpu_ok else "no")
    )
    # the wall ratio is judged against the noise it is measured in; our own CPU share is exact
    ok = (
        own_pct <= 1.0
        and slowdown <= max(0.01, 2 * noise)
        and ss < 0.2
        and start_in_run - start_bare < 0.2
        and cpu_ok
    )
    print("PASS" if ok else "MISS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
