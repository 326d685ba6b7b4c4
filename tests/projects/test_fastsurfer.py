"""FastSurfer 2.x as it really behaves (issue 9): its appended deep-seg.log, its several modules,
its networks' cost, interpreter, devices, CPUs, checkpoints, containers; Dice on shared labels.

Log excerpts below are copied from a real FastSurfer 2.3 run (stable branch, random-weight
checkpoints, Colin27, CPU) on this project's machines."""

import json
import os
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from support.fastsurfer_env import PARAMS
from support.paths import REPO
from support.projects import mlflow_run, our_lines, runs_in

nib = pytest.importorskip("nibabel")

REAL_LOG = """\
Version: 2.3.0+0000000
Log file for segmentation FastSurferCNN/run_prediction.py
Fri Nov 27 05:00:00 UTC 2026

/venv/bin/python /fastsurfer/FastSurferCNN/run_prediction.py --t1 /data/ch2.nii.gz --asegdkt_segfile /out/s/mri/aparc.DKTatlas+aseg.deep.mgz --conformed_name /out/s/mri/orig.mgz
[INFO: run_prediction.py:  652]: Checking or downloading default checkpoints ...
[INFO: common.py:  885]: Analyzing single subject /data/ch2.nii.gz
[INFO: common.py:  114]: Using device: cpu
[INFO: run_prediction.py:  245]: Running view aggregation on cpu
[INFO: inference.py:  200]: Loading checkpoint /fastsurfer/checkpoints/aparc_vinn_coronal_v2.0.0.pkl
[INFO: inference.py:  200]: Loading checkpoint /fastsurfer/checkpoints/aparc_vinn_sagittal_v2.0.0.pkl
[INFO: inference.py:  200]: Loading checkpoint /fastsurfer/checkpoints/aparc_vinn_axial_v2.0.0.pkl
[INFO: run_prediction.py:  324]: Successfully loaded image from /data/ch2.nii.gz.
[INFO: run_prediction.py:  454]: Successfully saved image   as /out/s/mri/orig/001.mgz.
[INFO: run_prediction.py:  337]: Conforming image
[INFO: run_prediction.py:  454]: Successfully saved image   as /out/s/mri/orig.mgz.
[INFO: run_prediction.py:  400]: Run coronal prediction
[INFO: dataset.py:   78]: Loading Coronal with input voxelsize (1.0, 1.0)
[INFO: inference.py:  407]: Inference on 256 batches for coronal successful
[INFO: inference.py:  469]: Coronal inference on /data/ch2.nii.gz finished in 601.2500 seconds
[INFO: run_prediction.py:  400]: Run sagittal prediction
[INFO: inference.py:  469]: Sagittal inference on /data/ch2.nii.gz finished in 590.1000 seconds
[INFO: run_prediction.py:  400]: Run axial prediction
[INFO: inference.py:  469]: Axial inference on /data/ch2.nii.gz finished in 610.0000 seconds
[INFO: run_prediction.py:  454]: Successfully saved image   as /out/s/mri/aparc.DKTatlas+aseg.deep.mgz.
INFO: Running N4 bias-field correction
/venv/bin/python /fastsurfer/recon_surf/N4_bias_correct.py --in /out/s/mri/orig.mgz --rescale /out/s/mri/orig_nu.mgz --threads 1
/venv/bin/python /fastsurfer/FastSurferCNN/segstats.py --segfile /out/s/mri/aparc.DKTatlas+aseg.deep.mgz
/venv/bin/python /fastsurfer/HypVINN/run_prediction.py --sd /out --sid s --seg_log /out/s/scripts/deep-seg.log --t1 /out/s/mri/orig_nu.mgz
[INFO: common.py:  114]: Using device: cpu
[INFO: inference.py:  183]: Loading checkpoint /fastsurfer/checkpoints/HypVINN_coronal_v1.1.0.pkl
[INFO: inference.py:  410]: coronal Inference on s finished in 70.5000 seconds
"""


# -- the log, line by line ------------------------------------------------------------------------


