"""A run's volumes and thickness logged, and their agreement with a reference subject directory;
two pipelines' agreement across the subjects of logged runs (read back by report.agreement_table),
checked against values computed by hand."""

import pytest
from support.by_hand import icc21_by_hand, r_by_hand
from support.contract import documented, undocumented
from support.helpers import wattsup
from support.stats_files import (
    ASEG,
    other_pipeline_values,
    subject_values,
    write_aseg_stats,
    write_fastsurfer_segstats,
    write_parc_stats,
)

SUBJECTS = ["sub-01", "sub-02", "sub-03", "sub-04", "sub-05"]
SCALE = [0.90, 0.95, 1.00, 1.06, 1.12]  # head size per subject (volumes)
SHIFT_MM = [-0.10, 0.00, 0.05, 0.12, -0.04]  # thickness per subject
VOL_GAIN = 1.02  # FastSurfer: volumes 2 % larger ...
VOL_NOISE = [5.0, -12.0, 3.0, 8.0, -4.0]  # ... plus a per-subject offset, mm^3
TH_OFFSET = 0.050  # FastSurfer: cortex 0.05 mm thicker ...
TH_NOISE = [0.010, -0.020, 0.000, 0.030, -0.010]  # ... plus per-subject noise, mm
MISSING = ("sub-03", "ctx-rh-transversetemporal")  # FastSurfer's mapped rh lacks this region there


def reference_values(i):
    return subject_values(SCALE[i], SHIFT_MM[i])


def fastsurfer_values(i):
    fvols, fth = other_pipeline_values(*reference_values(i), VOL_GAIN, VOL_NOISE[i], TH_OFFSET, TH_NOISE[i])
    if SUBJECTS[i] == MISSING[0]:
        del fth["rh"]["transversetemporal"]
    return fvols, fth


def make_study(root):
    dirs = {}
    for i, s in enumerate(SUBJECTS):
        vols, th = reference_values(i)
        fs = root / "freesurfer" / s
        write_aseg_stats(fs / "stats" / "aseg.stats", vols)
        for h in ("lh", "rh"):
            write_parc_stats(fs / "stats" / f"{h}.aparc.DKTatlas.stats", h, th[h])
        fvols, fth = fastsurfer_values(i)
        fa = root / "fastsurfer" / s
        write_aseg_stats(fa / "stats" / "aseg.stats", fvols)
        write_fastsurfer_segstats(fa / "stats" / "aseg+DKT.stats", fvols)
        for h in ("lh", "rh"):
            write_parc_stats(fa / "stats" / f"{h}.aparc.DKTatlas.mapped.stats", h, fth[h], mapped=True)
        dirs[s] = (fa, fs)
    return dirs


def new_run(client, exp_id, subject, pipeline):
    run = client.create_run(exp_id, tags={"wattsup.subject": subject, "wattsup.pipeline": pipeline})
    return run.info.run_id


