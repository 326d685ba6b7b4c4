"""What a user sees in the MLflow UI, without a browser: run descriptions (and that a user's is
never overwritten), parent comparison tables, dataset inputs, links, the saved runs-table view.
Real sqlite store; the browser test is tests/integration/test_browser.py."""

import hashlib
import json
import urllib.parse

import numpy as np
import pytest
from support.helpers import wattsup
from support.importers import cc_csv

from mlflow_wattsup.report import artifacts, links, notes, numbers, parent_note, run_note
from mlflow_wattsup.run import datasets

ESTIMATED = {
    "metrics": {
        "energy_kwh": 6.5e-6,
        "energy_cpu_kwh": 5.9e-6,
        "energy_gpu_kwh": 0.0,
        "energy_ram_kwh": 0.6e-6,
        "machine_energy_kwh": 4.4e-5,
        "carbon_g": 0.00309,
        "power_mean_w": 1.54,
        "duration_s": 15.2,
        "cpu_time_s": 5.3,
        "dice_mean": 0.863,
        "dice_labels_n": 3,
        "stage/segmentation/energy_kwh": 1.1e-6,
        "stage/segmentation/duration_s": 2.27,
        "stage/load/energy_kwh": 3.0e-6,
    },
    "params": {
        "wattsup.pue": "1",
        "wattsup.carbon_intensity_g_per_kwh": "475",
        "wattsup.region": "none",
        "wattsup.estimate.cpu_w_per_thread": "4",
        "wattsup.estimate.cpu_basis": "default",
        "wattsup.estimate.ram_w_per_gb": "0.3725",
    },
    "tags": {
        "wattsup.source.cpu": "estimate",
        "wattsup.source.gpu": "none",
        "wattsup.source.ram": "estimate",
        "wattsup.source.carbon_intensity": "world-average (codecarbon)",
        "wattsup.source.pue": "default",
        "wattsup.pipeline": "gmm-classical",
        "wattsup.device": "cpu",
        "wattsup.status": "FINISHED",
        "wattsup.model_cost": "n/a: no neural network",
    },
}


def measured():
    m = json.loads(json.dumps(ESTIMATED))
    m["tags"].update(
        {"wattsup.source.cpu": "rapl", "wattsup.source.ram": "rapl", "wattsup.source.gpu": "nvml-energy"}
    )
    m["params"] = {k: v for k, v in m["params"].items() if not k.startswith("wattsup.estimate.")}
    m["params"]["wattsup.region"] = "CA-QC"
    m["metrics"].update({"params": 88085, "train_flops_estimate": 2.26e12, "flops": 6.9e8})
    return m


# -- descriptions ---------------------------------------------------------------------------------


def test_estimated_run_says_so_first_and_how():
    text = run_note.run_markdown(**ESTIMATED, version="9.9")
    first = text.splitlines()[0]
    assert first.startswith("**0.0065 Wh (estimated) · 0.00309 g CO2eq · Dice 0.863 · 15.2 s**")
    assert "CPU **estimated** (4 W per busy logical CPU x CPU time, default)" in text
    assert "RAM **estimated** (0.3725 W per GB resident x time)" in text
    assert "no GPU" in text and "measured" not in text
    assert "energy x PUE 1 (default) x 475 g CO2eq/kWh (no region given; world-average (codecarbon))" in text
    assert "**Power** 1.54 W mean" in text and "**Dice** 0.863 mean over 3 labels" in text
    assert "**Model** n/a: no neural network." in text
    # stages by energy, largest first, with their share of the run
    assert "`load` 0.003 Wh, 46 %; `segmentation` 0.0011 Wh in 2.27 s, 17 %" in text
    assert "mlflow-wattsup 9.9" in text


def test_measured_run_names_its_meters_and_never_says_estimated():
    text = run_note.run_markdown(**measured())
    assert text.splitlines()[0].startswith("**0.0065 Wh · ")  # measured: no label
    assert "CPU measured (RAPL counters)" in text and "GPU measured (NVML energy counter)" in text
    assert "estimated" not in text.replace("FLOPs of training (estimated", "")
    assert "region CA-QC" in text
    assert "**Model** 88.1 k params, 2.26 T FLOPs of training (estimated: 3 x forward x samples)" in text


