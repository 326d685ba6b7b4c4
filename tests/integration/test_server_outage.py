"""Nothing lost under outages and concurrency, with a real `mlflow server` on 127.0.0.1."""

import os
import subprocess
import time

import pytest
from support.helpers import WATTSUP, perl_burn
from support.server import MlflowServer


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = MlflowServer(tmp_path_factory.mktemp("server"))
    s.start()
    yield s
    s.stop()


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _runs(uri, experiment):
    c = _client(uri)
    exp = c.get_experiment_by_name(experiment)
    return c.search_runs([exp.experiment_id]) if exp else []


@pytest.mark.slow  # the scenario is timed: 3 s of samples queued, a 30 s outage, 3 s back
def test_outage_spools_and_replays_every_sample_exactly_once(tmp_path, experiment):
    srv = MlflowServer(tmp_path / "srv")
    srv.start()
    spool = tmp_path / "spool"
    env = dict(os.environ, MLFLOW_TRACKING_URI=srv.uri, WATTSUP_SPOOL_DIR=str(spool))
    stop = tmp_path / "stop"
    burn = (
        f"import os, time\nwhile not os.path.exists({str(stop)!r}):\n    sum(range(20000)); time.sleep(0.01)"
    )
    job = subprocess.Popen(
        [*WATTSUP, "run", "--experiment", experiment, "--interval", "1", "--", "python3", "-c", burn],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 30
        while not _runs(srv.uri, experiment):
            assert time.time() < deadline, "the run never appeared"
            time.sleep(0.5)
        time.sleep(3)
        srv.stop()  # the server goes away for 30 s while the job goes on
        assert srv.down()
        time.sleep(30)
        assert job.poll() is None, "the tracked job must not be affected by the outage"
        assert list(spool.glob("*.jsonl")), "values must be on disk while the store is down"
        srv.start()
        time.sleep(3)  # a few samples with the server back, then the job ends
        stop.touch()
        out, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    try:
        assert job.returncode == 0, err
        assert "tracking store unreachable" in err and "tracking store back" in err
        [run] = _runs(srv.uri, experiment)
        c = _client(srv.uri)
        assert run.info.status == "FINISHED"
        steps = [m.step for m in c.get_metric_history(run.info.run_id, "system/wattsup_power_w")]
        assert len(steps) == len(set(steps)), "a sample arrived twice"
        duration = run.data.metrics["duration_s"]
        assert max(steps) >= duration - 2
        assert len(steps) >= 0.9 * duration, f"{len(steps)} samples for {duration:.0f} s: some were lost"
        for key in ("energy_kwh", "cpu_time_s", "carbon_g", "duration_s"):
            assert len(c.get_metric_history(run.info.run_id, key)) == 1, f"{key} logged more than once"
        assert run.data.metrics["cpu_time_s"] > 1
        assert not list(spool.glob("*.jsonl")), "the spool is emptied once replayed"
    finally:
        srv.stop()


def test_eight_concurrent_runs_do_not_double_count(server, experiment, tmp_path):
    """8 jobs at once on 2 cores: each run complete, and the CPU energy attributed to them adds
    up to no more than the machine's estimated total over the same time."""
    from mlflow_wattsup.meters.proctree import MachineMeter

    env = dict(
        os.environ,
        MLFLOW_TRACKING_URI=server.uri,
        WATTSUP_SPOOL_DIR=str(tmp_path / "spool"),
        WATTSUP_CPU_W_PER_THREAD="10",
        WATTSUP_POWERCAP_ROOT=str(tmp_path / "no-rapl"),
    )
    machine = MachineMeter()
    before = machine.read().busy_cpu_s
    jobs = [
        subprocess.Popen(
            [
                *WATTSUP,
                "run",
                "--experiment",
                experiment,
                "--quiet",
                "--run-name",
                f"job{i}",
                "--",
                "sh",
                "-c",
                perl_burn(15, 1),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    for j in jobs:
        out, err = j.communicate(timeout=180)
        assert j.returncode == 0, err
    busy = machine.read().busy_cpu_s - before
    runs = _runs(server.uri, experiment)
    assert len(runs) == 8 and all(r.info.status == "FINISHED" for r in runs)
    run_cpu_j = [r.data.metrics["energy_cpu_kwh"] * 3.6e6 for r in runs]
    for r in runs:
        assert r.data.metrics["cpu_time_s"] == pytest.approx(1.5, abs=0.3)
        assert r.data.tags["wattsup.source.cpu"] == "estimate"
        assert r.data.metrics["machine_energy_cpu_kwh"] >= r.data.metrics["energy_cpu_kwh"] * 0.999
    # whole machine over the whole window, same model (10 W per busy CPU-second)
    machine_j = 10.0 * busy
    assert sum(run_cpu_j) <= machine_j * 1.01 + 0.5
    assert sum(run_cpu_j) == pytest.approx(10.0 * 8 * 1.5, rel=0.15)