@pytest.mark.slow
def test_study_of_five_subjects_differences_r_and_icc_by_hand(tmp_path, client, experiment, tracking_uri):
    from mlflow_wattsup.report.agreement_table import study_agreement, to_markdown
    from mlflow_wattsup.run.subject_stats import log_agreement
    from mlflow_wattsup.sink.transport import Store

    dirs = make_study(tmp_path)
    exp_id = client.create_experiment(experiment)
    fast_runs = {}
    for s, (fa, fs) in dirs.items():
        rid = new_run(client, exp_id, s, "freesurfer")
        log_agreement(rid, fs)  # its own values only
        client.set_terminated(rid)
        rid = new_run(client, exp_id, s, "fastsurfer")
        log_agreement(rid, fa, fs)
        client.set_terminated(rid)
        fast_runs[s] = rid

    for i, s in enumerate(SUBJECTS):
        run = client.get_run(fast_runs[s])
        m, t = run.data.metrics, run.data.tags
        ref_v, ref_th = reference_values(i)
        fa_v, fa_th = fastsurfer_values(i)
        # per structure: run - reference, from the values written in the two directories
        for name in ("Left-Hippocampus", "Brain-Stem", "CC_Posterior"):
            assert m[f"volume_diff_mm3/{name}"] == pytest.approx(fa_v[name] - ref_v[name], abs=1e-9)
            assert m[f"volume_mm3/{name}"] == pytest.approx(fa_v[name])
        assert "volume_diff_mm3/5th-Ventricle" not in m  # empty in both: not compared
        compared = [k for k in ref_v if ref_v[k] or fa_v[k]]
        diffs = [fa_v[k] - ref_v[k] for k in compared]
        assert m["volume_compared_n"] == len(compared) == len(ASEG) - 1
        assert m["volume_diff_mean_mm3"] == pytest.approx(sum(diffs) / len(diffs))
        assert m["volume_absdiff_mean_mm3"] == pytest.approx(sum(map(abs, diffs)) / len(diffs))
        rel = [abs(fa_v[k] - ref_v[k]) / ref_v[k] for k in compared]
        assert m["volume_absreldiff_mean"] == pytest.approx(sum(rel) / len(rel))
        th_diffs = [fa_th[h][k] - ref_th[h][k] for h in ("lh", "rh") for k in ref_th[h] if k in fa_th[h]]
        assert m["thickness_diff_mm/ctx-lh-insula"] == pytest.approx(TH_OFFSET + TH_NOISE[i], abs=1e-9)
        assert m["thickness_diff_mean_mm"] == pytest.approx(sum(th_diffs) / len(th_diffs))
        assert m["thickness_compared_n"] == len(th_diffs) == (61 if s == MISSING[0] else 62)
        assert (
            t["wattsup.agree.volume"]
            == f"{len(compared)} structures: stats/aseg.stats vs reference stats/aseg.stats"
        )
        assert t["wattsup.agree.thickness"].startswith(
            "62 regions: stats/lh.aparc.DKTatlas.mapped.stats, stats/rh.aparc.DKTatlas.mapped.stats vs "
            "reference "
            "stats/lh.aparc.DKTatlas.stats"
        ) != (s == MISSING[0])
        assert t["wattsup.agree.reference"] == str(dirs[s][1].resolve())
        assert t["wattsup.agree.dice"] == (
            "n/a: run: no mri/aparc.DKTatlas+aseg.mgz or mri/aparc.DKTatlas+aseg.deep.mgz; "
            "reference: no mri/aparc.DKTatlas+aseg.mgz or mri/aparc.DKTatlas+aseg.deep.mgz"
        )
    t3 = client.get_run(fast_runs[MISSING[0]]).data.tags
    assert t3["wattsup.agree.thickness_unmatched"] == f"reference only: {MISSING[1]}"
    import mlflow

    table_csv = mlflow.artifacts.load_text(f"runs:/{fast_runs[MISSING[0]]}/wattsup/agreement_thickness.csv")
    assert (
        f"{MISSING[1]},,{reference_values(2)[1]['rh']['transversetemporal']:.6g},,,reference only"
        in table_csv
    )
    assert "wattsup/agreement_volume.csv" in [
        a.path for a in client.list_artifacts(fast_runs["sub-01"], "wattsup")
    ]

    # across subjects: per region r and ICC(2,1) of FastSurfer against FreeSurfer
    table = study_agreement([exp_id], ("fastsurfer", "freesurfer"), Store(client))
    assert table.subjects == SUBJECTS and not table.unpaired
    by = {(r.measure, r.name): r for r in table.rows}
    x = [fastsurfer_values(i)[1]["lh"]["insula"] for i in range(5)]
    y = [reference_values(i)[1]["lh"]["insula"] for i in range(5)]
    row = by[("thickness", "ctx-lh-insula")]
    assert row.n == 5
    assert row.r == pytest.approx(r_by_hand(x, y), rel=1e-9)
    assert row.icc == pytest.approx(icc21_by_hand([[a, b] for a, b in zip(x, y, strict=True)]), rel=1e-9)
    assert row.mean_diff == pytest.approx(TH_OFFSET + sum(TH_NOISE) / 5)
    assert 0 < row.icc < row.r < 1  # the 0.05 mm offset lowers agreement, not correlation
    xv = [fastsurfer_values(i)[0]["Left-Hippocampus"] for i in range(5)]
    yv = [reference_values(i)[0]["Left-Hippocampus"] for i in range(5)]
    vrow = by[("volume", "Left-Hippocampus")]
    assert vrow.r == pytest.approx(r_by_hand(xv, yv), rel=1e-9)
    assert vrow.icc == pytest.approx(icc21_by_hand([[a, b] for a, b in zip(xv, yv, strict=True)]), rel=1e-9)
    assert by[("thickness", MISSING[1])].n == 4
    assert ("volume", "5th-Ventricle") not in by
    assert len([r for r in table.rows if r.measure == "thickness"]) == 62
    md = to_markdown(table)
    assert f"| thickness (mm) | ctx-lh-insula | 5 | {sum(x) / 5:.3f} | {sum(y) / 5:.3f} |" in md
    assert f"{row.r:.3f} | {row.icc:.3f} |" in md

    # every key logged is in docs/metrics.md
    for rid in fast_runs.values():
        run = client.get_run(rid)
        logged = set(run.data.metrics) | set(run.data.params) | set(run.data.tags)
        assert undocumented(logged, documented()) == []

    # the same table from the command line, and the report's block
    r = wattsup("agree", "--experiment", experiment, "--pipelines", "fastsurfer,freesurfer")
    assert r.returncode == 0, r.stderr
    assert r.stdout == md
    r = wattsup(
        "agree", "--experiment", experiment, "--pipelines", "freesurfer,fastsurfer", "--format", "csv"
    )
    assert r.returncode == 0, r.stderr
    line = next(ln for ln in r.stdout.splitlines() if ",ctx-lh-insula," in ln)
    assert line.startswith("thickness,mm,ctx-lh-insula,5,") and line.endswith(f",{row.r:.6g},{row.icc:.6g}")
    from mlflow_wattsup.report.agreement_table import agreement_block

    assert agreement_block([experiment], fmt="html").startswith(
        "<h3>Agreement: fastsurfer vs freesurfer</h3>"
    )
    assert agreement_block([experiment], ("fastsurfer", "gmm-classical")) == ""
    # next to the cost table in the report
    for rid in list(fast_runs.values()) + [r.info.run_id for r in client.search_runs([exp_id])]:
        client.log_metric(rid, "duration_s", 60.0)
        client.log_metric(rid, "energy_kwh", 0.01)
        client.set_tag(rid, "wattsup.source.cpu", "rapl")
    r = wattsup("report", experiment, "--agreement", "fastsurfer,freesurfer")
    assert r.returncode == 0, r.stderr
    cost, _, block = r.stdout.partition("### Agreement: fastsurfer vs freesurfer")
    assert "| fastsurfer |" in cost and "Energy (Wh)" in cost
    assert "| thickness (mm) | ctx-lh-insula | 5 |" in block
    r = wattsup("report", experiment, "--agreement", "fastsurfer,deepbet", "--format", "html")
    assert r.returncode == 0 and "No subject has runs of both fastsurfer and deepbet" in r.stdout
    r = wattsup("agree", "--experiment", experiment, "--pipelines", "fastsurfer,deepbet")
    assert r.returncode == 2 and "no subject has finished fastsurfer and deepbet runs" in r.stderr
    assert "sub-01 (fastsurfer only)" in r.stderr and len(r.stderr.splitlines()) == 1


