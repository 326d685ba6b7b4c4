"""Overhead of ``mlflow_wattsup.track()`` and of the ``wattsup run`` wrapper, each against
baselines measured in the same run.

    python benchmarks/overhead.py [--job-s 4] [--pairs 10] [--wrapper-reps 3] [--wrapper-only]

``track()``: slowdown of a fixed CPU-bound job at 1 s sampling, and the cost of entering + leaving
``track()``. The job is a fixed pure-Python loop (the worst case: it holds the GIL the sampler
thread needs). Untracked and tracked runs alternate (A B A B ...) so drift on a shared machine
hits both alike; the slowdown is median(tracked) / median(untracked) - 1 over wall time (on a
shared VM that is within its noise, which is printed), and, measured per thread and so immune to
that noise, the CPU seconds our sampler and writer threads used per CPU second of the job.
Targets: slowdown <= 1%, start+stop < 0.2 s.

``wattsup run`` (issue 20's table): for a sqlite file and an ``mlflow server`` (HTTP), a new run
and inside an existing run (``$MLFLOW_RUN_ID``, as under ``mlflow run``): how soon the command
(1 CPU-s of Python) starts after launch, the wrapper's CPU (the launched tree's CPU from
``wait4`` minus the command's own, which it reports) and the peak RSS; beside a bare launch, a
plain ``mlflow.start_run()`` around the same subprocess, and CodeCarbon's
``OfflineEmissionsTracker``. For the same launches, the run's own ``overhead_cpu_s`` metric and
what the wrapper spends outside it (after it is taken, in processes of its own, at exit).
Targets: a new run's command starts <= 0.3 s after launch; in a run, <= 0.2 s after a bare
launch's start; over HTTP the wrapper's CPU <= 0.5 CPU-s and 5x below CodeCarbon's; never more
than a plain ``mlflow.start_run()``.
"""

from __future__ import annotations

import argparse
import ast
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
    "t = time.process_time()\nwhile time.process_time() - t < 1.0: sum(range(1000))\n"
    "open(sys.argv[1] + '.cpu', 'w').write(repr(time.process_time()))"
)
PLAIN_MLFLOW = (
    "import os, subprocess, sys, mlflow\n"
    "if not os.environ.get('MLFLOW_RUN_ID'):\n    mlflow.set_experiment('plain')\n"
    "with mlflow.start_run():\n    subprocess.run(sys.argv[1:], check=True)"
)
CODECARBON = (
    "import subprocess, sys\nfrom codecarbon import OfflineEmissionsTracker\n"
    "t = OfflineEmissionsTracker(country_iso_code='CAN', save_to_file=False, log_level='error')\n"
    "t.start()\nsubprocess.run(sys.argv[1:], check=True)\nt.stop()"
)
#: ``wattsup`` as ``python -m mlflow_wattsup`` would run it, plus an atexit hook (registered first,
#: so it runs last) writing the wrapper's own CPU and its reaped children's CPU just before the
#: interpreter tears down: with the command's own CPU this splits the wrapper's cost exactly
ACCOUNTED_WATTSUP = (
    "import atexit, os, resource, runpy\nout = os.environ.pop('BENCH_ACCOUNT_FILE')\n"
    "def _account():\n"
    "    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "    open(out, 'w').write(repr((s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime)))\n"
    "atexit.register(_account)\nrunpy.run_module('mlflow_wattsup', run_name='__main__', alter_sys=True)"
)


class Launch:
    """One launch: start latency, CPU of the whole tree and of the command alone, peak RSS."""

    def __init__(self, start_s, tree_cpu_s, command_cpu_s, maxrss_mb, account=None, overhead_metric_s=None):
        self.start_s, self.tree_cpu_s, self.command_cpu_s = start_s, tree_cpu_s, command_cpu_s
        self.maxrss_mb = maxrss_mb
        self.account = account  # (wrapper's own CPU at exit, its reaped children's CPU) or None
        self.overhead_metric_s = overhead_metric_s  # the run's overhead_cpu_s, for wattsup launches

    @property
    def wrapper_cpu_s(self) -> float:
        """CPU of everything but the command: the wrapper, its other children, its exit."""
        return self.tree_cpu_s - self.command_cpu_s


