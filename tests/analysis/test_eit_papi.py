"""The DP column of experiment-impact-tracker stage CSVs: PAPI_DP_OPS of the tracking process only,
imported under a name that says so, never as FLOPs."""

import pytest
from support.contract import documented, undocumented
from support.helpers import only_run, wattsup
from support.importers import make_eit
from support.paths import SHARED

from mlflow_wattsup.analysis.importers.eit import read_folder

FIXTURES = SHARED / "fixtures" / "eit-logs"


def test_dp_column_is_summed_per_stage_and_labelled(tmp_path):
    make_eit(tmp_path / "FreeSurfer_a")  # stages.csv: first DP 1, second DP 2
    run = read_folder(tmp_path / "FreeSurfer_a")
    assert [s.dp_ops for s in run.stages] == [1.0, 2.0] and run.papi_dp_ops == 3.0
    label = run.tags["papi_dp_ops"]
    assert "PAPI_DP_OPS from stages.csv" in label and "not its child processes" in label
    assert "not the pipeline's FLOPs" in label


def test_bracketed_partial_or_untimed_dp(tmp_path):
    start = make_eit(tmp_path / "r", stage_csv=False)
    (tmp_path / "r" / "s.csv").write_text(
        f",task,start_time,duration,DP,MAC,params\n0,a,{start},6.0,[779],0,0\n1,b,{start + 6},6.0,[5],0,0\n"
    )
    run = read_folder(tmp_path / "r")
    assert run.papi_dp_ops == 784.0
    assert any("MAC/params columns not imported: all 0" in n for n in run.notes)
    (tmp_path / "r" / "s.csv").write_text(
        f",task,start_time,duration,DP\n0,a,{start},6.0,7\n1,b,{start + 6},6.0,\n"
    )
    run = read_folder(tmp_path / "r")
    assert run.papi_dp_ops is None and "papi_dp_ops" not in run.tags
    assert any("DP values for some stages only" in n for n in run.notes)
    (tmp_path / "r" / "s.csv").write_text(",task,DP\n0,a,[779]\n")
    run = read_folder(tmp_path / "r")
    assert run.papi_dp_ops is None
    assert any("its DP column cannot be tied to this run either" in n for n in run.notes)


def test_imported_keys_are_documented_and_not_flops(tmp_path, client, experiment, tracking_uri):
    make_eit(tmp_path / "FastSurfer_x")
    r = wattsup("import", "eit", str(tmp_path / "FastSurfer_x"), "--experiment", experiment)
    assert r.returncode == 0, r.stderr
    run = only_run(client, experiment)
    m = run.data.metrics
    assert m["papi_dp_ops_tracking_process"] == 3.0
    assert m["stage/first/papi_dp_ops_tracking_process"] == 1.0
    assert "flops" not in m and "macs" not in m
    logged = set(m) | set(run.data.params) | set(run.data.tags)
    assert undocumented(logged, documented()) == []


@pytest.mark.skipif(not FIXTURES.is_dir(), reason="shared EIT fixtures not present")
def test_real_seed_logs():
    cpu = read_folder(FIXTURES / "FastSurfer_CC_cpu_test")
    assert [(s.name, s.dp_ops) for s in cpu.stages] == [
        ("setup", 748428232),
        ("axial", 21715),
        ("Coronal", 21725),
        ("Sagittal", 24012),
        ("aggregate", 3761435666),
    ]
    assert cpu.papi_dp_ops == 748428232 + 21715 + 21725 + 24012 + 3761435666
    # recon-all ran in a child process: 20 minutes of autorecon1 show ~1e5 DP ops of the parent
    local = read_folder(FIXTURES / "FreeSurfer_ReconAll_test_local_cpu")
    assert local.papi_dp_ops == 108509  # FS_reconall_flops.csv, the one matching this run
    assert "FS_reconall_flops.csv" in local.tags["papi_dp_ops"]
    bench = read_folder(FIXTURES / "FastSurfer_track_sub_0128_benchmark")
    assert bench.papi_dp_ops is None and "wattsup.papi_dp_ops" not in bench.tags
    assert any("compute_flops.csv" in n and "DP column" in n for n in bench.notes)
