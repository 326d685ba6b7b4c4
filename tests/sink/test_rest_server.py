"""The MLflow REST client without MLflow (sink/rest.py) against a real ``mlflow server``
(sqlite-backed): every call, read back through MLflow's own client. Starts a server, so it is
marked ``integration`` like the tests in tests/integration."""

import json
import os
import subprocess
import sys
import time

import pytest

from mlflow_wattsup.sink.rest import Metric, Refused, RestClient, context_tags

pytestmark = pytest.mark.integration


def test_experiments(server, mlflow_client, experiment):
    c = RestClient(server.uri)
    assert c.get_experiment_by_name(experiment) is None
    exp_id = c.create_experiment(experiment, {"team": "mri"})
    assert c.get_experiment_by_name(experiment)["experiment_id"] == exp_id
    assert c.get_or_create_experiment(experiment) == exp_id
    c.set_experiment_tag(exp_id, "k", "v")
    exp = mlflow_client.get_experiment(exp_id)
    assert exp.name == experiment and exp.tags["team"] == "mri" and exp.tags["k"] == "v"
    assert {t["key"] for t in c.get_experiment(exp_id)["tags"]} >= {"team", "k"}
    with pytest.raises(Refused, match="RESOURCE_ALREADY_EXISTS"):
        c.create_experiment(experiment)
    assert c.get_or_create_experiment(experiment + "-2") != exp_id


def test_a_run_from_start_to_end(server, mlflow_client, experiment):
    c = RestClient(server.uri)
    exp_id = c.get_or_create_experiment(experiment)
    start = int(time.time() * 1000) - 5000
    run = c.create_run(exp_id, {"mlflow.user": "ana", "a": "1"}, run_name="seg-01", start_time_ms=start)
    run_id = run["info"]["run_id"]
    assert run["info"]["artifact_uri"]
    metrics = [Metric("power_w", 10.0 + i, start + 1000 * i, i) for i in range(2500)]
    params = {f"p{i}": str(i) for i in range(150)} | {"long": "x" * 7000}
    tags = {f"t{i}": "y" for i in range(120)}
    calls = c.log_batch(run_id, metrics + [Metric("energy_kwh", 0.5, start)], params, tags)
    assert 3 <= calls <= 6
    c.set_tag(run_id, "mlflow.note.content", "a description")
    c.update_run(run_id, status="FINISHED", end_time_ms=start + 4000)

    got = mlflow_client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.info.end_time == start + 4000
    assert got.info.start_time == start and got.info.run_name == "seg-01" and got.info.user_id == "ana"
    assert got.data.metrics["energy_kwh"] == 0.5
    assert len(got.data.params) == 151 and got.data.params["long"] == "x" * 6000
    assert {k: got.data.tags[k] for k in tags} == tags
    assert got.data.tags["mlflow.note.content"] == "a description" and got.data.tags["a"] == "1"
    history = mlflow_client.get_metric_history(run_id, "power_w")
    assert sorted(m.step for m in history) == list(range(2500))
    assert c.get_run(run_id)["info"]["status"] == "FINISHED"

    # a replay of the same values (a spool sent again) adds nothing
    c.log_batch(run_id, metrics[:1500], {"p1": "1"}, {"t1": "y"})
    assert len(mlflow_client.get_metric_history(run_id, "power_w")) == 2500
    # a param MLflow will not change: refused, in one line naming the call and the run
    with pytest.raises(Refused) as e:
        c.log_batch(run_id, params={"p1": "changed"})
    assert (
        f"refused log-batch to run {run_id} (0 metrics, 1 params, 0 tags) (HTTP 400 INVALID_PARAMETER_VALUE)"
        in str(e.value)
    )
    with pytest.raises(Refused, match="refused the lookup of run 0123abc .HTTP 404 RESOURCE_DOES_NOT_EXIST"):
        c.get_run("0123abc")


