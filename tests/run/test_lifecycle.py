"""The one run lifecycle: which run, who ends it, fast start, own CPU, spool locks and the
automatic replay of what an earlier job could not deliver."""

import os
import subprocess
import sys
import time

import pytest
from support.helpers import WATTSUP, only_run, wattsup


def test_known_run_starts_the_command_before_mlflow_is_ready(tracking_uri, client, experiment, tmp_path):
    """Inside `mlflow run` (MLFLOW_RUN_ID set) the command starts at once; the samples taken
    while MLflow was being imported are still logged, and the command sees the run."""
    exp_id = client.create_experiment(experiment)
    run_id = client.create_run(exp_id).info.run_id
    seen = tmp_path / "seen"
    code = (
        "import os, time; t = time.time()\n"
        f"open({str(seen)!r}, 'w').write(os.environ['MLFLOW_RUN_ID'] + ' ' + os.environ['WATTSUP_RUN_ID'])\n"
        "while time.time() - t < 2.5: sum(range(10000))"
    )
    r = wattsup("run", "--interval", "0.5", "--", sys.executable, "-c", code, env={"MLFLOW_RUN_ID": run_id})
    assert r.returncode == 0, r.stderr
    assert seen.read_text() == f"{run_id} {run_id}"
    run = client.get_run(run_id)
    assert run.info.status == "RUNNING"  # not ours to end
    steps = [m.step for m in client.get_metric_history(run_id, "system/wattsup_power_w")]
    assert steps and min(steps) <= 1, steps  # the first samples, taken before the sink existed
    assert run.data.metrics["overhead_cpu_s"] > 0
    assert run.data.tags["wattsup.command"].startswith(sys.executable)


def test_unknown_run_id_after_the_start_keeps_the_measurement(tracking_uri, client, experiment):
    """A wrong --run-id is only found once the command runs: it is said in one line and the
    measurement goes to a new run instead of being lost."""
    r = wattsup("run", "--run-id", "0" * 32, "--experiment", experiment, "--quiet", "--", "true")
    assert r.returncode == 0, r.stderr
    assert "not found" in r.stderr and "new run" in r.stderr
    assert "energy_kwh" in only_run(client, experiment).data.metrics


def _dead_spool(spool_dir, header, lines):
    """A spool file as a job that died leaves it (written by the real SpoolFile, then released)."""
    from mlflow_wattsup.sink.spool import SpoolFile

    f = SpoolFile(spool_dir, header.get("run_id"))
    f.append(header, lines)
    f.close()
    return f.path


def test_next_wattsup_command_replays_leftover_spools(tracking_uri, client, experiment, tmp_path):
    spool = tmp_path / "spool"
    exp_id = client.create_experiment(experiment)
    run_id = client.create_run(exp_id).info.run_id
    path = _dead_spool(
        spool,
        {"run_id": run_id, "tracking_uri": tracking_uri},
        [{"k": "metric", "key": "energy_kwh", "value": 0.5, "timestamp": 1, "step": 0}],
    )
    r = wattsup("regions", "FRA", env={"WATTSUP_SPOOL_DIR": str(spool)})
    assert r.returncode == 0, r.stderr
    assert "replaying 1 spool file(s) left by earlier runs" in r.stderr
    assert client.get_run(run_id).data.metrics["energy_kwh"] == 0.5
    assert not path.exists()


