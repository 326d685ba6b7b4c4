"""Many measured jobs, one tracking server, one crash: nothing lost, nothing twice.

N concurrent ``wattsup run -- sleep D`` jobs (1 s sampling; a SLURM array starts them at once)
write to one ``mlflow server``; once half of their runs exist the server is killed (SIGKILL to its
process group, by PID) and started again. Then: every job exited 0, every run is FINISHED, exactly
one run per job, every power point present once (no step twice, none missing), the totals logged
once, no spool file left. Every power point is checked against a witness of the samples each
job's tracker emitted (tests/support/witness: a ``sitecustomize`` hook the jobs load), so a point
lost on its way is told apart from a step a starved sampler never took. Against a
PostgreSQL-backed server (what a lab runs for a study) and a sqlite-backed one (a laptop's).
Spool files the jobs left are replayed with ``wattsup flush`` (what the user's next command does)
before the runs are checked: against sqlite a spool left is not a failure if the flush then
delivers every point; against PostgreSQL no job may leave one.

Sizes: by default what CI affords (:data:`DEFAULT_SIZE`: PostgreSQL 100 jobs x 60 s, the issue's
size; sqlite 30 x 60 s); ``WATTSUP_LOAD_JOBS`` (N) and ``WATTSUP_LOAD_DURATION_S`` (D) set both.
Measured on a 2-core VM shared with other test runs (issue 20, phase 2), wall times of the
test: PostgreSQL 100 x 60 s passed in 386 s and 325 s; sqlite 30 x 60 s took 158 s (one job
exited 1 on a connection broken mid-answer, since treated as an outage) then passed in 117 s
(both defaults together: about 8 min); PostgreSQL 150 x 60 s passed in 315 s; sqlite 100 x 60 s
passed in 278 s; sqlite 150 x 60 s failed in 570 s (7 jobs left an extra empty RUNNING run: a
creation at the job's start timed out at the client after the server made the run; 13 jobs left
spools that the flush delivered in full; no point lost). ``WATTSUP_LOAD_SERVER_WORKERS`` sets the server's worker processes (default 4, MLflow's
own). What happened is printed (``pytest -s``) and kept in ``$WATTSUP_LOAD_REPORT_DIR`` when set
(the report as JSON, the jobs' logs, spool files left, the witness files and the server's log):
the jobs' CPU, the requests the server answered (per second, by endpoint and status), the
outage, and every problem found.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import time
from pathlib import Path

import pytest
from support.helpers import WATTSUP
from support.paths import REPO
from support.postgres import mlflow_on_postgres, unavailable
from support.server import MlflowServer

#: what CI runs (2 shared cores): (jobs, seconds each) per backend; the issue's size is 100 x 60 s
DEFAULT_SIZE = {"postgresql": (100, 60.0), "sqlite": (30, 60.0)}
WORKERS = int(os.environ.get("WATTSUP_LOAD_SERVER_WORKERS", "4"))
CLK_TCK = os.sysconf("SC_CLK_TCK")
WITNESS = REPO / "tests" / "support" / "witness"


def group_cpu_s(pgid: int | None = None, sid: int | None = None) -> float:
    """CPU seconds (user + system, reaped children included) of the live processes of a
    process group or session."""
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if (pgid is not None and int(fields[2]) == pgid) or (sid is not None and int(fields[3]) == sid):
            total += sum(int(x) for x in fields[11:15]) / CLK_TCK
    return total


@contextlib.contextmanager
def tracking_server(backend: str, workdir: Path):
    """(server, a function giving the database's CPU seconds so far)."""
    if backend == "postgresql":
        reason = unavailable()
        if reason:
            pytest.skip(reason)
        with mlflow_on_postgres(workdir / "server", workers=WORKERS, timeout_s=300) as (pg, srv):
            yield srv, lambda: group_cpu_s(sid=os.getsid(pg.pid))
    else:
        srv = MlflowServer(workdir / "server", workers=WORKERS)
        srv.start(timeout_s=300)
        try:
            yield srv, lambda: 0.0
        finally:
            srv.stop()


def count_runs(uri: str, experiment: str) -> int:
    from mlflow_wattsup.sink.rest import RestClient

    c = RestClient(uri, timeout_s=5)
    try:
        exp = c.get_experiment_by_name(experiment)
        return 0 if exp is None else sum(1 for _ in c.search_runs([exp["experiment_id"]]))
    except Exception:
        return -1  # the server is away


def request_stats(lines) -> dict:
    """Requests the server answered: total, mean and peak per second, by endpoint and status."""
    if not lines:
        return {"total": 0}
    per_s = collections.Counter(t for t, *_ in lines)
    stamps = sorted(datetime.datetime.strptime(t, "%Y/%m/%d %H:%M:%S") for t in per_s)
    span = max(1.0, (stamps[-1] - stamps[0]).total_seconds() + 1)
    return {
        "total": len(lines),
        "span_s": span,
        "mean_per_s": len(lines) / span,
        "peak_per_s": max(per_s.values()),
        "by_endpoint": dict(collections.Counter(p.split("?")[0] for _, _, p, _ in lines).most_common()),
        "by_status": dict(collections.Counter(str(s) for *_, s in lines)),
    }


def size(backend: str) -> tuple[int, float]:
    """(jobs, seconds each): ``$WATTSUP_LOAD_JOBS`` / ``$WATTSUP_LOAD_DURATION_S`` when set, else
    :data:`DEFAULT_SIZE`."""
    n_jobs, duration_s = DEFAULT_SIZE[backend]
    return (
        int(os.environ.get("WATTSUP_LOAD_JOBS") or n_jobs),
        float(os.environ.get("WATTSUP_LOAD_DURATION_S") or duration_s),
    )


def run_load(
    srv: MlflowServer,
    db_cpu,
    experiment: str,
    tmp: Path,
    n_jobs: int,
    duration_s: float,
    strict_spool: bool = True,
) -> dict:
    spool = tmp / "spool"
    logs = tmp / "logs"
    logs.mkdir()
    witness = tmp / "witness"  # what each job's tracker emitted (support/witness/sitecustomize.py)
    witness.mkdir()
    pythonpath = os.pathsep.join(p for p in (str(WITNESS), os.environ.get("PYTHONPATH", "")) if p)
    env = dict(os.environ, MLFLOW_TRACKING_URI=srv.uri, WATTSUP_SPOOL_DIR=str(spool))
    env.update(PYTHONPATH=pythonpath, WATTSUP_TEST_WITNESS_DIR=str(witness))
    deadline_s = (
        duration_s + 300 + 6 * n_jobs
    )  # start-up of N wrappers on a small machine, the outage, the replay
    report: dict = {"jobs": n_jobs, "duration_s": duration_s, "server_workers": WORKERS, "problems": []}
    problems = report["problems"]
    startup_cpu = group_cpu_s(pgid=srv.proc.pid)  # the server's own start-up, not the jobs' doing
    t0 = time.monotonic()
    jobs = []
    for i in range(n_jobs):
        with open(logs / f"job{i:03d}.err", "wb") as err:
            argv = [*WATTSUP, "run", "--experiment", experiment, "--quiet", "--interval", "1"]
            argv += ["--run-name", f"job{i:03d}", "--", "sleep", f"{duration_s:g}"]
            jobs.append(subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=err))
    report["launch_s"] = time.monotonic() - t0
    ended: dict[int, tuple[int, float]] = {}  # job index -> (exit code, CPU s), reaped with wait4

    def reap() -> None:
        for i, j in enumerate(jobs):
            if i not in ended:
                pid, status, ru = os.wait4(j.pid, os.WNOHANG)
                if pid:
                    ended[i] = (os.waitstatus_to_exitcode(status), ru.ru_utime + ru.ru_stime)

    # the crash: once half of the runs exist (half the jobs are under way, the rest starting)
    server_cpu = 0.0
    while (n := count_runs(srv.uri, experiment)) < n_jobs / 2:
        reap()
        if time.monotonic() - t0 > deadline_s or len(ended) == n_jobs:
            problems.append(f"only {n} runs appeared before the jobs ended or the deadline")
            break
        time.sleep(1)
    report["runs_at_kill"] = n
    report["kill_at_s"] = time.monotonic() - t0
    server_cpu += group_cpu_s(pgid=srv.proc.pid)
    srv.kill()
    t_kill = time.monotonic()
    srv.start(timeout_s=300)
    report["outage_s"] = time.monotonic() - t_kill
    startup_cpu += group_cpu_s(pgid=srv.proc.pid)

    # every job ends by itself
    while len(ended) < n_jobs and time.monotonic() - t0 < deadline_s:
        time.sleep(0.5)
        reap()
    for i, j in enumerate(jobs):
        if i not in ended:
            problems.append(f"job{i:03d} still running {deadline_s:.0f} s after launch: killed")
            j.send_signal(signal.SIGKILL)
            _, status, ru = os.wait4(j.pid, 0)
            ended[i] = (os.waitstatus_to_exitcode(status), ru.ru_utime + ru.ru_stime)
        j.returncode = ended[i][0]  # so that Popen does not wait for it again
    report["all_ended_s"] = time.monotonic() - t0
    codes = {i: code for i, (code, _) in ended.items()}
    cpu = [c for _, c in ended.values()]
    server_cpu += group_cpu_s(pgid=srv.proc.pid)
    report["server_cpu_s"] = server_cpu - startup_cpu  # serving the jobs (its two start-ups excluded)
    report["server_startup_cpu_s"] = startup_cpu
    report["database_cpu_s"] = db_cpu()
    report["job_cpu_s"] = {"median": statistics.median(cpu), "mean": statistics.fmean(cpu), "max": max(cpu)}
    for i, code in codes.items():
        if code != 0:
            tail = (logs / f"job{i:03d}.err").read_text(errors="replace").strip().splitlines()[-3:]
            problems.append(f"job{i:03d} exited {code}: {' | '.join(tail)}")
    report["notices"] = dict(
        collections.Counter(
            line.split(":")[1].strip()[:60] if line.count(":") > 1 else line[:60]
            for f in logs.iterdir()
            for line in f.read_text(errors="replace").splitlines()
            if line.startswith("wattsup")
        ).most_common(12)
    )
    report["spool_left"] = sorted(p.name for p in spool.glob("*.jsonl")) if spool.exists() else []
    if report["spool_left"]:
        # what a user's next `wattsup` command does; a spool replayed counts as not lost only if
        # the checks below then find every point
        if (tmp / "spool-left").exists():
            shutil.rmtree(tmp / "spool-left")
        shutil.copytree(spool, tmp / "spool-left")
        flush = subprocess.run(
            [*WATTSUP, "flush", "--spool-dir", str(spool)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        report["flush"] = {"exit": flush.returncode, "said": flush.stderr.strip().splitlines()[-5:]}
        report["spool_left_after_flush"] = sorted(p.name for p in spool.glob("*.jsonl"))
        if report["spool_left_after_flush"]:
            problems.append(f"{len(report['spool_left_after_flush'])} spool file(s) left after wattsup flush")
        if strict_spool:
            problems.append(
                f"{len(report['spool_left'])} spool file(s) left by the jobs: {report['spool_left'][:5]}"
            )
    report["requests"] = request_stats(srv.requests())
    emitted = {}
    for i, j in enumerate(jobs):
        steps = []
        for f in witness.glob(f"{j.pid}-*.steps"):
            steps += [int(line.split()[0]) for line in f.read_text().splitlines() if line.strip()]
        emitted[f"job{i:03d}"] = steps
    check_runs(srv.uri, experiment, report, emitted)
    return report


def check_runs(uri: str, experiment: str, report: dict, emitted: dict[str, list[int]]) -> None:
    """Every job's run, checked against what its tracker emitted (``emitted``: run name -> steps)."""
    from mlflow.tracking import MlflowClient

    problems = report["problems"]
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = []
    if exp is not None:
        token = None
        while True:
            page = client.search_runs([exp.experiment_id], max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                break
    names = collections.Counter(r.info.run_name for r in runs)
    report["runs"] = len(runs)
    report["runs_finished"] = sum(r.info.status == "FINISHED" for r in runs)
    missing = [f"job{i:03d}" for i in range(report["jobs"]) if f"job{i:03d}" not in names]
    if missing:
        problems.append(f"{len(missing)} job(s) without a run: {missing[:5]}")
    power = {
        r.info.run_id: [m.step for m in client.get_metric_history(r.info.run_id, "system/wattsup_power_w")]
        for r in runs
    }
    # a job with several runs: the one that holds its values is checked below, the others are
    # counted apart (an extra run is a defect, but not lost data unless it holds points)
    main: dict[str, object] = {}
    extra_runs = []
    for name in names:
        rs = sorted((r for r in runs if r.info.run_name == name), key=lambda r: -len(power[r.info.run_id]))
        main[name] = rs[0]
        for r in rs[1:]:
            extra_runs.append(f"{name}: {r.info.status}, {len(power[r.info.run_id])} power points")
    report["extra_runs"] = extra_runs
    if extra_runs:
        problems.append(f"{len(extra_runs)} extra run(s) of a job: {extra_runs[:5]}")
    points = {
        "emitted": 0,
        "present": 0,
        "in_extra_runs": sum(len(power[r.info.run_id]) for r in runs if main[r.info.run_name] is not r),
        "lost": 0,
        "duplicated": 0,
        "not_emitted": 0,
        "sampler_skipped_steps": 0,
    }
    longest_skip = 0
    for name, r in main.items():
        if r.info.status != "FINISHED":
            problems.append(f"{name}: {r.info.status}")
        steps = power[r.info.run_id]
        sent = emitted.get(name, [])
        points["emitted"] += len(sent)
        points["present"] += len(steps)
        dup = len(steps) - len(set(steps))
        if dup:
            points["duplicated"] += dup
            problems.append(f"{name}: {dup} power point(s) twice")
        if not sent:
            problems.append(f"{name}: no witness of the samples its tracker emitted")
            continue
        lost = sorted(set(sent) - set(steps))
        if lost:
            points["lost"] += len(lost)
            problems.append(
                f"{name}: {len(lost)} of {len(sent)} emitted power points never reached the store: {lost[:8]}"
            )
        extra = sorted(set(steps) - set(sent))
        if extra:
            points["not_emitted"] += len(extra)
            problems.append(
                f"{name}: {len(extra)} power points in the store its tracker never emitted: {extra[:8]}"
            )
        # steps the sampler itself did not take (it was starved): not a loss, but counted
        ordered = sorted(set(sent))
        skips = [b - a - 1 for a, b in zip(ordered, ordered[1:], strict=False) if b - a > 1]
        points["sampler_skipped_steps"] += sum(skips)
        longest_skip = max([longest_skip, *skips])
        if "duration_s" not in r.data.metrics:
            problems.append(f"{name}: no duration_s (totals not logged)")
            continue
        for key in ("energy_kwh", "carbon_g", "cpu_time_s"):
            n = len(client.get_metric_history(r.info.run_id, key))
            if n != 1:
                problems.append(f"{name}: {key} logged {n} times")
    points["longest_sampler_skip"] = longest_skip
    report["power_points"] = points


def summary(backend: str, r: dict) -> str:
    req = r.get("requests", {})
    lines = [
        f"load test, {backend}: {r['jobs']} jobs x {r['duration_s']:g} s, server workers {r['server_workers']}",
        f"  launched in {r['launch_s']:.1f} s; killed at {r['kill_at_s']:.0f} s with {r['runs_at_kill']} runs; "
        f"back after {r['outage_s']:.0f} s; all ended at {r['all_ended_s']:.0f} s",
        f"  runs {r.get('runs')} ({r.get('runs_finished')} FINISHED); power points {r.get('power_points')}; "
        f"spool left {len(r['spool_left'])} (after wattsup flush {len(r.get('spool_left_after_flush', []))}: "
        f"{r.get('flush', {}).get('said', [])[-1:]})",
        f"  wall time {r.get('wall_s', 0):.0f} s (server start-ups included)",
        f"  CPU-s per job: median {r['job_cpu_s']['median']:.2f}, mean {r['job_cpu_s']['mean']:.2f}, max "
        f"{r['job_cpu_s']['max']:.2f}; server {r['server_cpu_s']:.0f} CPU-s ({r['server_cpu_s'] / r['jobs']:.2f} per "
        f"job), database {r['database_cpu_s']:.0f} CPU-s",
        f"  requests: {req.get('total', 0)}, {req.get('mean_per_s', 0):.1f}/s mean over {req.get('span_s', 0):.0f} s, "
        f"peak {req.get('peak_per_s', 0)}/s; by status {req.get('by_status')}",
        f"  by endpoint: {req.get('by_endpoint')}",
        f"  job notices: {r['notices']}",
        f"  problems ({len(r['problems'])}):",
        *[f"    {p}" for p in r["problems"][:40]],
    ]
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_many_jobs_one_server_killed_and_restarted_lose_nothing(backend, tmp_path, experiment):
    t0 = time.monotonic()
    n_jobs, duration_s = size(backend)
    with tracking_server(backend, tmp_path) as (srv, db_cpu):
        report = run_load(
            srv, db_cpu, experiment, tmp_path, n_jobs, duration_s, strict_spool=backend == "postgresql"
        )
        report["wall_s"] = time.monotonic() - t0
    text = summary(backend, report)
    print(text)
    out = os.environ.get("WATTSUP_LOAD_REPORT_DIR")
    if out:
        keep = Path(out) / f"load-{backend}-{n_jobs}x{duration_s:g}s-{int(time.time())}"
        keep.mkdir(parents=True)
        (keep / "report.json").write_text(json.dumps(report, indent=1))
        (keep / "report.txt").write_text(text + "\n")
        for d in ("logs", "spool", "spool-left", "witness"):  # what the jobs said, left and emitted
            if (tmp_path / d).exists():
                shutil.copytree(tmp_path / d, keep / d)
        shutil.copy(srv.workdir / "server.log", keep / "server.log")
    assert not report["problems"], text
