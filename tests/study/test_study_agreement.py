"""`wattsup study --agreement fastsurfer:freesurfer`: a FastSurfer-like stub whose outputs are a
FreeSurfer-like stub's with known perturbations, over 5 subjects; the per-region differences
logged on the children and the r and ICC(2,1) of the parent's report equal values computed here by
hand (ICC from the two-way ANOVA mean squares written out, not our function)."""

import csv
import io
import sys
from pathlib import Path

import mlflow
import pytest
from support.by_hand import icc21_by_hand, r_by_hand
from support.contract import documented, undocumented
from support.helpers import wattsup
from support.stats_files import (
    other_pipeline_values,
    subject_values,
    write_aseg_stats,
    write_fastsurfer_segstats,
    write_parc_stats,
)

from mlflow_wattsup.study import plan as planning
from mlflow_wattsup.study.pairing import parse_pairs

SUBJECTS = ["sub-01", "sub-02", "sub-03", "sub-04", "sub-05"]
SCALE = [0.92, 1.00, 1.07, 0.97, 1.11]  # head size (volumes)
SHIFT_MM = [0.00, -0.08, 0.11, 0.04, -0.02]  # cortex thickness per subject
VOL_GAIN = 1.03  # FastSurfer-like: volumes 3 % larger ...
VOL_NOISE = [-6.0, 9.0, 2.0, -3.0, 7.0]  # ... plus a per-subject offset, mm^3
TH_OFFSET = -0.040  # ... cortex 0.04 mm thinner ...
TH_NOISE = [0.020, 0.000, -0.015, 0.010, 0.025]  # ... plus per-subject noise, mm
MISSING = ("sub-02", "lh", "cuneus")  # a region the FastSurfer-like rh/lh lacks in one subject

# the stub: copies the subject directory prepared for it (its "output") into its subjects folder
STUB = """\
import os, shutil, sys, pathlib
kind, sid, out = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
ctrl = pathlib.Path(os.environ["STUB_CONTROL"])
(ctrl / f"ran-{kind}-{sid}").write_text(os.environ["MLFLOW_RUN_ID"])
if (ctrl / f"fail-{kind}-{sid}").exists():
    sys.exit(4)
shutil.copytree(ctrl / "outputs" / kind / sid, out / sid, dirs_exist_ok=True)
"""


def freesurfer_values(i):
    return subject_values(SCALE[i], SHIFT_MM[i])


def fastsurfer_values(i):
    fvols, fth = other_pipeline_values(*freesurfer_values(i), VOL_GAIN, VOL_NOISE[i], TH_OFFSET, TH_NOISE[i])
    if SUBJECTS[i] == MISSING[0]:
        del fth[MISSING[1]][MISSING[2]]
    return fvols, fth


def prepare(root: Path) -> None:
    """What each stub 'produces' per subject, in the real programs' layouts."""
    for i, s in enumerate(SUBJECTS):
        vols, th = freesurfer_values(i)
        fs = root / "outputs" / "freesurfer" / s
        write_aseg_stats(fs / "stats" / "aseg.stats", vols)
        for h in ("lh", "rh"):
            write_parc_stats(fs / "stats" / f"{h}.aparc.DKTatlas.stats", h, th[h])
        fvols, fth = fastsurfer_values(i)
        fa = root / "outputs" / "fastsurfer" / s
        write_fastsurfer_segstats(fa / "stats" / "aseg+DKT.stats", fvols)
        for h in ("lh", "rh"):
            write_parc_stats(fa / "stats" / f"{h}.aparc.DKTatlas.mapped.stats", h, fth[h], mapped=True)


def stub_project(root: Path) -> Path:
    """Entry points with the real projects' subject-folder parameters: fastsurfer (sd, sid,
    device) and freesurfer (subjects_dir, sid; no device)."""
    root.mkdir(parents=True)
    (root / "stub.py").write_text(STUB)
    py = sys.executable
    (root / "MLproject").write_text(
        "name: stubs\nentry_points:\n"
        "  fastsurfer:\n    parameters:\n      t1: {type: string}\n      sid: {type: string}\n"
        "      sd: {type: string}\n      device: {type: string, default: cpu}\n"
        f'    command: "{py} stub.py fastsurfer {{sid}} {{sd}}"\n'
        "  freesurfer:\n    parameters:\n      t1: {type: string, default: ''}\n      sid: {type: string}\n"
        "      subjects_dir: {type: string}\n"
        f'    command: "{py} stub.py freesurfer {{sid}} {{subjects_dir}}"\n'
    )
    return root