def test_a_live_jobs_spool_is_never_replayed_by_another(tracking_uri, client, experiment, tmp_path):
    from mlflow_wattsup.sink.replay import replay_spools
    from mlflow_wattsup.sink.spool import SpoolFile, leftover_spools

    spool = tmp_path / "spool"
    exp_id = client.create_experiment(experiment)
    run_id = client.create_run(exp_id).info.run_id
    live = SpoolFile(spool, run_id)  # held by this (live) process
    live.append(
        {"run_id": run_id, "tracking_uri": tracking_uri},
        [{"k": "metric", "key": "energy_kwh", "value": 1.0, "timestamp": 1, "step": 0}],
    )
    try:
        assert leftover_spools(spool) == []
        r = subprocess.run(
            [*WATTSUP, "flush", "--spool-dir", str(spool)], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 0, r.stderr
        assert live.path.exists() and "energy_kwh" not in client.get_run(run_id).data.metrics
    finally:
        live.close()
    assert leftover_spools(spool) == [live.path]  # released: now it is a leftover
    assert replay_spools(spool, echo=sys.stderr) == (1, 0)
    assert client.get_run(run_id).data.metrics["energy_kwh"] == 1.0


@pytest.mark.slow
def test_job_ending_while_the_server_restarts_delivers_everything(tmp_path, experiment):
    """The server goes away during the job and is restarting when the job ends: closing waits
    for it, every value arrives, nothing is left for a manual `wattsup flush`."""
    from mlflow.tracking import MlflowClient
    from support.server import MlflowServer

    srv = MlflowServer(tmp_path / "srv")
    srv.start()
    spool = tmp_path / "spool"
    env = dict(
        os.environ, MLFLOW_TRACKING_URI=srv.uri, WATTSUP_SPOOL_DIR=str(spool), WATTSUP_CLOSE_WAIT_S="90"
    )
    stop = tmp_path / "stop"
    burn = (
        f"import os, time\nwhile not os.path.exists({str(stop)!r}):\n    sum(range(20000)); time.sleep(0.01)"
    )
    job = subprocess.Popen(
        [*WATTSUP, "run", "--experiment", experiment, "--", sys.executable, "-c", burn],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        client = MlflowClient(srv.uri)
        deadline = time.time() + 60
        while client.get_experiment_by_name(experiment) is None:
            assert time.time() < deadline, "the run never appeared"
            time.sleep(0.5)
        time.sleep(3)
        srv.stop()
        time.sleep(5)
        stop.write_text("")  # the job ends while the server is down
        time.sleep(2)
        assert job.poll() is None, "closing must wait for a server that answered before"
        srv.start()  # restarts within the wait
        out, err = job.communicate(timeout=120)
        assert job.returncode == 0, err
        assert "waiting up to 90 s" in err
        exp = client.get_experiment_by_name(experiment)
        [run] = client.search_runs([exp.experiment_id])
        assert run.info.status == "FINISHED" and "energy_kwh" in run.data.metrics
        assert not list(spool.glob("*.jsonl")), "nothing left for a manual flush"
    finally:
        if job.poll() is None:
            job.kill()
        srv.stop()


def test_processes_our_own_threads_start_are_left_to_them(tracking_uri, client, experiment, tmp_path):
    """While the command runs, MLflow is imported in a thread of ours, and that import runs
    `uname` and `git`: the runner (a subreaper waiting on all its children) must leave those to
    the thread that started them, never take their exit status (which made `wattsup run` fail
    with ECHILD under SLURM)."""
    exp_id = client.create_experiment(experiment)
    run_id = client.create_run(exp_id).info.run_id
    code = "import time\nt = time.time()\nwhile time.time() - t < 3: sum(range(10000))"
    r = wattsup("run", "--quiet", "--", sys.executable, "-c", code, env={"MLFLOW_RUN_ID": run_id})
    assert r.returncode == 0, r.stderr
    from mlflow_wattsup.tracking.runner import _started_by_us

    p = subprocess.Popen(["true"])  # a child of this process, in its group: ours
    p.wait()
    assert not _started_by_us(p.pid)  # reaped: nothing to say about it any more
    q = subprocess.Popen(["sleep", "5"])
    try:
        assert _started_by_us(q.pid)
        other = subprocess.Popen(["sleep", "5"], start_new_session=True)  # like the command: own group
        assert not _started_by_us(other.pid)
        other.kill()
        other.wait()
    finally:
        q.kill()
        q.wait()


def test_a_start_up_creation_that_timed_out_after_the_server_made_the_run_is_adopted(client, experiment):
    """A job's own run creation at its start sends a creation token; when the answer times out
    after the server made the run (sqlite under 150 jobs, issue 20), the sink finds that run by
    its token instead of making a second, empty one."""
    from mlflow_wattsup.run.lifecycle import TrackedRun
    from mlflow_wattsup.sink.transport import Store

    class LostAnswer(Store):
        def create_run(self, create):
            if not getattr(self, "made", None):
                self.made = super().create_run(create)  # made at the server ...
                raise TimeoutError("Read timed out. (read timeout=40)")  # ... the answer lost
            return super().create_run(create)

    store = LostAnswer(client)
    run = TrackedRun(store=store, experiment=experiment, flush_interval_s=0, echo=None)
    assert run.run_id is None  # deferred: the job goes on, its values queued
    run.sink._settle_until = 0.0  # the settle time (45 s) over
    run.sink.log_metrics({"power_w": 1.0})
    assert run.sink.flush()
    assert run.run_id == store.made
    run.finish("FINISHED")
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert [r.info.run_id for r in runs] == [store.made]
    assert runs[0].data.metrics["power_w"] == 1.0 and runs[0].info.status == "FINISHED"
