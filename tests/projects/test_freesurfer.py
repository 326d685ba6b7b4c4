"""recon-all 7.4 / 8.x as it really behaves (issue 9): appended log with a block per invocation,
autorecon1 -> autorecon2 on one subject, -i refusal, IsRunning files, locale, nested fs_time."""

import csv
import io
import json
from datetime import datetime

import numpy as np
import pytest
from support.paths import REPO
from support.projects import mlflow_run, our_lines, runs_in

nib = pytest.importorskip("nibabel")

# a real recon-all.log block boundary (7.4, second call on the same subject)
REAL_APPENDED = """\
#@#%# recon-all-run-time-hours 0.412
recon-all -s bert finished without error at Fri Jun 14 15:36:02 EDT 2024


#---------------------------------
# New invocation of recon-all Fri Jun 14 15:41:13 EDT 2024\x20
#--------------------------------------
#@# Merge ASeg Fri Jun 14 15:41:23 EDT 2024
"""


def test_new_invocation_line_is_recognised():
    from mlflow_wattsup.analysis.pipelines.freesurfer import NewInvocation, StageMarker, parse_line

    items = [parse_line(x) for x in REAL_APPENDED.splitlines()]
    assert sum(isinstance(i, NewInvocation) for i in items) == 1
    assert [i.stage for i in items if isinstance(i, StageMarker)] == ["Merge ASeg"]


def test_nesting_counts_inner_fs_time_once():
    from mlflow_wattsup.analysis.pipelines.freesurfer import FsTime, nesting

    def rec(when, cmd, wall, cpu):
        return FsTime(datetime.strptime(when, "%Y:%m:%d:%H:%M:%S"), cmd, wall, 0.0, cpu, 99.0, 1000)

    times = [
        rec("2025:01:01:10:00:00", "mri_convert", 5.0, 4.0),
        rec("2025:01:01:10:00:06", "mris_register", 100.0, 95.0),  # inside rca-surfreg
        rec("2025:01:01:10:00:05", "rca-surfreg", 102.5, 96.0),
        rec("2025:01:01:10:02:00", "mris_ca_label", 10.0, 9.0),
    ]
    assert nesting(times) == [False, True, False, False]


def subject_ref(tmp_path):
    rng = np.random.default_rng(5)
    ids = np.array([0, 2, 41, 17, 53, 4, 43])
    data = ids[rng.integers(0, len(ids), (8, 8, 8))].repeat(4, 0).repeat(4, 1).repeat(4, 2).astype(np.int32)
    path = tmp_path / "ref_aseg.mgz"
    nib.save(nib.MGHImage(data, np.eye(4)), str(path))
    return path


def run_fs(tmp_path, home, experiment, *params, env=None):
    return mlflow_run(
        REPO / "projects" / "freesurfer",
        "sid=bert",
        "subjects_dir=subjects",
        *params,
        cwd=tmp_path,
        env={
            "MLFLOW_EXPERIMENT_NAME": experiment,
            "FREESURFER_HOME": str(home),
            "FS_LICENSE": "",
            **(env or {}),
        },
    )


@pytest.fixture
def freesurfer_home(tmp_path):
    from support.paths import STUBS
    from support.projects import install_stub

    home = tmp_path / "freesurfer"
    install_stub(STUBS / "recon_all.py", home / "bin" / "recon-all")
    (home / "license.txt").write_text("stub licence\n")
    return home


