"""The SLURM backend and SLURM studies against a real one-node cluster (slurmctld + slurmd +
munge, started here in a temp folder; never a mock of sbatch) and a real `mlflow server`.

Skips with the reason where the cluster cannot be started (not root, SLURM not installed:
`.ci/run` installs it)."""

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.server import MlflowServer
from support.slurm_cluster import running_cluster
from support.study import cohort, ran, stub_project

from mlflow_wattsup.backends import slurm

BIN = Path(sys.executable).parent


# -- parsing the scheduler's answers (no cluster needed) ----------------------------------------


def test_scontrol_and_sacct_lines_give_state_and_exit_code_per_task():
    text = "\n".join(
        [
            "JobId=12 ArrayJobId=10 ArrayTaskId=2 JobName=w JobState=FAILED Reason=NonZeroExitCode ExitCode=3:0",
            "JobId=11 ArrayJobId=10 ArrayTaskId=1 JobName=w JobState=CANCELLED Reason=None ExitCode=0:15",
            "JobId=10 ArrayJobId=10 ArrayTaskId=3-5%2 JobName=w JobState=PENDING Reason=JobArrayTaskLimit ExitCode=0:0",
        ]
    )
    states = slurm.parse_scontrol(text)
    assert states[2] == ("FAILED", 3, 0) and states[1] == ("CANCELLED", 0, 15)
    assert [states[i][0] for i in (3, 4, 5)] == ["PENDING"] * 3 and 0 not in states
    assert slurm.parse_scontrol("JobId=7 JobName=x JobState=COMPLETED ExitCode=0:0") == {
        0: ("COMPLETED", 0, 0)
    }
    sacct = "10_0|COMPLETED|0:0\n10_1|CANCELLED by 0|0:15\n10_[2-4]|PENDING|0:0\n"
    assert slurm.parse_sacct(sacct, "10") == {0: ("COMPLETED", 0, 0), 1: ("CANCELLED", 0, 15)}


def test_backend_config_keys_are_checked_and_become_sbatch_lines(tmp_path):
    cfg = slurm.SlurmConfig.from_dict(
        {
            "partition": "gpu",
            "time": "02:00:00",
            "mem": "16G",
            "cpus-per-task": "4",
            "account": "def-me",
            "sbatch": "--constraint=v100",
            "setup": ["module load cuda"],
            "ENV_MANAGER": "local",  # MLflow's own keys are ignored
        }
    )
    assert cfg.directives(gpu=True) == [
        "--job-name=wattsup",
        "--cpus-per-task=4",
        "--partition=gpu",
        "--time=02:00:00",
        "--mem=16G",
        "--account=def-me",
        "--gres=gpu:1",
        "--constraint=v100",
    ]
    script = slurm.write_script(cfg, tmp_path / "m.jsonl", 3, False, tmp_path).read_text()
    assert "#SBATCH --array=0-2\n" in script and "module load cuda\nexec " in script
    assert "--gres" not in script
    with pytest.raises(ValueError, match="unknown key 'partitoin'"):
        slurm.SlurmConfig.from_dict({"partitoin": "x"})


# -- a real cluster ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with running_cluster(tmp_path_factory.mktemp("slurm")) as c:
        yield c


@pytest.fixture(scope="module")
def server(tmp_path_factory, cluster):
    s = MlflowServer(tmp_path_factory.mktemp("server"))
    s.start()
    yield s.uri
    s.stop()


@pytest.fixture
def env(tmp_path, server, monkeypatch):
    import mlflow

    ctrl = tmp_path / "ctrl"
    ctrl.mkdir()
    monkeypatch.setenv("STUB_CONTROL", str(ctrl))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
    monkeypatch.setenv("WATTSUP_SPOOL_DIR", str(tmp_path / "spool"))
    mlflow.set_tracking_uri(server)
    cfg = tmp_path / "slurm.json"
    cfg.write_text(json.dumps({"workdir": str(tmp_path / "slurm"), "poll_s": 0.5, "time": "00:10:00"}))
    return {
        "ctrl": ctrl,
        "project": stub_project(tmp_path / "stub"),
        "tsv": cohort(tmp_path / "data"),
        "workdir": tmp_path / "work",
        "uri": server,
        "config": cfg,
    }