def feed_all(text, step=1.0):
    from mlflow_wattsup.analysis.pipelines.fastsurfer import DeepSegLog

    log, spans, t = DeepSegLog(), [], 1000.0
    for line in text.splitlines():
        t += step
        spans += log.feed(line, t)
    spans += log.close(t + 5)
    return log, {s.name: s for s in spans}


def test_modules_and_planes_from_a_real_log():
    log, spans = feed_all(REAL_LOG)
    # each plane exactly as FastSurfer timed it; HypVINN's coronal is its own stage
    assert spans["coronal"].end_s - spans["coronal"].start_s == pytest.approx(601.25)
    assert spans["sagittal"].end_s - spans["sagittal"].start_s == pytest.approx(590.1)
    assert spans["hypvinn.coronal"].end_s - spans["hypvinn.coronal"].start_s == pytest.approx(70.5)
    assert set(spans) >= {"asegdkt", "biasfield", "segstats", "hypvinn", "view_aggregation"}
    assert log.modules == ["asegdkt", "biasfield", "segstats", "hypvinn"]
    # the conformed input saved before the planes does not end view aggregation
    assert spans["view_aggregation"].start_s == spans["axial"].end_s
    assert spans["asegdkt"].end_s == spans["biasfield"].start_s
    assert log.checkpoints["asegdkt"]["coronal"].endswith("aparc_vinn_coronal_v2.0.0.pkl")
    assert log.checkpoints["hypvinn"]["coronal"].endswith("HypVINN_coronal_v1.1.0.pkl")
    assert log.device == "cpu"


def test_device_kinds():
    from mlflow_wattsup.analysis.pipelines.fastsurfer import device_kind

    assert [device_kind(d) for d in ("cpu", "cuda", "cuda:1")] == ["cpu", "gpu", "gpu"]


# -- model cost -----------------------------------------------------------------------------------


def test_checkpoint_params_with_numpy_scalar_and_nothing_else(fs_checkpoints, tmp_path):
    import pickle

    import torch

    from mlflow_wattsup.analysis.models.fastsurfer_cost import checkpoint_params

    assert checkpoint_params(fs_checkpoints / "aparc_vinn_sagittal_v2.0.0.pkl") == PARAMS["asegdkt"][1]
    assert checkpoint_params(fs_checkpoints / "HypVINN_axial_v1.1.0.pkl") == PARAMS["hypvinn"][2]
    assert checkpoint_params(fs_checkpoints / "CerebNet_sagittal_v1.0.0.pkl") == PARAMS["cerebnet"][1]
    with pytest.raises(pickle.UnpicklingError):  # weights_only still refuses other globals
        torch.load(fs_checkpoints / "aparc_vinn_axial_v2.0.0.pkl", weights_only=True)
    # FastSurfer's checkpoints were saved with numpy 1.x: the scalar is named numpy.core.multiarray
    old = tmp_path / "numpy1.pkl"
    with (
        zipfile.ZipFile(fs_checkpoints / "CerebNet_axial_v1.0.0.pkl") as src,
        zipfile.ZipFile(old, "w") as dst,
    ):
        for item in src.infolist():
            data = src.read(item)
            if item.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(item, data)
    assert checkpoint_params(old) == PARAMS["cerebnet"][2]
    evil = tmp_path / "evil.pkl"
    torch.save({"model_state": {}, "x": Path("/etc")}, evil)
    with pytest.raises(pickle.UnpicklingError):
        checkpoint_params(evil)


def test_our_networks_match_fastsurfers_parameter_counts():
    from mlflow_wattsup.analysis.models.fastsurfer_vinn import build

    for net, counts in PARAMS.items():
        got = tuple(
            sum(p.numel() for p in build(net, pl).parameters()) for pl in ("coronal", "sagittal", "axial")
        )
        assert got == counts, net


# -- the project, with the stub written from FastSurfer's sources ---------------------------------


def t1_file(tmp_path, vox=1.0, shape=(20, 20, 20)):
    path = tmp_path / "T1.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, np.uint8), np.diag([vox, vox, vox, 1.0])), str(path))
    return path


