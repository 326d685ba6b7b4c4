import pickle
import sys
from datetime import datetime

import pytest
from support.helpers import wattsup
from support.importers import cc_csv, foreign_pickle, make_eit
from support.paths import SHARED

from mlflow_wattsup.analysis.importers import safe_pickle
from mlflow_wattsup.analysis.importers.codecarbon import CodeCarbonError, read_csv
from mlflow_wattsup.analysis.importers.eit import EitError, read_folder

FIXTURES = SHARED / "fixtures" / "eit-logs"


def test_safe_pickle_rebuilds_plain_values_and_never_imports():
    raw = foreign_pickle(lambda MP: {"when": datetime(2021, 1, 1), "shape": MP([1, 2]), "n": [1, 2.5, "x"]})
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(raw)  # what plain pickle does with such a file
    d = safe_pickle.load(raw)
    assert d["when"] == datetime(2021, 1, 1) and d["n"] == [1, 2.5, "x"]
    assert isinstance(d["shape"], safe_pickle.Opaque) and d["shape"].cls_name == "fakeshapely.MultiPolygon"
    assert "fakeshapely" not in sys.modules


def test_safe_pickle_does_not_execute_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    raw = pickle.dumps({"x": Evil()})
    d = safe_pickle.load(raw)
    assert not marker.exists()
    assert isinstance(d["x"], safe_pickle.Opaque)
    for bad in (b"", b"\x80\x04garbage", raw[: len(raw) // 2]):
        with pytest.raises(safe_pickle.UnsafePickleError):
            safe_pickle.load(bad)


def test_eit_energy_as_eit_computes_it(tmp_path):
    start = make_eit(tmp_path / "FastSurfer_run", offset_h=-4.0)
    r = read_folder(tmp_path / "FastSurfer_run")
    assert r.start_epoch_s == pytest.approx(start) and r.duration_s == pytest.approx(12.0)
    # first interval from the start (2 s), then 3 s and 4 s, last power held 3 s to the end
    assert r.cpu_j == pytest.approx(10 * 2 + 20 * 3 + 30 * 4 + 30 * 3)
    assert r.machine_cpu_j == pytest.approx(2 * r.cpu_j)
    assert r.gpu_j == 0 and r.tags["device"] == "cpu" and r.tags["pipeline"] == "fastsurfer"
    assert r.intensity_g_per_kwh == 30.0 and r.region == "CA-QC"
    # samples at +2 and +5 s lie in "first" (0-6 s), the one at +9 s in "second"
    first, second = r.stages
    assert (first.name, first.cpu_j) == ("first", pytest.approx(10 * 2 + 20 * 3))
    assert second.cpu_j == pytest.approx(30 * 4 + 30 * 3)
    assert [s for s, _, _ in r.series] == pytest.approx([2.0, 5.0, 9.0])


@pytest.mark.parametrize("offset_h", [-7.0, 0.0, 5.5, 9.0])
def test_time_zone_offset_is_inferred_from_the_data(tmp_path, offset_h):
    start = make_eit(tmp_path / "r", offset_h=offset_h)
    assert read_folder(tmp_path / "r").start_epoch_s == pytest.approx(start)


def test_gpu_truncated_unordered_and_foreign_stage_csv(tmp_path):
    make_eit(tmp_path / "r", gpu=True, truncate=True, shuffle=True, stage_csv=False)
    (tmp_path / "r" / "old.csv").write_text(
        ",task,start_time,duration,DP\n0,autorecon1,1500000000.0,100.0,1\n"
    )
    r = read_folder(tmp_path / "r")
    assert r.gpu_j == pytest.approx(100.0 * 12) and r.tags["device"] == "gpu"
    assert r.skipped == 1 and r.samples == 3
    assert r.stages == []
    assert any("old.csv is from another run" in n for n in r.notes)
    assert any("1 unreadable line(s) skipped" in n for n in r.notes)


def test_folder_problems_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EitError, match="no impacttracker/info.pkl"):
        read_folder(tmp_path / "empty")
    make_eit(tmp_path / "nodata")
    (tmp_path / "nodata" / "impacttracker" / "data.json").unlink()
    with pytest.raises(EitError, match="data.json is missing"):
        read_folder(tmp_path / "nodata")
    make_eit(tmp_path / "junk")
    (tmp_path / "junk" / "impacttracker" / "data.json").write_bytes(b"\x00\x01binary\n")
    with pytest.raises(EitError, match="no readable sample"):
        read_folder(tmp_path / "junk")


@pytest.mark.slow
def test_cli_import_eit_once(tmp_path, client, experiment, tracking_uri):
    make_eit(tmp_path / "FreeSurfer_a")
    r = wattsup("import", "eit", str(tmp_path / "FreeSurfer_a"), "--experiment", experiment)
    assert r.returncode == 0, r.stderr
    again = wattsup("import", "eit", str(tmp_path / "FreeSurfer_a"), "--experiment", experiment)
    assert "already imported" in again.stdout
    [run] = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    m, p, t = run.data.metrics, run.data.params, run.data.tags
    assert m["energy_kwh"] == pytest.approx(290 / 3.6e6)
    assert p["wattsup.pue"] == "1.58"
    assert m["carbon_g"] == pytest.approx(290 / 3.6e6 * 1.58 * 30.0)
    assert t["wattsup.source.cpu"] == "import-eit" and t["wattsup.pipeline"] == "freesurfer"
    assert m["stage/first/energy_kwh"] == pytest.approx(80 / 3.6e6)
    assert run.info.end_time - run.info.start_time == 12_000
    assert len(client.get_metric_history(run.info.run_id, "system/wattsup_power_w")) == 3
    from support.contract import documented, undocumented

    assert undocumented(set(m) | set(p) | set(t), documented()) == []


@pytest.mark.slow
def test_codecarbon_rows_become_runs(tmp_path, client, experiment, tracking_uri):
    f = tmp_path / "emissions.csv"
    cc_csv(
        f,
        [
            "2024-05-01T10:00:00,train,aaa,3600,0.012,3e-6,40,0,10,0.04,0,0.01,0.05,Canada,CAN,quebec,2.3.4,Xeon,,machine,1.2\n",
            "2024-05-01T11:00:00,infer,bbb,60,0.0001,1e-6,40,100,10,0.001,0.002,0.0005,0.0035,Canada,CAN,quebec,2.3.4,Xeon,A100,process,1.0\n",
            "garbage,row\n",
        ],
    )
    runs, notes = read_csv(f)
    assert len(runs) == 2 and len(notes) == 1 and "line 4" in notes[0]
    a = runs[0]
    assert (a.cpu_j + a.gpu_j + a.ram_j) / 3.6e6 == pytest.approx(0.05 / 1.2)  # IT energy, PUE removed
    assert a.intensity_g_per_kwh == pytest.approx(0.012 * 1000 / 0.05)
    r = wattsup("import", "codecarbon", str(f), "--experiment", experiment)
    assert r.returncode == 0, r.stderr
    assert (
        wattsup("import", "codecarbon", str(f), "--experiment", experiment).stdout.count("already imported")
        == 2
    )
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    by = {x.info.run_name: x for x in runs}
    assert by["train"].data.metrics["carbon_g"] == pytest.approx(12.0)  # CodeCarbon's emissions, in grams
    assert by["infer"].data.tags["wattsup.device"] == "gpu"
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(CodeCarbonError, match="missing column"):
        read_csv(bad)


@pytest.mark.slow
@pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared EIT fixtures not present")
def test_real_eit_logs(tmp_path, client, experiment, tracking_uri):
    folders = sorted(p for p in FIXTURES.iterdir() if p.is_dir())
    r = wattsup("import", "eit", *map(str, folders), "--experiment", experiment)
    assert r.returncode == 2  # one folder has no data.json
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("wattsup import: error:")]
    assert len(errors) == 1 and "FreeSurfer_ReconAll_test_location_override" in errors[0]
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == len(folders) - 1
    for run in runs:
        m = run.data.metrics
        assert m["energy_kwh"] > 0 and m["carbon_g"] > 0 and m["duration_s"] > 0, run.info.run_name
        assert any(k.startswith("stage/") for k in m), run.info.run_name
    by = {x.info.run_name: x for x in runs}
    gpu = by["FastSurfer_CC_gpu_test"]
    assert gpu.data.tags["wattsup.device"] == "gpu" and gpu.data.metrics["energy_gpu_kwh"] > 0
    qc = by["FreeSurfer_ReconAll_ukb_CC_cpu"]
    assert qc.data.params["wattsup.region"] == "CA-QC"
    local = by["FreeSurfer_ReconAll_test_local_cpu"]
    assert local.data.tags["wattsup.stages_source"] == "FS_reconall_flops.csv"
    assert "compute_costs_flop.csv is from another run" in local.data.tags["wattsup.import.notes"]
    report = wattsup("report", experiment, "--layout", "wide")
    assert report.returncode == 0 and "| fastsurfer | imported † |" in report.stdout
    print(report.stdout)