def _client(uri):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _wait_terminal(client, run_id, timeout_s=120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.get_run(run_id)
        if run.info.status in ("FINISHED", "FAILED", "KILLED"):
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run_id} still {run.info.status} after {timeout_s} s")


def _registered() -> bool:
    return any(e.name == "slurm" for e in importlib.metadata.entry_points(group="mlflow.project_backend"))


needs_entry_point = pytest.mark.skipif(
    not _registered(), reason="the slurm backend is not registered: pip install -e . (pyproject entry point)"
)


@needs_entry_point
def test_mlflow_run_on_slurm_refuses_a_sqlite_store_in_one_line(tmp_path):
    project = stub_project(tmp_path / "stub")
    r = subprocess.run(
        [
            str(BIN / "mlflow"),
            "run",
            str(project),
            "-e",
            "seg",
            "--backend",
            "slurm",
            "--env-manager",
            "local",
        ]
        + ["-P", "t1=x", "-P", "sid=s1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(
            os.environ, MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/m.db", MLFLOW_DISABLE_TELEMETRY="true"
        ),
    )
    assert r.returncode == 1
    (line,) = [ln for ln in r.stderr.splitlines() if "is a local file" in ln]
    assert "mlflow server" in line and "Traceback" not in r.stderr


@pytest.mark.slow
@needs_entry_point
def test_mlflow_run_cli_submits_and_the_job_sets_the_final_status(env, experiment):
    client = _client(env["uri"])
    exp_id = client.create_experiment(experiment)
    (env["ctrl"] / "fail-bad-s9").touch()
    ids = {}
    for name in ("ok", "bad"):
        t0 = time.monotonic()
        r = subprocess.run(
            [
                str(BIN / "mlflow"),
                "run",
                str(env["project"]),
                "-e",
                "seg",
                "--backend",
                "slurm",
                "--backend-config",
                str(env["config"]),
                "--env-manager",
                "local",
                "--experiment-id",
                exp_id,
                "-P",
                "t1=x.nii",
                "-P",
                "sid=s9",
                "-P",
                f"name={name}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        assert "submitted job" in r.stderr and "does not wait" in r.stderr
        assert time.monotonic() - t0 < 60  # returned without waiting for the job
        ids[name] = next(iter(client.search_runs([exp_id], f"params.name = '{name}'"))).info.run_id
    ok, bad = (_wait_terminal(client, ids[n]) for n in ("ok", "bad"))
    assert ok.info.status == "FINISHED" and ok.data.tags["wattsup.exit_code"] == "0"
    assert (
        ok.data.tags["mlflow.project.backend"] == "slurm" and ok.data.tags["wattsup.slurm.job_id"].isdigit()
    )
    assert ok.data.tags["wattsup.slurm.node"]
    assert bad.info.status == "FAILED" and bad.data.tags["wattsup.exit_code"] == "3"


@needs_entry_point
def test_projects_run_waits_and_cancel_ends_killed(env, experiment):
    import mlflow
    from mlflow.entities import RunStatus

    client = _client(env["uri"])
    exp_id = client.create_experiment(experiment)
    (env["ctrl"] / "hang-h-s1").touch()
    common = dict(
        uri=str(env["project"]),
        entry_point="seg",
        backend="slurm",
        backend_config=str(env["config"]),
        env_manager="local",
        experiment_id=exp_id,
    )
    done = mlflow.projects.run(parameters={"t1": "x", "sid": "s1", "name": "w"}, synchronous=True, **common)
    assert client.get_run(done.run_id).info.status == "FINISHED"
    sub = mlflow.projects.run(parameters={"t1": "x", "sid": "s1", "name": "h"}, synchronous=False, **common)
    deadline = time.monotonic() + 60
    while not (env["ctrl"] / "hanging-h-s1").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert client.get_run(sub.run_id).info.status == "RUNNING"
    sub.cancel()
    run = client.get_run(sub.run_id)
    assert run.info.status == "KILLED" and run.data.tags["wattsup.exit_code"] == "143"
    assert RunStatus.to_string(sub.get_status()) == "KILLED"
    pid = int((env["ctrl"] / "hanging-h-s1").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _study(env, experiment, *extra, check=None):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "mlflow_wattsup",
            "study",
            str(env["tsv"]),
            "--backend",
            "slurm",
            "--backend-config",
            str(env["config"]),
            "--experiment",
            experiment,
            "--workdir",
            str(env["workdir"]),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check is not None:
        assert r.returncode == check, r.stderr
    return r


@pytest.mark.slow
def test_study_on_slurm_cancel_fail_then_resume_runs_only_those_two(env, experiment):
    client = _client(env["uri"])
    (env["ctrl"] / "hang-a-s1").touch()
    (env["ctrl"] / "fail-b-s2").touch()
    args = ["-p", f"a={env['project']}#seg", "-p", f"b={env['project']}#seg", "-P", "name={pipeline}"]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow_wattsup",
            "study",
            str(env["tsv"]),
            "--backend",
            "slurm",
            "--backend-config",
            str(env["config"]),
            "--experiment",
            experiment,
            "--workdir",
            str(env["workdir"]),
            *args,
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (env["ctrl"] / "hanging-a-s1").exists() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    (hanging,) = client.search_runs(
        [exp_id], "tags.`wattsup.pipeline` = 'a' and tags.`wattsup.subject` = 's1'"
    )
    job = hanging.data.tags["wattsup.slurm.job_id"]
    assert "_" in job  # one task of the study's job array
    subprocess.run(["scancel", job], check=True)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 1, err
    assert "2 finished, 1 failed, 1 killed of 4" in err and "as SLURM job" in err
    children = client.search_runs([exp_id], "tags.`wattsup.study.role` = 'child'")
    st = {(c.data.tags["wattsup.pipeline"], c.data.tags["wattsup.subject"]): c for c in children}
    assert st[("a", "s1")].info.status == "KILLED" and st[("a", "s1")].data.tags["wattsup.exit_code"] == "143"
    assert st[("b", "s2")].info.status == "FAILED" and st[("b", "s2")].data.tags["wattsup.exit_code"] == "3"
    assert {st[k].info.status for k in (("a", "s2"), ("b", "s1"))} == {"FINISHED"}
    assert len({c.data.tags["wattsup.slurm.job_id"].split("_")[0] for c in children}) == 1  # one array
    (parent,) = client.search_runs([exp_id], "tags.`wattsup.study.role` = 'parent'")
    assert parent.info.status == "FAILED"
    assert (parent.data.metrics["study/finished"], parent.data.metrics["study/killed"]) == (2, 1)

    for name in ("hang-a-s1", "fail-b-s2", "hanging-a-s1", *(p.name for p in env["ctrl"].glob("ran-*"))):
        (env["ctrl"] / name).unlink()
    r = _study(env, experiment, *args, check=0)
    assert ran(env["ctrl"]) == ["a-s1", "b-s2"]
    assert "4 finished, 0 failed, 0 killed of 4 (2 skipped, 2 submitted)" in r.stderr
    (parent,) = client.search_runs([exp_id], "tags.`wattsup.study.role` = 'parent'")
    assert parent.info.status == "FINISHED" and parent.data.metrics["study/submitted"] == 2
    assert {r.info.status for r in client.search_runs([exp_id])} <= {"FINISHED", "FAILED", "KILLED"}


@pytest.mark.slow
def test_two_jobs_packed_on_the_node_share_its_energy(env, experiment, cluster):
    from mlflow_wattsup.meters.proctree import MachineMeter

    if cluster.cpus < 2:
        pytest.skip("needs a node with 2 CPUs to pack two 1-CPU jobs")
    client = _client(env["uri"])
    meter = MachineMeter()
    before = meter.read()
    _study(env, experiment, "-p", f"t={env['project']}#tracked", "-P", "burn_s=4", check=0)
    machine_cpu_s = meter.read().busy_cpu_s - before.busy_cpu_s
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([exp_id], "tags.`wattsup.study.role` = 'child'")
    assert len(runs) == 2 and {r.info.status for r in runs} == {"FINISHED"}
    a, b = sorted(runs, key=lambda r: r.info.start_time)
    assert b.info.start_time < a.info.end_time, "the two jobs did not run at the same time"
    w = float(a.data.params["wattsup.estimate.cpu_w_per_thread"])
    energies_j = [r.data.metrics["energy_cpu_kwh"] * 3.6e6 for r in runs]
    for r, e in zip(runs, energies_j, strict=True):
        assert e >= w * 4 * 0.9  # each got its own 4 CPU-seconds of burning...
        assert (
            e <= r.data.metrics["machine_energy_cpu_kwh"] * 3.6e6 * 1.0001
        )  # ...never more than the machine
    assert sum(energies_j) <= w * machine_cpu_s  # ...and together no more than the machine over both
    (parent,) = client.search_runs([exp_id], "tags.`wattsup.study.role` = 'parent'")
    report = Path(client.download_artifacts(parent.info.run_id, "study/report.md")).read_text()
    assert "| t | estimated † |" in report and "Energy (Wh): CPU" in report
    arts = {f.path for f in client.list_artifacts(parent.info.run_id, "study")}
    assert {"study/report.csv", "study/energy_vs_runtime.png", "study/children.csv"} <= arts


@pytest.mark.slow
def test_ctrl_c_on_a_slurm_study_cancels_its_array_and_marks_the_runs(env, experiment, cluster):
    client = _client(env["uri"])
    (env["ctrl"] / "hang-a-s1").touch()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow_wattsup",
            "study",
            str(env["tsv"]),
            "-p",
            f"a={env['project']}#seg",
            "-P",
            "name={pipeline}",
            "--backend",
            "slurm",
            "--backend-config",
            str(env["config"]),
            "--experiment",
            experiment,
            "--workdir",
            str(env["workdir"]),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (env["ctrl"] / "hanging-a-s1").exists() and time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    exp_id = client.get_experiment_by_name(experiment).experiment_id
    runs = client.search_runs([exp_id])
    by = {r.data.tags.get("wattsup.subject", "parent"): r for r in runs}
    assert by["s1"].info.status == "KILLED" and by["parent"].info.status == "KILLED"
    assert {r.info.status for r in runs} <= {"FINISHED", "KILLED"}
    pid = int((env["ctrl"] / "hanging-a-s1").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    job = by["s1"].data.tags["wattsup.slurm.job_id"].split("_")[0]
    assert subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip() == ""


def test_a_task_cancelled_before_it_started_is_settled_killed_without_exit_code(env, experiment, cluster):
    from mlflow_wattsup.backends.common import Task

    client = _client(env["uri"])
    exp_id = client.create_experiment(experiment)
    n = cluster.cpus + 1  # one more 1-CPU task than the node has CPUs: the last one waits
    run_ids = []
    for _ in range(n):
        run_id = client.create_run(exp_id).info.run_id
        client.update_run(run_id, status="SCHEDULED")
        run_ids.append(run_id)
    tasks = [Task(r, "sleep 120", str(env["ctrl"]), env["uri"], exp_id) for r in run_ids]
    cfg = slurm.SlurmConfig.from_dict({"workdir": str(env["workdir"]), "poll_s": 0.3})
    job = slurm.submit(tasks, cfg)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the first n-1 started (their wrappers set RUNNING), the last waits
        states = slurm.job_states(job.job_id)
        marked = [client.get_run(r).info.status for r in run_ids]
        if [states.get(i, ("?",))[0] for i in range(n)] == ["RUNNING"] * (n - 1) + ["PENDING"] and marked == [
            "RUNNING"
        ] * (n - 1) + ["SCHEDULED"]:
            break
        time.sleep(0.3)
    else:
        pytest.fail(f"tasks never reached RUNNING x{n - 1} + PENDING: {states}")
    job.cancel()
    final = {}
    deadline = time.monotonic() + 60
    while not job.done and time.monotonic() < deadline:
        final.update(slurm.settle(client, job, job.poll()))
        time.sleep(0.3)
    assert set(final.values()) == {"KILLED"} and len(final) == n
    waiting = client.get_run(run_ids[-1])
    assert waiting.info.status == "KILLED" and waiting.data.tags["wattsup.slurm.state"] == "CANCELLED"
    assert "wattsup.exit_code" not in waiting.data.tags and waiting.info.end_time
    started = client.get_run(run_ids[0])
    assert started.data.tags["wattsup.exit_code"] == "143"  # its wrapper set it, SIGTERM
    assert "wattsup.slurm.state" not in started.data.tags
