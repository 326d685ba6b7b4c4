"""The MLflow Projects, run the way users run them: `mlflow run ... --env-manager local`, against
a real sqlite store, with stub FastSurfer / FreeSurfer executables writing the real log formats."""

from pathlib import Path

import numpy as np
import pytest
from support.paths import REPO, STUBS
from support.projects import install_stub, mlflow_run, our_lines, runs_in

nib = pytest.importorskip("nibabel")


def project_params():
    """Parameter names declared in our MLproject files: MLflow logs those itself."""
    import yaml

    names = set()
    for f in [REPO / "MLproject", *REPO.glob("projects/*/MLproject")]:
        for entry in yaml.safe_load(f.read_text())["entry_points"].values():
            names |= set(entry.get("parameters", {}))
    return names


def assert_documented(run):
    from support.contract import documented, undocumented

    keys = set(run.data.metrics) | (set(run.data.params) - project_params()) | set(run.data.tags)
    assert undocumented(keys, documented()) == []


@pytest.fixture
def reference(tmp_path):
    """A FreeSurfer-labelled volume (aseg + DKT IDs) to score against."""
    rng = np.random.default_rng(7)
    ids = np.array([0, 2, 41, 17, 53, 1035, 2035, 1002])
    data = ids[rng.integers(0, len(ids), (8, 8, 8))].repeat(4, 0).repeat(4, 1).repeat(4, 2).astype(np.int32)
    path = tmp_path / "ref" / "aparc.DKTatlas+aseg.mgz"
    path.parent.mkdir()
    nib.save(nib.MGHImage(data, np.eye(4)), str(path))
    return path


@pytest.fixture
def freesurfer_home(tmp_path):
    home = tmp_path / "freesurfer"
    install_stub(STUBS / "recon_all.py", home / "bin" / "recon-all")
    (home / "license.txt").write_text("stub licence\n")
    return home