def test_seg_only_run_says_what_it_cannot_compare(tmp_path, client, experiment, tracking_uri):
    from mlflow_wattsup.run.subject_stats import log_agreement

    dirs = make_study(tmp_path)
    fa, fs = dirs["sub-01"]
    seg_only = tmp_path / "seg_only" / "sub-01"
    (seg_only / "stats").mkdir(parents=True)
    (seg_only / "stats" / "aseg+DKT.stats").write_text((fa / "stats" / "aseg+DKT.stats").read_text())
    exp_id = client.create_experiment(experiment)
    rid = new_run(client, exp_id, "sub-01", "fastsurfer")
    log_agreement(rid, seg_only, fs)
    run = client.get_run(rid)
    t, m = run.data.tags, run.data.metrics
    assert t["wattsup.agree.thickness"].startswith("n/a: run: no lh/rh surface stats")
    assert "--seg_only" in t["wattsup.agree.thickness"]
    assert t["wattsup.stats.thickness"].startswith("n/a: no lh/rh surface stats")
    assert t["wattsup.agree.volume"].endswith("stats/aseg+DKT.stats vs reference stats/aseg.stats")
    assert not any(k.startswith(("thickness_", "thickness_diff_mm/")) for k in m)
    assert m["volume_compared_n"] == len(ASEG) - 1

    # a malformed reference: a warning tag naming file and line, nothing raised
    bad = tmp_path / "bad" / "sub-01" / "stats" / "aseg.stats"
    bad.parent.mkdir(parents=True)
    hippo = f" {reference_values(0)[0]['Left-Hippocampus']:.1f} "
    bad.write_text((fs / "stats" / "aseg.stats").read_text().replace(hippo, hippo.replace(".", ","), 1))
    out = log_agreement(rid, fa, bad.parents[1])
    assert "error" in out
    warn = client.get_run(rid).data.tags["wattsup.warning.agreement"]
    assert (
        warn.startswith(f"{bad}:")
        and f"Volume_mm3 is '{hippo.strip().replace('.', ',')}', not a number" in warn
    )