#: runs argv[2:] and writes its tree's CPU and peak RSS (``wait4``) to argv[1]: a small process,
#: so that the peak RSS is the launched tree's own (a child's maxrss starts at its parent's RSS at
#: fork, which here would be this benchmark's, MLflow imported)
LAUNCHER = (
    "import os, sys\npid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)\n"
    "_, status, ru = os.wait4(pid, 0)\n"
    "open(sys.argv[1], 'w').write(repr((ru.ru_utime + ru.ru_stime, ru.ru_maxrss)))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))"
)


def launch(argv, env, marker) -> Launch:
    """Run ``argv`` once (through :data:`LAUNCHER`): start latency, the tree's CPU, the
    command's own CPU, the peak RSS (the largest process of the tree: the wrapper's own peak
    whenever it is bigger than the command)."""
    import ast
    import subprocess

    for f in (marker, marker + ".cpu"):
        if os.path.exists(f):
            os.remove(f)
    usage = marker + ".rusage"
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, usage, *argv],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if r.returncode != 0:
        raise RuntimeError(f"{argv[:4]} exited {r.returncode}: {r.stderr.decode(errors='replace')[-2000:]}")
    with open(marker) as f:
        start = float(f.read()) - t0
    with open(marker + ".cpu") as f:
        command_cpu = float(f.read())
    with open(usage) as f:
        tree_cpu, maxrss_kb = ast.literal_eval(f.read())
    return Launch(start, tree_cpu, command_cpu, maxrss_kb / 1024)