# -- FastSurfer -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_fastsurfer_stages_model_cost_and_dice(
    tracking_uri, client, experiment, tmp_path, fastsurfer_home, reference
):
    (tmp_path / "T1.nii.gz").write_bytes(b"any")  # the stub does not read it
    r = mlflow_run(
        REPO / "projects" / "fastsurfer",
        "t1=T1.nii.gz",
        "sid=sub01",
        "sd=out",
        "device=cpu",
        f"reference={reference.relative_to(tmp_path)}",
        "threads=2",
        f"fastsurfer_home={fastsurfer_home}",
        "region=DEU",
        cwd=tmp_path,
        env={"MLFLOW_EXPERIMENT_NAME": experiment, "STUB_SEG_SOURCE": str(reference)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = runs_in(client, experiment)
    m, tags = run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    assert (
        tmp_path / "out" / "sub01" / "mri" / "aparc.DKTatlas+aseg.deep.mgz"
    ).exists()  # relative sd: launch dir
    for view in ("coronal", "sagittal", "axial"):
        assert m[f"stage/{view}/cpu_time_s"] == pytest.approx(0.3, abs=0.2)
        assert m[f"stage/{view}/energy_kwh"] > 0
    assert m["stage/view_aggregation/duration_s"] > 0
    stage_sum = sum(m[f"stage/{s}/energy_kwh"] for s in ("coronal", "sagittal", "axial", "view_aggregation"))
    assert stage_sum <= m["energy_kwh"] * 1.001
    assert m["params/asegdkt"] == 1854632 + 1852616 + 1854632  # FastSurferVINN, from the checkpoints
    assert tags["wattsup.model_source"] == "builtin-fastsurfer2"
    assert tags["wattsup.pipeline"] == "fastsurfer" and tags["wattsup.device"] == "cpu"
    assert tags["wattsup.source.cpu"] == "estimate" and run.data.params["wattsup.region"] == "DEU"
    assert 0.8 < m["dice/Left-Hippocampus"] < 1.0 and 0.8 < m["dice/ctx-rh-insula"] < 1.0
    assert 0.8 < m["dice_aseg/Left-Cerebral-Cortex"] < 1.0 and "dice_aseg/ctx-lh-insula" not in m
    assert "--seg_only" in tags["wattsup.command"] and "--threads 2" in tags["wattsup.command"]
    assert_documented(run)


def test_fastsurfer_gpu_without_gpu_fails_before_starting(
    tracking_uri, tmp_path, fastsurfer_home, experiment
):
    (tmp_path / "T1.nii.gz").write_bytes(b"any")
    r = mlflow_run(
        REPO / "projects" / "fastsurfer",
        "t1=T1.nii.gz",
        "sid=s",
        "sd=out",
        "device=gpu",
        f"fastsurfer_home={fastsurfer_home}",
        cwd=tmp_path,
        env={"MLFLOW_EXPERIMENT_NAME": experiment},
    )
    assert r.returncode != 0
    # checked before anything starts (no wall-clock bound here: the machines are shared)
    assert not (tmp_path / "out" / "s" / "scripts" / "deep-seg.log").exists()
    [line] = our_lines(r.stderr, "fastsurfer")
    assert "device=gpu but no usable NVIDIA GPU" in line and "device=cpu" in line
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "s").exists()  # nothing was started


@pytest.mark.parametrize(
    "params, needle",
    [
        (["threads=abc"], "threads='abc' is not an integer"),
        (["threads=0"], "threads=0 must be between 1 and 1024"),
        (["device=tpu"], "device='tpu' is not one of cpu, gpu, auto"),
        (["sid=../x"], "sid='../x' must be a non-empty name"),
        (["reference=nope.mgz"], "reference=nope.mgz: no such file"),
        (["pue=0.5"], "pue='0.5' must be a finite number >= 1"),
        (["region=Atlantis"], "unknown region 'Atlantis'"),
    ],
)
def test_fastsurfer_bad_params_one_line(tracking_uri, tmp_path, fastsurfer_home, experiment, params, needle):
    (tmp_path / "T1.nii.gz").write_bytes(b"any")
    base = {
        "t1": "T1.nii.gz",
        "sid": "s",
        "sd": "out",
        "device": "cpu",
        "fastsurfer_home": str(fastsurfer_home),
    }
    for p in params:
        k, v = p.split("=", 1)
        base[k] = v
    r = mlflow_run(
        REPO / "projects" / "fastsurfer",
        *(f"{k}={v}" for k, v in base.items()),
        cwd=tmp_path,
        env={"MLFLOW_EXPERIMENT_NAME": experiment},
    )
    assert r.returncode != 0
    lines = our_lines(r.stderr, "fastsurfer")
    assert len(lines) == 1 and needle in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr


@pytest.mark.slow
def test_params_with_spaces_quotes_and_semicolons_reach_the_pipeline_intact(
    tracking_uri, tmp_path, fastsurfer_home, experiment
):
    import json

    tricky = tmp_path / "my scan; echo pwned > hacked 'x' \"y\" $(id).nii.gz"
    tricky.write_bytes(b"any")
    argv_file = tmp_path / "argv.json"
    r = mlflow_run(
        REPO / "projects" / "fastsurfer",
        f"t1={tricky}",
        "sid=s",
        "sd=out dir",
        "device=cpu",
        f"fastsurfer_home={fastsurfer_home}",
        cwd=tmp_path,
        env={"MLFLOW_EXPERIMENT_NAME": experiment, "STUB_ARGV_FILE": str(argv_file)},
    )
    assert r.returncode == 0, r.stderr[-2000:]
    argv = json.loads(argv_file.read_text())
    assert argv[argv.index("--t1") + 1] == str(tricky)
    assert argv[argv.index("--sd") + 1] == str(tmp_path / "out dir")
    assert not (tmp_path / "hacked").exists() and not (REPO / "projects" / "fastsurfer" / "hacked").exists()


def test_fastsurfer_absent_says_how_to_install(tracking_uri, tmp_path, experiment, monkeypatch):
    monkeypatch.delenv("FASTSURFER_HOME", raising=False)
    (tmp_path / "T1.nii.gz").write_bytes(b"any")
    r = mlflow_run(
        REPO / "projects" / "fastsurfer",
        "t1=T1.nii.gz",
        "sid=s",
        "sd=out",
        "device=cpu",
        cwd=tmp_path,
        env={"MLFLOW_EXPERIMENT_NAME": experiment},
    )
    [line] = our_lines(r.stderr, "fastsurfer")
    assert "FastSurfer not found" in line and "FASTSURFER_HOME" in line and "fastsurfer_home" in line


@pytest.mark.slow
def test_fastsurfer_failure_still_logs_totals(tracking_uri, client, experiment, tmp_path, fastsurfer_home):
    (tmp_path / "T1.nii.gz").write_bytes(b"any")
    r = mlflow_run(
        REPO / "projects" / "fastsurfer",
        "t1=T1.nii.gz",
        "sid=s",
        "sd=out",
        "device=cpu",
        f"fastsurfer_home={fastsurfer_home}",
        cwd=tmp_path,
        env={"MLFLOW_EXPERIMENT_NAME": experiment, "STUB_EXIT": "3"},
    )
    assert r.returncode != 0
    [run] = runs_in(client, experiment)
    assert run.info.status == "FAILED" and run.data.tags["wattsup.exit_code"] == "3"
    assert run.data.metrics["cpu_time_s"] > 0.5 and "stage/axial/energy_kwh" in run.data.metrics
    assert run.data.metrics["params/asegdkt"] > 0  # its networks did run: their cost is logged


# -- FreeSurfer -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_freesurfer_stage_per_marker(tracking_uri, client, experiment, tmp_path, freesurfer_home, reference):
    (tmp_path / "T1.nii.gz").write_bytes(b"any")
    r = mlflow_run(
        REPO / "projects" / "freesurfer",
        "t1=T1.nii.gz",
        "sid=bert",
        "subjects_dir=subjects",
        "directive=autorecon1",
        cwd=tmp_path,
        env={
            "MLFLOW_EXPERIMENT_NAME": experiment,
            "FREESURFER_HOME": str(freesurfer_home),
            "STUB_SEG_SOURCE": str(reference),
            "FS_LICENSE": "",
        },
    )
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = runs_in(client, experiment)
    m = run.data.metrics
    stages = [
        "MotionCor",
        "Talairach",
        "Nu_Intensity_Correction",
        "Intensity_Normalization",
        "Skull_Stripping",
    ]
    found = sorted({k.split("/")[1] for k in m if k.startswith("stage/") and k.endswith("/energy_kwh")})
    assert found == sorted(stages)
    for s in stages:
        assert m[f"stage/{s}/duration_s"] > 0.1
        assert m[f"stage/{s}/fstime_cpu_s"] == pytest.approx(0.3, abs=0.15)  # two commands of 0.15 s
    # stage windows come from when we saw each marker (0.1 s polling): one stage may take a little
    # of its neighbour's CPU time, but together they hold what FreeSurfer's own records say
    staged_cpu = sum(m[f"stage/{s}/cpu_time_s"] for s in stages)
    assert staged_cpu == pytest.approx(sum(m[f"stage/{s}/fstime_cpu_s"] for s in stages), rel=0.25)
    stage_total = sum(m[f"stage/{s}/duration_s"] for s in stages)
    assert stage_total == pytest.approx(m["duration_s"], abs=0.6)  # stages tile the run but its start-up
    # FreeSurfer's own (partial) accounting of its commands within ours of the whole tree
    assert m["fstime_cpu_s"] <= m["cpu_time_s"] * 1.05
    arts = [a.path for a in client.list_artifacts(run.info.run_id, "wattsup")]
    assert "wattsup/recon-all-commands.csv" in arts
    assert run.data.tags["wattsup.pipeline"] == "freesurfer"
    assert_documented(run)


@pytest.mark.slow
@pytest.mark.parametrize(
    "env, needle",
    [
        ({"FREESURFER_HOME": ""}, "FREESURFER_HOME is not set"),
        ({"FREESURFER_HOME": "/nonexistent/fs"}, "is not a directory"),
        ({"FS_LICENSE": "/nonexistent/license.txt"}, "FreeSurfer licence not found"),
    ],
)
def test_freesurfer_setup_problems_one_line(tracking_uri, tmp_path, freesurfer_home, experiment, env, needle):
    (tmp_path / "T1.nii.gz").write_bytes(b"any")
    e = {"MLFLOW_EXPERIMENT_NAME": experiment, "FREESURFER_HOME": str(freesurfer_home), **env}
    r = mlflow_run(
        REPO / "projects" / "freesurfer",
        "t1=T1.nii.gz",
        "sid=bert",
        "subjects_dir=subjects",
        cwd=tmp_path,
        env=e,
    )
    assert r.returncode != 0
    [line] = our_lines(r.stderr, "freesurfer")
    assert needle in line


def test_freesurfer_licence_missing_in_home(tracking_uri, tmp_path, freesurfer_home, experiment):
    (freesurfer_home / "license.txt").unlink()
    r = mlflow_run(
        REPO / "projects" / "freesurfer",
        "sid=bert",
        "subjects_dir=subjects",
        "t1=x",
        cwd=tmp_path,
        env={"MLFLOW_EXPERIMENT_NAME": experiment, "FREESURFER_HOME": str(freesurfer_home), "FS_LICENSE": ""},
    )
    assert r.returncode != 0
    lines = our_lines(r.stderr, "freesurfer")
    assert len(lines) == 1


# -- segmentation and the demo ----------------------------------------------------------------------

CORE = {"energy_kwh", "carbon_g", "duration_s", "dice_mean"}


@pytest.mark.slow
def test_segmentation_train(tracking_uri, client, experiment, tmp_path):
    r = mlflow_run(
        REPO / "projects" / "segmentation",
        "epochs=2",
        entry="train",
        cwd=tmp_path,
        env={"MLFLOW_EXPERIMENT_NAME": experiment},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = runs_in(client, experiment)
    m = run.data.metrics
    assert CORE | {"params", "flops", "train_flops_estimate", "dice/GM", "dice/WM", "dice/CSF"} <= set(m)
    assert len(client.get_metric_history(run.info.run_id, "epoch_energy_kwh")) == 2
    assert len(client.get_metric_history(run.info.run_id, "val_dice_mean")) == 2
    assert "predicted_energy_kwh" in m
    assert run.data.params["holdout"] == "train left hemisphere, validate right"
    assert any(a.path == "model" for a in client.list_artifacts(run.info.run_id)) or run.outputs
    assert run.data.tags["wattsup.pipeline"] == "fastsurfercnn-train"


@pytest.mark.slow
def test_demo_runs_pipelines_and_prints_table(tracking_uri, client, experiment, tmp_path):
    from support.network import guarded_env

    env, netlog = guarded_env(
        tmp_path, (), MLFLOW_EXPERIMENT_NAME=experiment
    )  # offline: no connection at all
    r = mlflow_run(REPO, "epochs=2", cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not netlog.exists(), netlog.read_text()
    runs = runs_in(client, experiment)
    by_pipe = {run.data.tags.get("wattsup.pipeline"): run for run in runs}
    assert set(by_pipe) == {"demo", "gmm-classical", "fastsurfercnn-train", "fastsurfercnn-infer"}
    parent = by_pipe["demo"].info.run_id
    for name in ("gmm-classical", "fastsurfercnn-train", "fastsurfercnn-infer"):
        run = by_pipe[name]
        assert CORE <= set(run.data.metrics), name
        assert run.data.tags["mlflow.parentRunId"] == parent
        assert run.info.status == "FINISHED"
    for name in ("fastsurfercnn-train", "fastsurfercnn-infer"):
        assert {"params", "flops"} <= set(by_pipe[name].data.metrics)
    for run in runs:
        assert_documented(run)
    assert by_pipe["gmm-classical"].data.tags["wattsup.model_cost"].startswith("n/a")
    assert "| Pipeline | Device |" in r.stdout and "gmm-classical" in r.stdout and "N/A" in r.stdout


@pytest.mark.slow
def test_brain_extraction_with_deepbet(tracking_uri, client, experiment, tmp_path):
    pytest.importorskip("deepbet")
    if not Path("/usr/share/mricron/templates/ch2.nii.gz").exists():
        pytest.skip("Debian's mricron-data (Colin27) is not installed")
    r = mlflow_run(
        REPO / "projects" / "segmentation",
        entry="brain_extraction",
        cwd=tmp_path,
        env={"MLFLOW_EXPERIMENT_NAME": experiment},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = runs_in(client, experiment)
    m = run.data.metrics
    assert m["dice/brain"] > 0.9 and m["params"] > 1e6 and m["flops"] > 1e10 and m["energy_kwh"] > 0
    assert_documented(run)