@pytest.mark.slow
def test_cli_one_subject(tmp_path, client, experiment, tracking_uri):
    dirs = make_study(tmp_path)
    fa, fs = dirs["sub-02"]
    exp_id = client.create_experiment(experiment)
    rid = new_run(client, exp_id, "sub-02", "fastsurfer")
    r = wattsup("agree", str(fa), str(fs), "--run-id", rid)
    assert r.returncode == 0, r.stderr
    assert "thickness: 62 compared, mean diff +0.03 mm" in r.stdout  # 0.05 offset - 0.02 noise
    assert f"logged to run {rid}" in r.stderr
    m = client.get_run(rid).data.metrics
    assert m["thickness_diff_mean_mm"] == pytest.approx(0.03) and m["volume_compared_n"] == len(ASEG) - 1
    r = wattsup("agree", str(fa), str(fs), "--no-log", "-o", str(tmp_path / "t.csv"))
    assert r.returncode == 0 and "# wattsup/agreement_thickness.csv" in (tmp_path / "t.csv").read_text()
    bad = tmp_path / "bad"
    (bad / "stats").mkdir(parents=True)
    (bad / "stats" / "aseg.stats").write_text("# ColHeaders StructName Volume_mm3\nLeft-Hippocampus\n")
    r = wattsup("agree", str(bad), str(fs), "--no-log")
    assert r.returncode == 2 and len(r.stderr.splitlines()) == 1
    assert f"{bad / 'stats' / 'aseg.stats'}:2: 1 fields, but '# ColHeaders' (line 1) names 2" in r.stderr
    r = wattsup("agree", str(tmp_path / "empty"), "--no-log")
    assert r.returncode == 2 and "no stats to log" in r.stderr
    r = wattsup("agree")
    assert r.returncode == 2 and "or --experiment X for a study" in r.stderr