def wrapper_table(reps: int, tmp: str) -> dict[tuple[str, str], list[Launch]]:
    """Every mode x store, ``reps`` launches each, interleaved (A B C ... C B A ...) so that
    drift on a shared machine hits all alike. Keys: (store, mode)."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    from mlflow.tracking import MlflowClient
    from support.server import MlflowServer

    server = MlflowServer(os.path.join(tmp, "server"))
    print(f"starting an mlflow server (sqlite-backed) for the HTTP store: {server.start():.0f} s", flush=True)
    try:
        stores = {"sqlite": f"sqlite:///{tmp}/wrapper.db", "HTTP": server.uri}
        marker = os.path.join(tmp, "started")
        cmd = [sys.executable, "-c", WRAPPED, marker]
        base = dict(os.environ, WATTSUP_SPOOL_DIR=os.path.join(tmp, "spool"), MLFLOW_DISABLE_TELEMETRY="true")
        base.pop("MLFLOW_RUN_ID", None)
        clients = {name: MlflowClient(uri) for name, uri in stores.items()}
        known = {name: c.create_experiment("known") for name, c in clients.items()}
        account_file = os.path.join(tmp, "account")
        wattsup = [sys.executable, "-c", ACCOUNTED_WATTSUP, "run", "--quiet"]
        counter = iter(range(10**9))

        def in_run(store):
            return clients[store].create_run(known[store]).info.run_id

        def modes():
            out = {
                ("-", "bare launch"): lambda: ([*cmd], base, None),
                ("-", "CodeCarbon OfflineEmissionsTracker"): lambda: (
                    [sys.executable, "-c", CODECARBON, *cmd],
                    base,
                    None,
                ),
            }
            for store, uri in stores.items():
                env = dict(base, MLFLOW_TRACKING_URI=uri)
                out[(store, "mlflow.start_run() (new run)")] = lambda env=env: (
                    [sys.executable, "-c", PLAIN_MLFLOW, *cmd],
                    env,
                    None,
                )
                out[(store, "mlflow.start_run() (in a run)")] = lambda env=env, store=store: (
                    [sys.executable, "-c", PLAIN_MLFLOW, *cmd],
                    dict(env, MLFLOW_RUN_ID=in_run(store)),
                    None,
                )

                def new_run(env=env, store=store):
                    tag = f"launch{next(counter)}"
                    argv = [*wattsup, "--experiment", "new", "--tag", f"bench={tag}", "--", *cmd]
                    return argv, dict(env, BENCH_ACCOUNT_FILE=account_file), (store, None, tag)

                def existing_run(env=env, store=store):
                    run_id = in_run(store)
                    return (
                        [*wattsup, "--", *cmd],
                        dict(env, MLFLOW_RUN_ID=run_id, BENCH_ACCOUNT_FILE=account_file),
                        (
                            store,
                            run_id,
                            None,
                        ),
                    )

                out[(store, "wattsup run (new run)")] = new_run
                out[(store, "wattsup run (in a run)")] = existing_run
            return out

        table = modes()
        results = {k: [] for k in table}
        # warm-up: database schemas, the server's first requests, file caches
        for key in (("sqlite", "wattsup run (new run)"), ("HTTP", "wattsup run (new run)")):
            argv, env, _ = table[key]()
            launch(argv, env, marker)
        for i in range(reps):
            items = list(table.items()) if i % 2 == 0 else list(reversed(table.items()))
            for key, make in items:
                argv, env, wattsup_run = make()
                one = launch(argv, env, marker)
                if wattsup_run is not None:
                    store, run_id, tag = wattsup_run
                    with open(account_file) as f:
                        one.account = ast.literal_eval(f.read())  # (self CPU, children CPU)
                    c = clients[store]
                    if run_id is None:
                        exp = c.get_experiment_by_name("new")
                        [run] = c.search_runs([exp.experiment_id], f"tags.bench = '{tag}'")
                    else:
                        run = c.get_run(run_id)
                    one.overhead_metric_s = run.data.metrics.get("overhead_cpu_s")
                results[key].append(one)
            print(f"  round {i + 1}/{reps} done", flush=True)
        return results
    finally:
        server.stop()


def print_wrapper_table(results: dict, reps: int) -> dict[str, float]:
    med = statistics.median
    cc = med([x.wrapper_cpu_s for x in results[("-", "CodeCarbon OfflineEmissionsTracker")]])
    bare_start = med([x.start_s for x in results[("-", "bare launch")]])
    print(
        f"\nwattsup run wrapper, median of {reps} launches each (command: 1 CPU-s of Python; "
        "wrapper CPU = CPU of the launched tree - the command's own CPU, as it reports it):"
    )
    head = f"  {'store':<7} {'mode':<36} {'start after launch s':>21} {'wrapper CPU s':>14} {'peak RSS MB':>12} {'CPU / CodeCarbon':>17}"
    print(head)
    for (store, mode), launches in results.items():
        cpu = med([x.wrapper_cpu_s for x in launches])
        print(
            f"  {store:<7} {mode:<36} {med([x.start_s for x in launches]):21.3f} {cpu:14.2f} "
            f"{med([x.maxrss_mb for x in launches]):12.0f} {cpu / cc if cc > 0 else float('nan'):17.2f}"
        )
    print(
        "  (peak RSS: the largest process of the launched tree, from wait4: the wrapper's own peak "
        "whenever it is bigger than the command, whose alone is the bare launch's)"
    )
    print("\noverhead_cpu_s (the run's own metric) beside the wrapper's CPU, same launches (medians, CPU-s):")
    print(
        f"  {'store':<7} {'mode':<24} {'overhead_cpu_s':>15} {'+ after it':>11} {'+ exit':>7} {'= wrapper CPU':>14}"
    )
    for (store, mode), launches in results.items():
        if not mode.startswith("wattsup"):
            continue
        metric = [x.overhead_metric_s or 0.0 for x in launches]
        # at the atexit hook: own CPU + own children's (the reaped children's CPU less the command's)
        at_exit = [x.account[0] + x.account[1] - x.command_cpu_s for x in launches]
        total = [x.wrapper_cpu_s for x in launches]
        after = [a - m for a, m in zip(at_exit, metric, strict=True)]
        teardown = [t - a for t, a in zip(total, at_exit, strict=True)]
        print(
            f"  {store:<7} {mode[12:]:<24} {med(metric):15.2f} {med(after):11.2f} {med(teardown):7.2f} "
            f"{med(total):14.2f}"
        )
    print(
        "  overhead_cpu_s = the wattsup process's own CPU + its reaped children's - the command's (wait4), "
        "taken after the description is made; after it: the last batch and the status update, the summary, "
        "the atexit hooks; exit: interpreter teardown after the atexit hook"
    )
    rows = {f"{store} {mode}": med([x.wrapper_cpu_s for x in ls]) for (store, mode), ls in results.items()}
    rows.update(
        {f"{store} {mode} start": med([x.start_s for x in ls]) for (store, mode), ls in results.items()}
    )
    rows["bare start"] = bare_start
    rows["codecarbon cpu"] = cc
    return rows


def track_overhead(args, tmp: str) -> bool:
    """The in-process ``track()`` part: slowdown, our threads' CPU share, start+stop."""
    import mlflow

    import mlflow_wattsup

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
    # the wall ratio is judged against the noise it is measured in; our own CPU share is exact
    return own_pct <= 1.0 and slowdown <= max(0.01, 2 * noise) and ss < 0.2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--job-s", type=float, default=4.0, help="length of one job, seconds (default 4)")
    ap.add_argument("--pairs", type=int, default=10, help="untracked/tracked pairs (default 10)")
    ap.add_argument("--start-stop-reps", type=int, default=10)
    ap.add_argument("--wrapper-reps", type=int, default=3, help="launches of each wrapper mode (default 3)")
    ap.add_argument("--wrapper-only", action="store_true", help="only the wattsup run wrapper table")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="wattsup-bench-")
    ok = True if args.wrapper_only else track_overhead(args, tmp)
    rows = print_wrapper_table(wrapper_table(args.wrapper_reps, tmp), args.wrapper_reps)
    bare = rows["bare start"]
    print("\ntargets (issue 20):")
    checks = []
    for store in ("HTTP", "sqlite"):
        start = rows[f"{store} wattsup run (new run) start"]
        checks.append(
            (f"{store}: a new run's command starts <= 0.3 s after launch", start <= 0.3, f"{start:.2f} s")
        )
        start_in = rows[f"{store} wattsup run (in a run) start"]
        checks.append(
            (
                f"{store}: in a run, <= 0.2 s after a bare launch's start",
                start_in - bare < 0.2,
                f"{start_in - bare:+.2f} s",
            )
        )
    for mode in ("new run", "in a run"):
        cpu = rows[f"HTTP wattsup run ({mode})"]
        checks.append((f"HTTP, {mode}: wrapper CPU <= 0.5 CPU-s", cpu <= 0.5, f"{cpu:.2f} CPU-s"))
        checks.append(
            (
                f"HTTP, {mode}: 5x below CodeCarbon's offline tracker",
                cpu * 5 <= rows["codecarbon cpu"],
                f"{rows['codecarbon cpu'] / cpu if cpu > 0 else float('inf'):.1f}x below",
            )
        )
    for store in ("HTTP", "sqlite"):
        for mode in ("new run", "in a run"):
            ours, plain = rows[f"{store} wattsup run ({mode})"], rows[f"{store} mlflow.start_run() ({mode})"]
            checks.append(
                (
                    f"{store}, {mode}: wrapper CPU <= a plain mlflow.start_run()'s",
                    ours <= plain,
                    f"{ours:.2f} vs {plain:.2f}",
                )
            )
    for label, good, value in checks:
        print(f"  {'PASS' if good else 'MISS'}  {label}: {value}")
    ok = ok and all(good for _, good, _ in checks)
    print("PASS" if ok else "MISS")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