def run_fs(tmp_path, home, experiment, *params, env=None):
    base = {"t1": "T1.nii.gz", "sid": "s", "sd": "out", "device": "cpu", "fastsurfer_home": str(home)}
    for p in params:
        k, v = p.split("=", 1)
        base[k] = v
    return mlflow_run(
        REPO / "projects" / "fastsurfer",
        *(f"{k}={v}" for k, v in base.items() if v is not None),
        cwd=tmp_path,
        env={"MLFLOW_EXPERIMENT_NAME": experiment, **(env or {})},
    )


def logged_durations(log_text, pattern):
    import re

    return [float(x) for x in re.findall(pattern, log_text)]


@pytest.mark.slow
def test_rerun_on_the_same_subject_counts_only_its_own_log(
    tracking_uri, client, experiment, tmp_path, fastsurfer_home
):
    t1_file(tmp_path)
    for view_s in ("0.6", "0.2"):
        r = run_fs(
            tmp_path,
            fastsurfer_home,
            experiment,
            "no_cereb=true",
            "no_hypothal=true",
            env={"STUB_VIEW_S": view_s},
        )
        assert r.returncode == 0, r.stderr[-3000:]
    text = (tmp_path / "out" / "s" / "scripts" / "deep-seg.log").read_text()
    assert text.count("Version: ") == 2  # FastSurfer appended
    coronal = logged_durations(text, r"Coronal inference on .* finished in ([\d.]+) seconds")
    latest = max(runs_in(client, experiment), key=lambda r: r.info.start_time)
    assert latest.data.metrics["stage/coronal/duration_s"] == pytest.approx(coronal[-1], abs=1e-6)


@pytest.mark.slow
def test_every_module_its_own_stage_and_cost(tracking_uri, client, experiment, tmp_path, fastsurfer_home):
    t1_file(tmp_path)
    r = run_fs(tmp_path, fastsurfer_home, experiment, "py=python3.10")
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = runs_in(client, experiment)
    m, tags = run.data.metrics, run.data.tags
    text = (tmp_path / "out" / "s" / "scripts" / "deep-seg.log").read_text()
    [aseg_cor] = logged_durations(text, r"Coronal inference on .* finished in ([\d.]+) seconds")
    [hyp_cor] = logged_durations(text, r"coronal Inference on .* finished in ([\d.]+) seconds")
    assert m["stage/coronal/duration_s"] == pytest.approx(aseg_cor, abs=1e-6)
    assert m["stage/hypvinn.coronal/duration_s"] == pytest.approx(hyp_cor, abs=1e-6)
    for stage in ("asegdkt", "biasfield", "segstats", "cerebnet", "hypvinn"):  # seen apart only by polling
        assert f"stage/{stage}/duration_s" in m, stage
    assert m["stage/asegdkt/end_s"] <= m["stage/biasfield/start_s"] <= m["stage/hypvinn/start_s"]
    assert tags["wattsup.fastsurfer.modules"] == "asegdkt biasfield segstats cerebnet hypvinn"
    for net, counts in PARAMS.items():
        assert m[f"params/{net}"] == sum(counts), net
    assert m["params"] == sum(sum(c) for c in PARAMS.values())
    assert tags["wattsup.params_source"] == "asegdkt=checkpoints cerebnet=checkpoints hypvinn=checkpoints"
    assert m["macs/asegdkt"] == pytest.approx(34.95e12, rel=0.01)  # FastSurferVINN, 3 x 256 slices
    assert m["macs"] == m["macs/asegdkt"] + m["macs/hypvinn"] + m["macs/cerebnet"]
    assert m["flops"] == 2 * m["macs"]
    argv = tags["wattsup.command"]
    assert f"--py {tmp_path}" in argv and "--device cpu" in argv


