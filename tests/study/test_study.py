"""`wattsup study` on this machine: subjects from BIDS/TSV, the plan, parent/child runs, failures,
resume, retries, Ctrl-C. Stub pipelines are real MLflow Projects (MLproject + a script) whose
behaviour per subject is steered by marker files."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.contract import documented, undocumented
from support.helpers import wattsup
from support.study import cohort, ran, stub_project

from mlflow_wattsup.study import plan as planning
from mlflow_wattsup.study import subjects as subj


@pytest.fixture
def study_env(tmp_path, tracking_uri, monkeypatch):
    ctrl = tmp_path / "ctrl"
    ctrl.mkdir()
    monkeypatch.setenv("STUB_CONTROL", str(ctrl))
    return {
        "ctrl": ctrl,
        "project": stub_project(tmp_path / "stub"),
        "tsv": cohort(tmp_path / "data"),
        "workdir": tmp_path / "work",
        "uri": tracking_uri,
    }


def study_runs(client, experiment, role):
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.`wattsup.study.role` = '{role}'", max_results=1000)


# -- subjects and plan --------------------------------------------------------------------------


def test_bids_subjects_sessions_and_references(tmp_path):
    for rel in (
        "sub-01/anat/sub-01_T1w.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii",
        "sub-02/ses-2/anat/sub-02_ses-2_T1w.nii.gz",
        "sub-03/anat/sub-03_T2w.nii.gz",
        "derivatives/fs/sub-01/mri/aseg.mgz",
    ):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    found = subj.from_bids(tmp_path, tmp_path / "derivatives/fs", "{subject}/mri/aseg.mgz")
    assert [s.id for s in found] == ["sub-01", "sub-02_ses-1", "sub-02_ses-2"]
    assert found[0].reference == tmp_path / "derivatives/fs/sub-01/mri/aseg.mgz"
    assert found[1].reference is None and found[1].t1.name == "sub-02_ses-1_T1w.nii"
    a = subj.dataset_sha256(found, tmp_path)
    (tmp_path / "sub-01/anat/sub-01_T1w.nii.gz").write_bytes(b"xx")  # a changed file changes the identity
    assert subj.dataset_sha256(subj.from_bids(tmp_path), tmp_path) != a


@pytest.mark.parametrize(
    "content,message",
    [
        ("id\tt1\ns1\ta.nii\n", "needs tab-separated columns 'subject'"),
        ("subject\tt1\ns1\tmissing.nii\n", "line 2: t1 'missing.nii' does not exist"),
        ("subject\tt1\ns1\ta.nii\ns1\ta.nii\n", "line 3: subject 's1' appears twice"),
        ("subject\tt1\n", "no subject rows"),
    ],
)
def test_tsv_errors_are_one_line_naming_file_and_line(tmp_path, content, message):
    (tmp_path / "a.nii").write_bytes(b"x")
    (tmp_path / "p.tsv").write_text(content)
    with pytest.raises(subj.SubjectsError) as e:
        subj.from_tsv(tmp_path / "p.tsv")
    assert message in str(e.value) and "p.tsv" in str(e.value) and "\n" not in str(e.value)


def test_plan_binds_subject_fields_and_user_params(tmp_path, study_env):
    subjects = subj.from_tsv(study_env["tsv"])
    a = planning.Pipeline.parse(f"a={study_env['project']}#seg")
    b = planning.Pipeline.parse(f"{study_env['project']}#tracked")
    assert b.name == "stub.tracked"
    planning.assign_params([a, b], ["burn_s=0.5", "a.name={pipeline}-{subject}-{device}"])
    children = planning.plan(subjects, [a, b], ["cpu", "gpu"], tmp_path)
    assert len(children) == 8
    c = children[0]
    assert c.params == {
        "t1": str(subjects[0].t1),
        "sid": "s1",
        "device": "cpu",
        "burn_s": "0.5",
        "name": "a-s1-cpu",
    }
    assert len({ch.key for ch in children}) == 8
    with pytest.raises(planning.PlanError, match="no pipeline declares 'epochs'"):
        planning.assign_params([a], ["epochs=3"])
    with pytest.raises(planning.PlanError, match="is not an MLflow Project folder"):
        planning.Pipeline.parse(f"x={tmp_path}")
    nodev = tmp_path / "nodev"
    nodev.mkdir()
    (nodev / "MLproject").write_text(
        'name: n\nentry_points:\n  main:\n    parameters:\n      sid: {type: string}\n    command: "true"\n'
    )
    n = planning.Pipeline.parse(f"{nodev}")
    assert {c.device for c in planning.plan(subjects, [n], ["cpu", "gpu"], tmp_path)} == {"cpu"}
    with pytest.raises(planning.PlanError, match="runs on cpu: add --device cpu"):
        planning.plan(subjects, [n], ["gpu"], tmp_path)


# -- local studies ------------------------------------------------------------------------------


def run_study(env, experiment, *extra, check=None):
    r = wattsup(
        "study",
        str(env["tsv"]),
        "-p",
        f"a={env['project']}#seg",
        "-p",
        f"b={env['project']}#seg",
        "-P",
        "name={pipeline}",
        "--experiment",
        experiment,
        "--workdir",
        str(env["workdir"]),
        *extra,
    )
    if check is not None:
        assert r.returncode == check, r.stderr
    return r


@pytest.mark.slow
def test_local_study_failure_then_resume_runs_only_the_failed(study_env, client, experiment):
    (study_env["ctrl"] / "fail-b-s2").touch()
    r = run_study(study_env, experiment, "--max-jobs", "2", check=1)
    assert "3 finished, 1 failed, 0 killed of 4" in r.stderr
    assert ran(study_env["ctrl"]) == ["a-s1", "a-s2", "b-s1", "b-s2"]
    children = study_runs(client, experiment, "child")
    (parent,) = study_runs(client, experiment, "parent")
    assert parent.info.status == "FAILED"
    assert parent.data.metrics["study/finished"] == 3 and parent.data.metrics["study/failed"] == 1
    by = {(c.data.tags["wattsup.pipeline"], c.data.tags["wattsup.subject"]): c for c in children}
    assert by[("b", "s2")].info.status == "FAILED" and by[("b", "s2")].data.tags["wattsup.exit_code"] == "3"
    assert by[("a", "s1")].info.status == "FINISHED" and by[("a", "s1")].data.tags["wattsup.exit_code"] == "0"
    for c in children:
        assert c.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert c.data.tags["wattsup.study"] == parent.data.tags["wattsup.study"]
        assert (
            c.data.tags["wattsup.device"] == "cpu" and c.data.params["sid"] == c.data.tags["wattsup.subject"]
        )
        assert c.info.end_time is not None
    assert Path(by[("b", "s2")].data.tags["wattsup.job.log"]).exists()
    arts = {f.path for f in client.list_artifacts(parent.info.run_id, "study")}
    assert "study/children.csv" in arts
    keys = set(parent.data.metrics) | set(parent.data.params) | set(parent.data.tags)
    for c in children:
        keys |= set(c.data.tags) | set(c.data.params) - {"t1", "sid", "device", "name", "burn_s"}
    assert undocumented(keys, documented()) == []

    # the same study again, the failure fixed: only b/s2 runs; the old failed attempt stays as a record
    (study_env["ctrl"] / "fail-b-s2").unlink()
    for p in study_env["ctrl"].glob("ran-*"):
        p.unlink()
    r = run_study(study_env, experiment, check=0)
    assert ran(study_env["ctrl"]) == ["b-s2"]
    assert "4 finished, 0 failed, 0 killed of 4 (3 skipped, 1 submitted)" in r.stderr
    (parent,) = study_runs(client, experiment, "parent")
    assert parent.info.status == "FINISHED" and parent.data.metrics["study/skipped"] == 3
    attempts = sorted(
        c.data.tags["wattsup.study.attempt"]
        for c in study_runs(client, experiment, "child")
        if c.data.tags["wattsup.pipeline"] == "b" and c.data.tags["wattsup.subject"] == "s2"
    )
    assert attempts == ["1", "2"]


@pytest.mark.slow
def test_retries_rerun_a_failing_child_as_new_attempts(study_env, client, experiment):
    (study_env["ctrl"] / "fail-a-s1").touch()
    run_study(study_env, experiment, "--retries", "2", check=1)
    runs = [
        c
        for c in study_runs(client, experiment, "child")
        if (c.data.tags["wattsup.pipeline"], c.data.tags["wattsup.subject"]) == ("a", "s1")
    ]
    assert sorted(c.data.tags["wattsup.study.attempt"] for c in runs) == ["1", "2", "3"]
    assert {c.info.status for c in runs} == {"FAILED"}
    assert len(ran(study_env["ctrl"])) == 3 + 3  # the other three once, a/s1 three times


def test_sqlite_store_with_slurm_is_refused_in_one_line(study_env, experiment):
    r = run_study(study_env, experiment, "--backend", "slurm", check=2)
    assert "is a local file" in r.stderr and "mlflow server" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_gpu_children_get_their_own_gpu_and_cpu_children_none(study_env, client, experiment):
    r = wattsup(
        "study",
        str(study_env["tsv"]),
        "-p",
        f"a={study_env['project']}#seg",
        "--device",
        "gpu",
        "--device",
        "cpu",
        "--gpus",
        "3,5",
        "--max-jobs",
        "2",
        "--experiment",
        experiment,
        "--workdir",
        str(study_env["workdir"]),
    )
    assert r.returncode == 0, r.stderr
    seen = {}
    for c in study_runs(client, experiment, "child"):
        marker = next(study_env["ctrl"].glob(f"ran-*-{c.info.run_id}"))
        seen.setdefault(c.data.tags["wattsup.device"], []).append(marker.read_text())
    assert len(seen["gpu"]) == 2 and set(seen["gpu"]) <= {"3", "5"}
    assert seen["cpu"] == ["", ""]


def test_ctrl_c_cancels_children_and_marks_runs_killed(study_env, client, experiment):
    (study_env["ctrl"] / "hang-a-s1").touch()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow_wattsup",
            "study",
            str(study_env["tsv"]),
            "-p",
            f"a={study_env['project']}#seg",
            "-P",
            "name={pipeline}",
            "--experiment",
            experiment,
            "--workdir",
            str(study_env["workdir"]),
            "--max-jobs",
            "1",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    hanging = study_env["ctrl"] / "hanging-a-s1"
    deadline = time.monotonic() + 120
    while not hanging.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert hanging.exists(), proc.stderr.read() if proc.poll() is not None else "child never started"
    child_pid = int(hanging.read_text())
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    with pytest.raises(ProcessLookupError):
        os.kill(child_pid, 0)
    children = study_runs(client, experiment, "child")
    (parent,) = study_runs(client, experiment, "parent")
    assert parent.info.status == "KILLED"
    states = {c.data.tags["wattsup.subject"]: c.info.status for c in children}
    assert states == {"s1": "KILLED", "s2": "KILLED"}  # s2 was still waiting for the one slot
    assert parent.data.metrics["study/killed"] == 2


def test_store_uris_children_can_use(tmp_path, monkeypatch):
    from mlflow_wattsup.backends.common import absolute_uri, check_cluster_store, mark_run

    monkeypatch.chdir(tmp_path)
    assert absolute_uri("sqlite:///mlflow.db") == f"sqlite:///{tmp_path}/mlflow.db"  # children run elsewhere
    assert absolute_uri("sqlite:////abs/m.db") == "sqlite:////abs/m.db"
    assert absolute_uri("http://h:5000") == "http://h:5000"
    for uri in ("sqlite:///m.db", "file:///x", "mlruns"):
        with pytest.raises(ValueError, match="is a local file"):
            check_cluster_store(uri)
    check_cluster_store("http://h:5000")
    from support.server import free_port

    # a server that is not there: the mark fails (the waiting process settles it), it does not raise
    assert mark_run(f"http://127.0.0.1:{free_port()}", "r1", "FINISHED", {"a": "b"}, attempts=1) is False