def children(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], "tags.`wattsup.study.role` = 'child'", max_results=100)
    return {(r.data.tags["wattsup.pipeline"], r.data.tags["wattsup.subject"], r.info.status): r for r in runs}


def parent_artifact(client, experiment, path):
    exp = client.get_experiment_by_name(experiment)
    (p,) = client.search_runs([exp.experiment_id], "tags.`wattsup.study.role` = 'parent'")
    return p, mlflow.artifacts.load_text(f"runs:/{p.info.run_id}/{path}")


@pytest.fixture
def env(tmp_path, tracking_uri, monkeypatch):
    ctrl = tmp_path / "ctrl"
    ctrl.mkdir()
    monkeypatch.setenv("STUB_CONTROL", str(ctrl))
    prepare(ctrl)
    data = tmp_path / "data"
    data.mkdir()
    lines = ["subject\tt1"]
    for s in SUBJECTS:
        (data / f"{s}_T1.nii.gz").write_bytes(b"t1")
        lines.append(f"{s}\t{s}_T1.nii.gz")
    (data / "participants.tsv").write_text("\n".join(lines) + "\n")
    return {"ctrl": ctrl, "tsv": data / "participants.tsv", "project": stub_project(tmp_path / "stubs")}


def study(env, experiment, workdir):
    p = env["project"]
    return wattsup(
        "study",
        str(env["tsv"]),
        "-p",
        f"fastsurfer={p}#fastsurfer",
        "-p",
        f"freesurfer={p}#freesurfer",
        "-P",
        "fastsurfer.sd={workdir}/fastsurfer",
        "-P",
        "freesurfer.subjects_dir={workdir}/freesurfer",
        "--agreement",
        "fastsurfer:freesurfer",
        "--max-jobs",
        "2",
        "--experiment",
        experiment,
        "--workdir",
        str(workdir),
    )