def test_imported_and_partly_estimated_runs_say_where_the_energy_came_from():
    imp = json.loads(json.dumps(ESTIMATED))
    imp["tags"].update(
        {"wattsup.source.cpu": "import-eit", "wattsup.source.ram": "none", "wattsup.import.tool": "eit 0.1.9"}
    )
    text = run_note.run_markdown(**imp)
    assert "(imported)" in text.splitlines()[0] and "CPU imported (eit)" in text and "eit 0.1.9" in text
    part = json.loads(json.dumps(ESTIMATED))
    part["tags"].update(
        {"wattsup.source.cpu": "rapl+estimate", "wattsup.warning.cpu": "RAPL vanished at 12 s"}
    )
    text = run_note.run_markdown(**part)
    assert "(estimated)" in text.splitlines()[0]  # the report's basis: CPU partly estimated is estimated
    assert "then **estimated** after a meter failure" in text
    assert "**Warning** (cpu): RAPL vanished at 12 s" in text


def test_a_run_without_energy_gets_no_description():
    assert run_note.run_markdown({"loss": 1.0}, {}, {}) is None


def test_markdown_special_characters_in_values_do_not_break_the_page():
    odd = json.loads(json.dumps(ESTIMATED))
    odd["tags"]["wattsup.pipeline"] = "a|b <script>"
    text = run_note.run_markdown(**odd)
    assert "<script>" not in text and "a\\|b &lt;script>" in text


def test_note_we_wrote_is_rewritten_but_a_users_is_kept(client, tracking_uri):
    run_id = client.create_run(client.create_experiment("notes")).info.run_id
    assert notes.note_owner(None) == "none"
    assert notes.write_note(client, run_id, "first")
    note = client.get_run(run_id).data.tags[notes.NOTE_TAG]
    assert note.startswith("first\n") and notes.note_owner(note) == "ours"
    assert notes.write_note(client, run_id, "second")  # ours: regenerated
    # the user edits our text in the UI (the hidden marker stays): now it is theirs
    edited = client.get_run(run_id).data.tags[notes.NOTE_TAG].replace("second", "my notes")
    client.set_tag(run_id, notes.NOTE_TAG, edited)
    assert notes.note_owner(edited) == "user"
    assert not notes.write_note(client, run_id, "third")
    assert client.get_run(run_id).data.tags[notes.NOTE_TAG] == edited
    # a description written from scratch (no marker) is the user's too
    client.set_tag(run_id, notes.NOTE_TAG, "hand written")
    assert not notes.write_note(client, run_id, "fourth")
    assert client.get_run(run_id).data.tags[notes.NOTE_TAG] == "hand written"


def test_describe_run_on_a_tracked_run(client, tracking_uri, experiment):
    import mlflow_wattsup

    with mlflow_wattsup.track("d", experiment=experiment) as t:
        sum(range(10**5))
    assert run_note.describe_run(client, t.run_id)
    run = client.get_run(t.run_id)
    note = run.data.tags[notes.NOTE_TAG]
    src = run.data.tags["wattsup.source.cpu"]
    assert numbers.energy_kwh(run.data.metrics["energy_kwh"]) in note.splitlines()[0]
    assert run_note.source_words(src) in note
    assert ("estimated" in note.splitlines()[0]) == ("estimate" in src)


def test_parent_gets_the_table_of_its_children(client, tracking_uri):
    from mlflow.entities import Metric, Param, RunTag

    exp = client.create_experiment("parent-table")
    parent = client.create_run(exp, run_name="study").info.run_id
    for name, pipe, kwh, dice in (
        ("a", "gmm", 1e-5, 0.86),
        ("b", "cnn", 5e-5, 0.9),
        ("c", "cnn", 7e-5, 0.92),
    ):
        kid = client.create_run(exp, run_name=name, tags={"mlflow.parentRunId": parent}).info.run_id
        ex = ESTIMATED
        client.log_batch(
            kid,
            metrics=[
                Metric("energy_kwh", kwh, 0, 0),
                Metric("carbon_g", kwh * 475, 0, 0),
                Metric("dice_mean", dice, 0, 0),
            ],
            params=[Param(k, v) for k, v in ex["params"].items()],
            tags=[RunTag(k, v) for k, v in {**ex["tags"], "wattsup.pipeline": pipe}.items()],
        )
    assert parent_note.describe_parent(client, parent, "my study")
    note = client.get_run(parent).data.tags[notes.NOTE_TAG]
    assert note.startswith(
        "**3 runs: 0.13 Wh (estimated) · 0.0617 g CO2eq in all** · best Dice 0.920: cnn at 0.07 Wh"
    )
    assert "| cnn · cpu | 2 | n/a | 0.06 ± 0.0141 † | 0.0285 ± 0.00672 | 0.91 ± 0.0141 |" in note
    assert "| gmm · cpu | 1 | n/a | 0.01 † |" in note
    assert "† estimated" in note
    assert "[a](#/experiments/" in note and "workflowType=machine_learning" in note
    compare = note.split("[Compare them in MLflow](")[1].split(")")[0]
    q = urllib.parse.parse_qs(compare.split("?", 1)[1])
    assert len(json.loads(q["runs"][0])) == 3 and json.loads(q["experiments"][0]) == [exp]