@pytest.mark.slow
def test_autorecon1_then_autorecon2_each_run_its_own_stages(
    tracking_uri, client, experiment, tmp_path, freesurfer_home
):
    (tmp_path / "T1.nii.gz").write_bytes(b"any")
    ref = subject_ref(tmp_path)
    env = {"STUB_SEG_SOURCE": str(ref)}
    r = run_fs(tmp_path, freesurfer_home, experiment, "t1=T1.nii.gz", "directive=autorecon1", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_fs(tmp_path, freesurfer_home, experiment, "directive=autorecon2", f"reference={ref}", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    log = (tmp_path / "subjects" / "bert" / "scripts" / "recon-all.log").read_text()
    assert log.count("# New invocation of recon-all") == 2  # one appended log
    second = max(runs_in(client, experiment), key=lambda r: r.info.start_time)
    m = second.data.metrics
    stages = sorted({k.split("/")[1] for k in m if k.startswith("stage/") and k.endswith("/duration_s")})
    assert stages == sorted(["EM_Registration", "CA_Normalize", "SubCort_Seg", "Merge_ASeg", "Fill"])
    assert m["fstime_cpu_s"] == pytest.approx(5 * 2 * 0.15, rel=0.35)  # its own ten commands only
    assert 0.8 < m["dice/Left-Cerebral-White-Matter"] < 1.0  # from aseg.presurf.mgz


@pytest.mark.slow
def test_new_t1_for_existing_subject_fails_in_seconds(tracking_uri, experiment, tmp_path, freesurfer_home):
    (tmp_path / "T1.nii.gz").write_bytes(b"any")
    (tmp_path / "subjects" / "bert" / "mri").mkdir(parents=True)
    r = run_fs(tmp_path, freesurfer_home, experiment, "t1=T1.nii.gz", "directive=autorecon1")
    assert r.returncode != 0
    [line] = our_lines(r.stderr, "freesurfer")
    assert "already exists" in line and "refuses new input (-i)" in line
    assert not (tmp_path / "subjects" / "bert" / "scripts").exists()  # recon-all never started


@pytest.mark.slow
def test_leftover_isrunning_file_is_reported(tracking_uri, experiment, tmp_path, freesurfer_home):
    scripts = tmp_path / "subjects" / "bert" / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "IsRunning.lh+rh").write_text("SUBJECT bert\n")
    r = run_fs(tmp_path, freesurfer_home, experiment, "directive=autorecon2")
    assert r.returncode != 0
    [line] = our_lines(r.stderr, "freesurfer")
    assert "IsRunning.lh+rh exists" in line and "delete that file" in line


def test_reference_with_a_directive_that_writes_no_segmentation(
    tracking_uri, experiment, tmp_path, freesurfer_home
):
    (tmp_path / "T1.nii.gz").write_bytes(b"any")
    ref = subject_ref(tmp_path)
    r = run_fs(
        tmp_path, freesurfer_home, experiment, "t1=T1.nii.gz", "directive=autorecon1", f"reference={ref}"
    )
    [line] = our_lines(r.stderr, "freesurfer")
    assert "directive=autorecon1 writes no segmentation" in line


@pytest.mark.slow
def test_locale_and_nested_fs_time(tracking_uri, client, experiment, tmp_path, freesurfer_home):
    (tmp_path / "T1.nii.gz").write_bytes(b"any")
    env_file = tmp_path / "env.json"
    r = run_fs(
        tmp_path,
        freesurfer_home,
        experiment,
        "t1=T1.nii.gz",
        "directive=all",
        env={"STUB_ENV_FILE": str(env_file), "LC_ALL": "de_DE.UTF-8", "LC_TIME": "de_DE.UTF-8"},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(env_file.read_text())["LC_ALL"] == "C"
    [run] = runs_in(client, experiment)
    m, tags = run.data.metrics, run.data.tags
    assert tags["wattsup.fstime.nested"] == "1"
    path = client.download_artifacts(run.info.run_id, "wattsup/recon-all-commands.csv", str(tmp_path))
    rows = list(csv.DictReader(io.StringIO(open(path).read())))
    inner = [r for r in rows if r["nested"] == "1"]
    assert [r["command"] for r in inner] == ["mris_register"]
    top = sum(float(r["user_s"]) + float(r["sys_s"]) for r in rows if r["nested"] == "0")
    assert m["fstime_cpu_s"] == pytest.approx(top)
    assert m["fstime_cpu_s"] <= m["cpu_time_s"] * 1.05  # counted once: within our whole-tree figure