@pytest.mark.slow
def test_flags_threads_affinity_and_auto_device(tracking_uri, client, experiment, tmp_path, fastsurfer_home):
    t1_file(tmp_path)
    argv_file, aff_file = tmp_path / "argv.json", tmp_path / "aff.json"
    r = run_fs(
        tmp_path,
        fastsurfer_home,
        experiment,
        "device=auto",
        "threads=1",
        "no_cereb=true",
        "no_hypothal=true",
        "no_biasfield=true",
        env={"STUB_ARGV_FILE": str(argv_file), "STUB_AFFINITY_FILE": str(aff_file)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    argv = json.loads(argv_file.read_text())
    assert argv[argv.index("--device") + 1] == "auto"  # FastSurfer's own fallback decides
    assert {"--no_cereb", "--no_hypothal", "--no_biasfield"} <= set(argv)
    cpus = json.loads(aff_file.read_text())
    assert len(cpus) == 1  # threads=1 holds for the network too
    [run] = runs_in(client, experiment)
    tags, m = run.data.tags, run.data.metrics
    assert tags["wattsup.cpus"] == str(cpus[0])
    assert tags["wattsup.device"] == "cpu" and tags["wattsup.fastsurfer.device"] == "cpu"
    assert "stage/hypvinn/duration_s" not in m and "params/hypvinn" not in m
    assert tags["wattsup.fastsurfer.modules"] == "asegdkt"


@pytest.mark.slow
def test_vox_size_min_on_sub_mm_input_counts_320_slices(
    tracking_uri, client, experiment, tmp_path, fastsurfer_home
):
    t1_file(tmp_path, vox=0.8)
    r = run_fs(tmp_path, fastsurfer_home, experiment, "no_cereb=true", "no_hypothal=true")
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = runs_in(client, experiment)
    assert "asegdkt: 3 views x 320 slices of 7x320x320" in run.data.tags["wattsup.flops_input_shape"]
    assert run.data.metrics["macs/asegdkt"] == pytest.approx(3 * 320 * 54.3e9, rel=0.01)


@pytest.mark.slow
def test_interpreter_that_lacks_fastsurfers_packages_fails_in_seconds(
    tracking_uri, tmp_path, fastsurfer_home, experiment
):
    t1_file(tmp_path)
    bare = tmp_path / "bare" / "python"
    bare.parent.mkdir()
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -I "$@"\n')  # no site-packages: no torch
    bare.chmod(0o755)
    t0 = time.monotonic()
    r = run_fs(tmp_path, fastsurfer_home, experiment, f"py={bare}")
    assert r.returncode != 0
    [line] = our_lines(r.stderr, "fastsurfer")
    assert f"py={bare}" in line and "cannot import" in line and "-P py=" in line
    assert not (tmp_path / "out" / "s").exists() and time.monotonic() - t0 < 60
    r = run_fs(tmp_path, fastsurfer_home, experiment, "py=python3.9-nowhere")
    [line] = our_lines(r.stderr, "fastsurfer")
    assert "py=python3.9-nowhere: no such Python interpreter" in line


@pytest.mark.slow
def test_missing_checkpoints_fail_before_anything_starts(tracking_uri, tmp_path, fastsurfer_py, experiment):
    from support.fastsurfer_env import install

    home = install(tmp_path / "FastSurfer", None)
    t1_file(tmp_path)
    r = run_fs(tmp_path, home, experiment)
    assert r.returncode != 0
    [line] = our_lines(r.stderr, "fastsurfer")
    assert "checkpoint(s) missing" in line and "download_checkpoints.py --all" in line
    assert not (tmp_path / "out" / "s").exists()


@pytest.mark.slow
def test_dice_on_shared_labels_and_clear_grid_mismatch(
    tracking_uri, client, experiment, tmp_path, fastsurfer_home
):
    t1_file(tmp_path)
    rng = np.random.default_rng(3)
    ids = np.array([0, 2, 41, 17, 30, 62, 72, 251, 1035])
    ref = ids[rng.integers(0, len(ids), (8, 8, 8))].repeat(4, 0).repeat(4, 1).repeat(4, 2).astype(np.int32)
    ref_path = tmp_path / "ref.mgz"
    nib.save(nib.MGHImage(ref, np.eye(4)), str(ref_path))
    r = run_fs(
        tmp_path,
        fastsurfer_home,
        experiment,
        "no_cereb=true",
        "no_hypothal=true",
        f"reference={ref_path}",
        env={"STUB_SEG_SOURCE": str(ref_path)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    [run] = runs_in(client, experiment)
    m, tags = run.data.metrics, run.data.tags
    assert tags["wattsup.dice.excluded_labels"] == "30 62 72 251"
    assert not any(k.startswith("dice/") and ("Vessel" in k or "label_251" in k) for k in m)
    assert m["dice_mean"] > 0.9  # the labels FastSurfer cannot predict no longer pull it down

    other = tmp_path / "ref2mm.mgz"  # another grid: a clear line, the measurement kept
    nib.save(nib.MGHImage(ref[::2, ::2, ::2].copy(), np.diag([2.0, 2, 2, 1])), str(other))
    exp2 = experiment + "-grid"
    r = run_fs(
        tmp_path,
        fastsurfer_home,
        exp2,
        "no_cereb=true",
        "no_hypothal=true",
        "sid=s2",
        f"reference={other}",
        env={"STUB_SEG_SOURCE": str(ref_path)},
    )
    assert r.returncode != 0  # our exit 2; mlflow run exits 1
    [line] = our_lines(r.stderr, "fastsurfer")
    assert "32x32x32" in line and "16x16x16" in line and "resample" in line
    [run] = runs_in(client, exp2)
    assert run.data.metrics["energy_kwh"] > 0 and "wattsup.warning.dice" in run.data.tags


FAKE_APPTAINER = """
import json, os, sys
argv = sys.argv[1:]
open(os.environ["APPTAINER_ARGV_FILE"], "w").write(json.dumps(argv))
assert argv.pop(0) == "exec"
while argv[0].startswith("-"):
    flag = argv.pop(0)
    if flag == "-B":
        argv.pop(0)
image, script = argv.pop(0), argv.pop(0)
assert script == "/fastsurfer/run_fastsurfer.sh", script
home = os.environ["FAKE_IMAGE_HOME"]  # the image's /fastsurfer
os.environ["FASTSURFER_HOME"] = home
os.execv(home + "/run_fastsurfer.sh", [home + "/run_fastsurfer.sh"] + argv)
"""


@pytest.mark.slow
def test_apptainer_image_runs_as_our_child(
    tracking_uri, client, experiment, tmp_path, fastsurfer_home, monkeypatch
):
    t1_file(tmp_path)
    bindir = tmp_path / "containers"
    bindir.mkdir()
    fake = bindir / "apptainer"
    fake.write_text(f"#!{sys.executable}\n{FAKE_APPTAINER}")
    fake.chmod(0o755)
    image = tmp_path / "fastsurfer.sif"
    image.write_bytes(b"SIF")
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")
    argv_file = tmp_path / "apptainer.json"
    r = run_fs(
        tmp_path,
        tmp_path / "no-native-install",
        experiment,
        f"fastsurfer_image={image}",
        "device=auto",
        "no_cereb=true",
        "no_hypothal=true",
        "fastsurfer_home=",
        env={"APPTAINER_ARGV_FILE": str(argv_file), "FAKE_IMAGE_HOME": str(fastsurfer_home)},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    argv = json.loads(argv_file.read_text())
    assert argv[:2] == ["exec", "--nv"] and str(image) in argv and "--py" not in argv
    assert f"{tmp_path / 'out'}:{tmp_path / 'out'}" in argv  # the subjects dir is bound
    [run] = runs_in(client, experiment)
    assert run.data.metrics["stage/coronal/cpu_time_s"] > 0.1  # the container's work is ours
    assert run.data.tags["wattsup.fastsurfer.image"] == str(image)


@pytest.mark.slow
def test_image_without_apptainer_says_so(tracking_uri, tmp_path, experiment, monkeypatch):
    t1_file(tmp_path)
    image = tmp_path / "fastsurfer.sif"
    image.write_bytes(b"SIF")
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    r = run_fs(tmp_path, tmp_path, experiment, f"fastsurfer_image={image}", "fastsurfer_home=")
    [line] = our_lines(r.stderr, "fastsurfer")
    assert "neither apptainer nor singularity" in line


def test_gpu_pinned_to_one_device():
    from mlflow_wattsup.projects.fastsurfer import pin_gpu

    env = {"CUDA_VISIBLE_DEVICES": "2,3"}
    assert pin_gpu(env) == "2" and env["CUDA_VISIBLE_DEVICES"] == "2"
    env = {}
    assert pin_gpu(env) == "0" and env["CUDA_VISIBLE_DEVICES"] == "0"