def test_report_html_is_a_standalone_page(client, tracking_uri):
    from mlflow_wattsup.report import RunRow, build

    table = build([RunRow("r", {"energy_kwh": 1e-5}, {"wattsup.pipeline": "x<y"}, {})], runtime_unit="s")
    page = artifacts.report_html(table, "A & B")
    assert page.startswith("<!DOCTYPE html>") and "<title>A &amp; B</title>" in page and "x&lt;y" in page
    run_id = client.create_run(client.create_experiment("html")).info.run_id
    assert artifacts.log_report(client, run_id, table, "t") == ["wattsup/report.md", "wattsup/report.html"]
    assert {a.path for a in client.list_artifacts(run_id, "wattsup")} == {
        "wattsup/report.md",
        "wattsup/report.html",
    }


# -- dataset inputs -------------------------------------------------------------------------------


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    f = tmp_path / "T1.nii.gz"
    data = bytes(range(256)) * 9000  # > 2 blocks
    f.write_bytes(data)
    assert datasets.file_digest(f) == hashlib.sha256(data).hexdigest()[:16]
    im = datasets.image_file(f, "input")
    assert (im.name, im.source, im.context, im.digest_kind) == ("T1", str(f), "input", "file-sha256")
    with pytest.raises(FileNotFoundError, match="no such file"):
        datasets.file_digest(tmp_path / "missing.mgz")


def test_array_digest_depends_on_values_dtype_and_shape():
    a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert datasets.array_digest(a) == datasets.array_digest(a.copy())
    assert datasets.array_digest(a) != datasets.array_digest(a.astype(np.int16))
    assert datasets.array_digest(a) != datasets.array_digest(a.reshape(4, 3, 2))
    assert datasets.array_digest(a[:, ::-1]) == datasets.array_digest(np.ascontiguousarray(a[:, ::-1]))


@pytest.mark.parametrize(
    "name,stem", [("sub/T1.nii.gz", "T1"), ("aseg.mgz", "aseg"), ("x.nii", "x"), ("README", "README")]
)
def test_image_name(name, stem):
    assert datasets.image_name(name) == stem


def test_inputs_logged_and_searchable(client, tracking_uri, tmp_path):
    f = tmp_path / "ch2.nii.gz"
    f.write_bytes(b"colin")
    exp = client.create_experiment("inputs")
    run_ids = [client.create_run(exp).info.run_id for _ in range(2)]
    t1 = datasets.image_file(f, "input", "colin27-ch2")
    ref = datasets.image_array("tissue", f, [np.zeros((2, 2), np.uint8)], "reference")
    datasets.log_images(client, run_ids[0], [t1, ref])
    datasets.log_images(client, run_ids[1], [ref])
    got = client.get_run(run_ids[0]).inputs.dataset_inputs
    assert {(i.dataset.name, i.dataset.digest) for i in got} == {
        ("colin27-ch2", t1.digest),
        ("tissue", ref.digest),
    }
    tags = {i.dataset.name: {t.key: t.value for t in i.tags} for i in got}
    assert tags["colin27-ch2"] == {"mlflow.data.context": "input", "wattsup.digest": "file-sha256"}
    assert json.loads(next(i for i in got if i.dataset.name == "tissue").dataset.source)["uri"] == str(f)
    found = client.search_runs([exp], f"dataset.digest = '{t1.digest}'")
    assert [r.info.run_id for r in found] == [run_ids[0]]
    assert len(client.search_runs([exp], "dataset.name = 'tissue'")) == 2


# -- links and the saved view ---------------------------------------------------------------------