@pytest.mark.slow
def test_study_agreement_of_two_pipelines_by_hand_with_a_failure_then_resume(
    env, client, experiment, tmp_path
):
    work = tmp_path / "work"
    (env["ctrl"] / "fail-freesurfer-sub-05").touch()
    r = study(env, experiment, work)
    assert r.returncode == 1, r.stderr
    assert "4 subject(s) compared now, 0 compared before, 1 not comparable" in r.stderr
    assert "sub-05: freesurfer (cpu) FAILED: fastsurfer (cpu) not compared" in r.stderr
    runs = children(client, experiment)
    assert len(runs) == 10
    fa5 = runs[("fastsurfer", "sub-05", "FINISHED")]
    assert "wattsup.study.reference_run" not in fa5.data.tags  # its reference failed: not compared
    assert not any(k.startswith("volume_diff_mm3/") for k in fa5.data.metrics)
    _, md = parent_artifact(client, experiment, "study/report.md")
    assert md.startswith("### Agreement: fastsurfer vs freesurfer")  # the stubs measured no cost
    block = md
    assert "over 4 subject(s) with both" in block
    assert "- sub-05: freesurfer (cpu) FAILED: fastsurfer (cpu) not compared" in block  # said, not absent
    assert "| thickness (mm) | ctx-rh-insula | 4 |" in block

    # per subject: the differences logged on the FastSurfer child are fastsurfer - freesurfer, by region
    runs = children(client, experiment)
    for i, s in enumerate(SUBJECTS[:4]):
        fa, fs = runs[("fastsurfer", s, "FINISHED")], runs[("freesurfer", s, "FINISHED")]
        m, t = fa.data.metrics, fa.data.tags
        vols, th = freesurfer_values(i)
        fvols, fth = fastsurfer_values(i)
        for name in ("Left-Hippocampus", "Brain-Stem", "Right-Amygdala"):
            assert m[f"volume_diff_mm3/{name}"] == pytest.approx(fvols[name] - vols[name], abs=1e-9)
            assert fs.data.metrics[f"volume_mm3/{name}"] == pytest.approx(vols[name])
        for h in ("lh", "rh"):
            for region in ("insula", "superiorfrontal", "precuneus"):
                assert m[f"thickness_diff_mm/ctx-{h}-{region}"] == pytest.approx(
                    fth[h][region] - th[h][region], abs=1e-9
                )
                assert fs.data.metrics[f"thickness_mm/ctx-{h}-{region}"] == pytest.approx(th[h][region])
        diffs = [fth[h][k] - th[h][k] for h in ("lh", "rh") for k in th[h] if k in fth[h]]
        assert m["thickness_compared_n"] == len(diffs) == (61 if s == MISSING[0] else 62)
        assert m["thickness_diff_mean_mm"] == pytest.approx(sum(diffs) / len(diffs), abs=1e-9)
        assert t["wattsup.study.reference_run"] == fs.info.run_id
        assert t["wattsup.study.subject_dir"] == str(work / "fastsurfer" / s)
        assert t["wattsup.agree.reference"] == str((work / "freesurfer" / s).resolve())
        assert t["wattsup.agree.volume"].endswith("stats/aseg+DKT.stats vs reference stats/aseg.stats")
        assert t["wattsup.agree.dice"].startswith("n/a: run: no mri/aparc.DKTatlas+aseg.mgz")
        assert fs.data.tags["wattsup.study.subject_dir"] == str(work / "freesurfer" / s)
        assert "wattsup.study.reference_run" not in fs.data.tags
    assert runs[("fastsurfer", MISSING[0], "FINISHED")].data.tags["wattsup.agree.thickness_unmatched"] == (
        f"reference only: ctx-{MISSING[1]}-{MISSING[2]}"
    )

    # the costs a measured child logs (the stubs are not measured: `wattsup run` would triple the time)
    for (pipeline, _, _), c in runs.items():
        client.log_metric(c.info.run_id, "duration_s", 600.0 if pipeline == "fastsurfer" else 6000.0)
        client.log_metric(c.info.run_id, "energy_kwh", 0.01 if pipeline == "fastsurfer" else 0.1)
        client.set_tag(c.info.run_id, "wattsup.source.cpu", "rapl")

    # resume, the failure fixed: only freesurfer/sub-05 runs, only sub-05 is compared
    for f in env["ctrl"].glob("ran-*"):
        f.unlink()
    (env["ctrl"] / "fail-freesurfer-sub-05").unlink()
    r = study(env, experiment, work)
    assert r.returncode == 0, r.stderr
    assert sorted(f.name for f in env["ctrl"].glob("ran-*")) == ["ran-freesurfer-sub-05"]
    assert "1 subject(s) compared now, 4 compared before, 0 not comparable" in r.stderr
    first = runs[("fastsurfer", "sub-01", "FINISHED")].info.run_id
    assert len(client.get_metric_history(first, "thickness_diff_mm/ctx-lh-insula")) == 1  # not again
    runs = children(client, experiment)
    fa5, fs5 = runs[("fastsurfer", "sub-05", "FINISHED")], runs[("freesurfer", "sub-05", "FINISHED")]
    assert fa5.data.tags["wattsup.study.reference_run"] == fs5.info.run_id
    assert fa5.data.metrics["volume_diff_mm3/Left-Hippocampus"] == pytest.approx(
        fastsurfer_values(4)[0]["Left-Hippocampus"] - freesurfer_values(4)[0]["Left-Hippocampus"], abs=1e-9
    )

    # across the 5 subjects: r and ICC(2,1) per region, by hand, in the parent's report
    parent, md = parent_artifact(client, experiment, "study/report.md")
    assert parent.data.tags["wattsup.study.agreement"] == "fastsurfer:freesurfer"
    assert md.rstrip("\n") in r.stdout  # printed as well
    cost, _, block = md.partition("### Agreement: fastsurfer vs freesurfer")  # one page: cost, then agreement
    assert "Energy (Wh)" in cost and "| fastsurfer |" in cost and "| freesurfer |" in cost
    _, table = parent_artifact(client, experiment, "study/agreement_fastsurfer_vs_freesurfer.csv")
    rows = {(row["measure"], row["name"]): row for row in csv.DictReader(io.StringIO(table))}
    checks = [
        ("thickness", "ctx-lh-insula", lambda v: v[1]["lh"]["insula"]),
        ("thickness", "ctx-rh-superiorfrontal", lambda v: v[1]["rh"]["superiorfrontal"]),
        ("volume", "Left-Hippocampus", lambda v: v[0]["Left-Hippocampus"]),
        ("volume", "Brain-Stem", lambda v: v[0]["Brain-Stem"]),
    ]
    for measure, name, get in checks:
        x = [get(fastsurfer_values(i)) for i in range(5)]
        y = [get(freesurfer_values(i)) for i in range(5)]
        row = rows[(measure, name)]
        assert int(row["n"]) == 5
        r_, icc = r_by_hand(x, y), icc21_by_hand([[a, b] for a, b in zip(x, y, strict=True)])
        assert float(row["pearson_r"]) == pytest.approx(r_, rel=1e-5)
        assert float(row["icc_2_1"]) == pytest.approx(icc, rel=1e-5)
        assert float(row["mean_diff"]) == pytest.approx(
            sum(a - b for a, b in zip(x, y, strict=True)) / 5, rel=1e-5
        )
        assert 0 < icc < 1 and 0 < r_ <= 1
        unit = "mm³" if measure == "volume" else "mm"
        digits = 1 if measure == "volume" else 3
        assert (
            f"| {measure} ({unit}) | {name} | 5 | {sum(x) / 5:.{digits}f} | {sum(y) / 5:.{digits}f} | "
            f"{sum(a - b for a, b in zip(x, y, strict=True)) / 5:.{digits}f} | {r_:.3f} | {icc:.3f} |"
        ) in md
    assert int(rows[("thickness", f"ctx-{MISSING[1]}-{MISSING[2]}")]["n"]) == 4  # missing in one subject
    assert "over 5 subject(s) with both" in md and "not compared" not in md

    # every key logged on the parent and the children is in docs/metrics.md
    keys = set(parent.data.metrics) | set(parent.data.params) | set(parent.data.tags)
    for c in runs.values():
        keys |= (
            set(c.data.metrics)
            | set(c.data.tags)
            | (set(c.data.params) - {"t1", "sid", "sd", "device", "subjects_dir"})
        )
    assert undocumented(keys, documented()) == []