def test_dataset_inputs_are_the_same_as_mlflows(server, mlflow_client, experiment, tmp_path):
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag

    c = RestClient(server.uri)
    exp_id = c.get_or_create_experiment(experiment)
    t1 = str(tmp_path / "T1.nii.gz")
    ds = MetaDataset(LocalArtifactDatasetSource(t1), name="T1", digest="0123456789abcdef")._to_mlflow_entity()
    ours = c.create_run(exp_id, {"mlflow.user": "x"})["info"]["run_id"]
    theirs = c.create_run(exp_id, {"mlflow.user": "x"})["info"]["run_id"]
    tags = {"mlflow.data.context": "input", "kind": "file-sha256"}
    calls = c.log_inputs(
        ours,
        [
            {
                "name": ds.name,
                "digest": ds.digest,
                "source_type": ds.source_type,
                "source": ds.source,
                "schema": ds.schema,
                "profile": ds.profile,
                "tags": tags,
            }
        ],
    )
    assert calls == 1
    mlflow_client.log_inputs(theirs, [DatasetInput(ds, [InputTag(k, v) for k, v in tags.items()])])

    def inputs(run_id):
        return [
            (d.dataset.to_dictionary(), {t.key: t.value for t in d.tags})
            for d in mlflow_client.get_run(run_id).inputs.dataset_inputs
        ]

    assert inputs(ours) == inputs(theirs) and inputs(ours)[0][0]["source_type"] == "local"
    assert json.loads(inputs(ours)[0][0]["source"]) == {"uri": t1}


def test_search_runs_pages_through_every_run(server, experiment):
    c = RestClient(server.uri)
    exp_id = c.get_or_create_experiment(experiment)
    made = {c.create_run(exp_id, {"mlflow.user": "x", "k": str(i % 2)})["info"]["run_id"] for i in range(7)}
    pages = []
    token = None
    while True:
        runs, token = c.search_runs_page([exp_id], max_results=3, page_token=token)
        pages.append(len(runs))
        if not token:
            break
    assert pages == [3, 3, 1]
    assert {r["info"]["run_id"] for r in c.search_runs([exp_id], page_size=3)} == made
    assert len(list(c.search_runs([exp_id], "tags.k = '1'"))) == 3


SCRIPT = """\
import json, sys, time
from mlflow_wattsup.sink import rest
uri, exp_name, mode = sys.argv[1:]
if mode == "mlflow":
    import mlflow
    mlflow.set_tracking_uri(uri)
    exp_id = mlflow.set_experiment(exp_name).experiment_id
    with mlflow.start_run() as run:
        print("RUN_ID", run.info.run_id)
else:
    c = rest.RestClient(uri)
    exp_id = c.get_or_create_experiment(exp_name)
    run = c.create_run(exp_id, rest.context_tags())
    c.update_run(run["info"]["run_id"], "FINISHED", int(time.time() * 1000))
    assert "mlflow" not in sys.modules
    print("RUN_ID", run["info"]["run_id"])
"""


def test_a_run_we_create_is_tagged_like_one_mlflow_start_run_creates(
    server, mlflow_client, experiment, tmp_path
):
    """The same script, in a git repository with a remote, creates one run with
    ``mlflow.start_run()`` and one with the REST client (no MLflow imported): same tags, same
    user; only the generated run names differ."""
    repo = tmp_path / "pipeline"
    repo.mkdir()
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@x",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@x",
        WATTSUP_DISABLE_PLUGIN="1",  # our own context plugin needs MLflow: its tags come in phase 2
        MLFLOW_RUN_CONTEXT=json.dumps({"scheduler.job": "17"}),
    )
    script = repo / "segment.py"
    script.write_text(SCRIPT)
    for cmd in (
        ["git", "init", "-q", "-b", "main"],
        ["git", "remote", "add", "origin", "https://bot:tok@git.example.org/lab/seg.git"],
        ["git", "add", "segment.py"],
        ["git", "commit", "-q", "-m", "x"],
    ):
        subprocess.run(cmd, cwd=repo, check=True, env=env, capture_output=True)
    ids = {}
    for mode in ("mlflow", "rest"):
        r = subprocess.run(
            [sys.executable, str(script), server.uri, experiment, mode],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stderr
        [ids[mode]] = [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("RUN_ID ")]
    a, b = (mlflow_client.get_run(ids[m]) for m in ("mlflow", "rest"))
    ta, tb = dict(a.data.tags), dict(b.data.tags)
    assert ta.pop("mlflow.runName") and tb.pop("mlflow.runName")  # random names, both set
    assert ta == tb
    assert ta["mlflow.source.name"] == str(script) and ta["mlflow.source.type"] == "LOCAL"
    assert ta["mlflow.source.git.repoURL"] == "https://git.example.org/lab/seg.git"
    assert ta["mlflow.source.git.branch"] == "main" and len(ta["mlflow.source.git.commit"]) == 40
    assert ta["scheduler.job"] == "17"
    assert a.info.user_id == b.info.user_id and a.info.status == b.info.status == "FINISHED"
    assert context_tags()  # and in this process it resolves too