def test_links_open_the_training_view():
    assert (
        links.run_url("http://h:5000/", "3", "abc")
        == "http://h:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    )
    assert links.experiment_url("sqlite:///mlflow.db", "3").startswith(
        "http://127.0.0.1:5000/#/experiments/3/runs?"
    )
    assert links.experiment_url("https://x", "3", view=True).endswith(
        "?workflowType=machine_learning&viewStateShareKey=wattsup"
    )
    assert links.open_lines("sqlite:///m.db", "1", "r") == [
        "view: http://127.0.0.1:5000/#/experiments/1/runs/r?workflowType=machine_learning",
        "  (serve it first: mlflow ui --backend-store-uri sqlite:///m.db)",
    ]
    assert links.open_lines("http://srv", "1") == [
        "view: http://srv/#/experiments/1/runs?workflowType=machine_learning"
    ]
    q = urllib.parse.parse_qs(links.compare_url("http://h", "1", ["a", "b"]).split("compare-runs?")[1])
    assert json.loads(q["runs"][0]) == ["a", "b"] and q["workflowType"] == ["machine_learning"]


def test_runs_view_saved_once_and_never_overwritten(client, tracking_uri):
    exp = client.create_experiment("view")
    assert links.ensure_runs_view(client, exp)
    env = json.loads(client.get_experiment(exp).tags[links.VIEW_TAG])
    assert env["name"] == links.VIEW_NAME and isinstance(env["createdAt"], int)
    state = json.loads(env["state"])
    assert (
        "metrics.`energy_kwh`" in state["selectedColumns"] and state["orderByKey"] == "metrics.`energy_kwh`"
    )
    client.set_experiment_tag(exp, links.VIEW_TAG, '{"name": "mine"}')  # the user saved over it
    assert not links.ensure_runs_view(client, exp)
    assert client.get_experiment(exp).tags[links.VIEW_TAG] == '{"name": "mine"}'


# -- wattsup import: MLflow's experiment convention ------------------------------------------------


@pytest.mark.slow
def test_import_honours_mlflow_experiment_name_and_describes_runs(tmp_path, client, experiment, tracking_uri):
    f = tmp_path / "emissions.csv"
    cc_csv(
        f,
        [
            "2024-05-01T10:00:00,train,aaa,3600,0.012,3e-6,40,0,10,0.04,0,0.01,0.05,Canada,CAN,quebec,2.3.4,Xeon,,machine,1.2\n"
        ],
    )
    r = wattsup("import", "codecarbon", str(f), env={"MLFLOW_EXPERIMENT_NAME": experiment})
    assert r.returncode == 0, r.stderr
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None and client.get_experiment_by_name("codecarbon-import") is None
    [run] = client.search_runs([exp.experiment_id])
    note = run.data.tags[notes.NOTE_TAG]
    assert "(imported)" in note.splitlines()[0] and "CPU imported (codecarbon)" in note
    assert (
        f"#/experiments/{exp.experiment_id}/runs?workflowType=machine_learning&viewStateShareKey=wattsup"
        in r.stdout
    )
    assert links.VIEW_TAG in exp.tags
    # --experiment still wins over the environment
    other = wattsup(
        "import",
        "codecarbon",
        str(f),
        "--experiment",
        experiment + "-2",
        env={"MLFLOW_EXPERIMENT_NAME": experiment},
    )
    assert other.returncode == 0 and client.get_experiment_by_name(experiment + "-2") is not None


# -- the demo's experiment ------------------------------------------------------------------------


def test_demo_launched_into_default_moves_to_its_own_experiment(client, tracking_uri):
    from mlflow_wattsup.projects import demo

    launcher = client.create_run("0", run_name="painted-bear-903").info.run_id  # what `mlflow run .` makes
    exp_id, parent, ours = demo.parent_run(client, launcher, "demo: t", {"epochs": "1"})
    assert ours and exp_id != "0" and client.get_experiment(exp_id).name == demo.EXPERIMENT
    run = client.get_run(parent)
    assert run.info.run_name == "demo: t" and run.data.tags["wattsup.pipeline"] == "demo"
    assert run.data.params == {"epochs": "1"}
    moved = client.get_run(launcher)
    assert moved.info.run_name == f"demo launcher (runs in {demo.EXPERIMENT})"
    assert links.run_fragment(exp_id, parent) in moved.data.tags[notes.NOTE_TAG]
    # launched with --experiment-name: that run is the parent, renamed for what it is
    named = client.create_run(client.create_experiment("chosen"), run_name="random-name-1").info.run_id
    assert demo.parent_run(client, named, "demo: t", {})[1:] == (named, False)
    assert client.get_run(named).info.run_name == "demo: t"