def test_agreement_option_errors_are_one_line(env):
    fa = planning.Pipeline.parse(f"fastsurfer={env['project']}#fastsurfer")
    fs = planning.Pipeline.parse(f"freesurfer={env['project']}#freesurfer")
    assert parse_pairs(["fastsurfer:freesurfer"], [fa, fs]) == [("fastsurfer", "freesurfer")]
    for spec, message in (
        ("fastsurfer", "give RUN:REFERENCE"),
        ("fastsurfer:fastsurfer", "give RUN:REFERENCE"),
        ("fastsurfer:synthseg", "no pipeline named 'synthseg'"),
    ):
        with pytest.raises(planning.PlanError, match=message):
            parse_pairs([spec], [fa, fs])
    with pytest.raises(planning.PlanError, match="fastsurfer already has a reference"):
        parse_pairs(["fastsurfer:freesurfer", "fastsurfer:freesurfer"], [fa, fs])
    other = env["project"].parent / "other"
    other.mkdir()
    (other / "MLproject").write_text(
        'name: o\nentry_points:\n  main:\n    parameters:\n      t1: {type: string}\n    command: "true"\n'
    )
    seg = planning.Pipeline.parse(f"seg={other}")
    with pytest.raises(planning.PlanError, match="seg has no subject directory parameters"):
        parse_pairs(["seg:freesurfer"], [seg, fs])
    r = wattsup("study", str(env["tsv"]), "-p", f"{other}", "--agreement", "x:other", "--dry-run")
    assert (
        r.returncode == 2 and "no pipeline named 'x'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    )


def test_devices_pair_with_the_reference_and_a_runs_own_dice_is_kept(env, client, experiment, tmp_path):
    """FastSurfer on cpu and gpu, FreeSurfer on cpu only: both FastSurfer children are compared with
    the one FreeSurfer child, one table per device; a child that scored Dice against a reference
    of its own keeps it."""
    import shutil

    from mlflow_wattsup.sink.transport import Store
    from mlflow_wattsup.study import subjects as subj
    from mlflow_wattsup.study.pairing import StudyAgreement

    subjects = subj.from_tsv(env["tsv"])
    fa = planning.Pipeline.parse(f"fastsurfer={env['project']}#fastsurfer")
    fs = planning.Pipeline.parse(f"freesurfer={env['project']}#freesurfer")
    planning.assign_params(
        [fa, fs], ["fastsurfer.sd=out/fastsurfer-{device}", "freesurfer.subjects_dir=out/fs"]
    )
    kids = planning.plan(subjects, [fa, fs], ["cpu", "gpu"], tmp_path)
    assert len(kids) == 15  # freesurfer has no device parameter: cpu only
    exp_id = client.create_experiment(experiment)
    latest = {}
    for c in kids:
        run_id = client.create_run(exp_id).info.run_id
        kind = "fastsurfer" if c.pipeline is fa else "freesurfer"
        root = tmp_path / ("out/fs" if kind == "freesurfer" else f"out/fastsurfer-{c.device}")
        shutil.copytree(env["ctrl"] / "outputs" / kind / c.subject.id, root / c.subject.id)
        client.set_terminated(run_id)
        latest[c.key] = (run_id, "FINISHED")
    own = next(c for c in kids if c.pipeline is fa and c.device == "cpu" and c.subject.id == "sub-01")
    client.log_metric(latest[own.key][0], "dice_labels_n", 3)
    client.log_metric(latest[own.key][0], "dice/Left-Hippocampus", 0.91)
    said = []
    sa = StudyAgreement(Store(client), exp_id, [("fastsurfer", "freesurfer")], kids, said.append, tmp_path)
    sa.compare(latest)
    assert "10 subject(s) compared now, 0 compared before, 0 not comparable" in said[-1]
    ref = {c.subject.id: latest[c.key][0] for c in kids if c.pipeline is fs}
    for c in kids:
        if c.pipeline is not fa:
            continue
        run = client.get_run(latest[c.key][0])
        assert run.data.tags["wattsup.study.reference_run"] == ref[c.subject.id]
        assert run.data.tags["wattsup.study.subject_dir"] == str(
            tmp_path / f"out/fastsurfer-{c.device}" / c.subject.id
        )
        dice = run.data.tags["wattsup.agree.dice"]
        assert dice.startswith("n/a: the run scored Dice") == (c is own)
    assert [m.value for m in client.get_metric_history(latest[own.key][0], "dice/Left-Hippocampus")] == [0.91]
    tables = dict(sa.tables(latest))
    assert sorted(tables) == [
        "agreement_fastsurfer_vs_freesurfer_cpu",
        "agreement_fastsurfer_vs_freesurfer_gpu",
    ]
    gpu = tables["agreement_fastsurfer_vs_freesurfer_gpu"]
    assert (gpu.a, gpu.b, gpu.subjects) == ("fastsurfer gpu", "freesurfer", SUBJECTS)
    row = next(r for r in gpu.rows if r.name == "ctx-rh-insula")
    x = [fastsurfer_values(i)[1]["rh"]["insula"] for i in range(5)]
    y = [freesurfer_values(i)[1]["rh"]["insula"] for i in range(5)]
    assert row.icc == pytest.approx(
        icc21_by_hand([[a, b] for a, b in zip(x, y, strict=True)]), rel=1e-9
    ) and row.r == pytest.approx(r_by_hand(x, y), rel=1e-9)
    sa.compare(latest)  # again: nothing new
    assert "0 subject(s) compared now, 10 compared before" in said[-1]