def test_dice_of_the_two_directories_segmentations(tmp_path, client, experiment, tracking_uri):
    """FastSurfer --seg_only (aparc.DKTatlas+aseg.deep.mgz) against FreeSurfer's
    aparc.DKTatlas+aseg.mgz: Dice per label, and with cortical parcels merged."""
    import nibabel as nib
    import numpy as np

    from mlflow_wattsup.run.subject_stats import log_agreement

    ref = np.zeros((12, 12, 12), np.int32)
    ref[1:5, 1:5, 1:5] = 17  # Left-Hippocampus, 64 voxels
    ref[6:10, 1:5, 1:5] = 1035  # ctx-lh-insula, 64 voxels
    run = np.zeros_like(ref)
    run[2:6, 1:5, 1:5] = 17  # shifted by one: 48 in common
    run[6:10, 1:5, 1:3] = 1035  # 32 voxels, all inside the reference's
    run[6:10, 1:5, 3:5] = 1034  # ctx-lh-transversetemporal: merged with insula into cortex for dice_aseg
    fs, fa = tmp_path / "fs" / "s", tmp_path / "fa" / "s"
    for d, rel, data in (
        (fs, "mri/aparc.DKTatlas+aseg.mgz", ref),
        (fa, "mri/aparc.DKTatlas+aseg.deep.mgz", run),
    ):
        (d / "mri").mkdir(parents=True)
        nib.save(nib.MGHImage(data, np.eye(4)), str(d / rel))
    write_aseg_stats(fs / "stats" / "aseg.stats")
    write_fastsurfer_segstats(fa / "stats" / "aseg+DKT.stats", {"Left-Hippocampus": 4000.0})
    exp_id = client.create_experiment(experiment)
    rid = new_run(client, exp_id, "s", "fastsurfer")
    log_agreement(rid, fa, fs)
    run_ = client.get_run(rid)
    m, t = run_.data.metrics, run_.data.tags
    assert (
        t["wattsup.agree.dice"] == "mri/aparc.DKTatlas+aseg.deep.mgz vs reference mri/aparc.DKTatlas+aseg.mgz"
    )
    assert m["dice/Left-Hippocampus"] == pytest.approx(2 * 48 / (64 + 64))
    assert m["dice/ctx-lh-insula"] == pytest.approx(2 * 32 / (32 + 64))
    assert m["dice/ctx-lh-transversetemporal"] == 0.0  # in the run only
    assert m["dice_aseg/Left-Cerebral-Cortex"] == pytest.approx(1.0)  # all parcels -> cortex (3)
    assert t["wattsup.agree.volume"].startswith(
        "1 structures: stats/aseg+DKT.stats vs reference stats/aseg.stats"
    )
    logged = set(m) | set(run_.data.params) | set(t)
    assert undocumented(logged, documented()) == []
    # a segmentation on another grid: said, not raised; the stats are still logged
    nib.save(nib.MGHImage(run[:10], np.eye(4)), str(fa / "mri" / "aparc.DKTatlas+aseg.deep.mgz"))
    rid2 = new_run(client, exp_id, "s", "fastsurfer")
    log_agreement(rid2, fa, fs)
    t2 = client.get_run(rid2).data.tags
    assert t2["wattsup.agree.dice"].startswith("n/a: ") and "is 10x12x12" in t2["wattsup.agree.dice"]
    assert "volume_diff_mm3/Left-Hippocampus" in client.get_run(rid2).data.metrics


def test_through_a_pipelines_sink_never_raises(tmp_path, client, experiment, tracking_uri):
    """The projects call log_agreement(run.sink, subject_dir, reference_dir) before finishing."""
    from mlflow_wattsup.run.subject_stats import log_agreement
    from mlflow_wattsup.sink import MlflowSink
    from mlflow_wattsup.sink.transport import Store

    fa, fs = make_study(tmp_path)["sub-04"]
    rid = new_run(client, client.create_experiment(experiment), "sub-04", "fastsurfer")
    sink = MlflowSink(rid, Store(client), flush_interval_s=0)
    out = log_agreement(sink, fa, fs)
    assert out["thickness_compared_n"] == 62
    assert log_agreement(sink, None, fs)["error"].startswith("TypeError")  # a bug is a tag, not a crash
    sink.close()
    run = client.get_run(rid)
    assert run.data.metrics["thickness_diff_mm/ctx-rh-insula"] == pytest.approx(TH_OFFSET + TH_NOISE[3])
    assert run.data.tags["wattsup.warning.agreement"].startswith("TypeError")
