"""``mlflow_wattsup.autolog()`` and ``WATTSUP_AUTOLOG=1``: scripts that never heard of us, run as
users run them (a fresh ``python script.py`` against a real sqlite store), each run's status and
totals read back from the store."""

import os
import subprocess
import sys
import textwrap

import pytest
from support.contract import documented, undocumented
from support.helpers import perl_burn

PRELUDE = """\
import os, signal, subprocess, sys, time
import mlflow
mlflow.set_experiment({experiment!r})

def burn(cpu_s):
    t = time.process_time()
    while time.process_time() - t < cpu_s:
        sum(range(1000))
"""


def run_script(tmp_path, experiment, body, env=None, name="script.py", expect_rc=0):
    path = tmp_path / name
    path.write_text(PRELUDE.format(experiment=experiment) + textwrap.dedent(body))
    e = {k: v for k, v in os.environ.items() if not k.startswith("WATTSUP_AUTOLOG")}
    e.update(env or {})
    r = subprocess.run([sys.executable, str(path)], env=e, capture_output=True, text=True, timeout=300)
    assert r.returncode == expect_rc, r.stderr[-3000:]
    return r


def runs_by_name(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    return {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}


def assert_measured(client, run, status, cpu_s=0.0, by="WATTSUP_AUTOLOG", theirs=lambda key: False):
    """Status, totals and tags of a run we measured; every key but ``theirs`` (the user's, a
    library's) is on docs/metrics.md."""
    m, t = run.data.metrics, run.data.tags
    assert run.info.status == status and t["wattsup.status"] == status, (run.info.run_name, run.info.status)
    assert t["wattsup.autolog"] == by
    assert m["energy_kwh"] > 0 and m["carbon_g"] > 0 and m["duration_s"] > 0
    assert m["cpu_time_s"] >= cpu_s * 0.95, (run.info.run_name, m["cpu_time_s"], cpu_s)
    assert t["wattsup.source.cpu"] in ("rapl", "estimate")
    logged = {k for k in set(m) | set(run.data.params) | set(t) if not theirs(k)}
    assert undocumented(logged, documented()) == []


@pytest.mark.slow
def test_env_measures_nested_failed_and_implicit_runs(tmp_path, tracking_uri, client, experiment):
    body = f"""
    with mlflow.start_run(run_name="parent"):
        with mlflow.start_run(run_name="child-1", nested=True):
            burn(0.6)
        with mlflow.start_run(run_name="child-2", nested=True):
            burn(0.2)
            subprocess.run(["sh", "-c", {perl_burn(5, 1)!r}], check=True)  # a child process: 0.5 CPU-s
    try:
        with mlflow.start_run(run_name="fails"):
            burn(0.3)
            raise ValueError("the user's bug")
    except ValueError:
        pass
    def in_a_thread():
        with mlflow.start_run(run_name="thread"):
            burn(0.2)
    import threading
    t = threading.Thread(target=in_a_thread)
    t.start()
    t.join()
    from mlflow import start_run as bound  # a name bound by the user: the hooks were in first
    with bound(run_name="bound"):
        burn(0.1)
    mlflow.log_metric("loss", 0.5)  # no active run: MLflow starts one, and nobody ends it
    burn(0.3)
    """
    r = run_script(tmp_path, experiment, body, env={"WATTSUP_AUTOLOG": "1", "WATTSUP_REGION": "FRA"})
    assert "Traceback" not in r.stderr
    runs = runs_by_name(client, experiment)
    assert len(runs) == 7
    assert_measured(client, runs["thread"], "FINISHED", 0.2)
    assert_measured(client, runs["bound"], "FINISHED", 0.1)
    parent, one, two = runs["parent"], runs["child-1"], runs["child-2"]
    for run, cpu_s in ((parent, 1.3), (one, 0.6), (two, 0.7)):
        assert_measured(client, run, "FINISHED", cpu_s)
    assert one.data.tags["mlflow.parentRunId"] == parent.info.run_id
    # the parent measured the whole span: its nested runs' work included
    pm, m1, m2 = parent.data.metrics, one.data.metrics, two.data.metrics
    assert pm["cpu_time_s"] >= m1["cpu_time_s"] + m2["cpu_time_s"] - 0.05
    assert pm["energy_kwh"] >= (m1["energy_kwh"] + m2["energy_kwh"]) * 0.95
    assert pm["duration_s"] >= m1["duration_s"] + m2["duration_s"]
    assert parent.data.params["wattsup.region"] == "FRA"
    assert_measured(client, runs["fails"], "FAILED", 0.3)
    [implicit] = [
        r
        for name, r in runs.items()
        if name not in ("parent", "child-1", "child-2", "fails", "thread", "bound")
    ]
    assert_measured(client, implicit, "FINISHED", 0.3)  # ended by the exit handler
    assert implicit.data.metrics["loss"] == 0.5
    trace = client.get_metric_history(parent.info.run_id, "system/wattsup_power_w")
    energy = client.get_metric_history(parent.info.run_id, "system/wattsup_energy_wh")
    assert len(trace) >= 2 and len({p.step for p in trace}) == len(trace)
    assert max(p.value for p in energy) == pytest.approx(pm["energy_kwh"] * 1000, rel=0.2)
    assert "power_w" not in pm  # the trace is not among the model's metrics


@pytest.mark.parametrize(
    ("ending", "status", "rc"),
    [
        ("", "FINISHED", 0),
        ("raise RuntimeError('boom')", "FAILED", 1),
        ("os.kill(os.getpid(), signal.SIGINT); time.sleep(30)", "KILLED", 1),  # Ctrl-C
    ],
)
def test_runs_never_ended_get_totals_and_status_at_exit(
    tmp_path, tracking_uri, client, experiment, ending, status, rc
):
    """No end_run, no ``with``: the exit handler ends the runs left open, innermost first, with
    how the process ended (MLflow's own handler would end only the innermost, FINISHED), and the
    run a thread left open."""
    body = f"""
    import mlflow_wattsup
    mlflow_wattsup.autolog(region="FRA", pue=1.2)
    import threading
    t = threading.Thread(target=lambda: (mlflow.start_run(run_name="thread"), burn(0.1)))
    t.start()
    t.join()  # the thread is gone, its run still open
    mlflow.start_run(run_name="outer")
    burn(0.2)
    mlflow.start_run(run_name="inner", nested=True)
    burn(0.3)
    {ending}
    """
    r = run_script(tmp_path, experiment, body, expect_rc=rc)
    runs = runs_by_name(client, experiment)
    assert_measured(client, runs["inner"], status, 0.3, by="autolog()")
    assert_measured(client, runs["outer"], status, 0.5, by="autolog()")
    assert_measured(client, runs["thread"], status, 0.1, by="autolog()")
    p = runs["outer"].data.params
    assert p["wattsup.region"] == "FRA" and p["wattsup.pue"] == "1.2"
    assert "wattsup: autolog:" not in r.stderr  # nothing of ours failed


@pytest.mark.slow
def test_without_the_variable_nothing_changes(tmp_path, tracking_uri, client, experiment):
    body = """
    import json
    with mlflow.start_run(run_name="plain"):
        mlflow.log_metric("loss", 1.0)
    print(json.dumps({
        "wrapped": hasattr(mlflow.start_run, "_wattsup_autolog"),
        "loaded": "mlflow_wattsup.run.autolog" in sys.modules,
    }))
    """
    for value in (None, "0"):
        r = run_script(tmp_path, experiment, body, env={"WATTSUP_AUTOLOG": value} if value else None)
        assert r.stdout.strip().splitlines()[-1] == '{"wrapped": false, "loaded": false}'
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2
    for run in runs:
        assert set(run.data.metrics) == {"loss"} and run.data.params == {}
        assert "wattsup.autolog" not in run.data.tags and "wattsup.status" not in run.data.tags
        assert run.data.tags["wattsup.cpu_model"]  # the plugin's tags, as before


@pytest.mark.slow
def test_sklearn_models_carry_the_cost_of_their_run(tmp_path, tracking_uri, client, experiment):
    """sklearn's autolog starts and ends its own run; a user's run logs a model, then works on
    (MLflow's own system metrics on too): each model gets its run's cost up to its creation, and
    search_logged_models filters on it."""
    body = """
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    X, y = load_iris(return_X_y=True)
    mlflow.sklearn.autolog()
    LogisticRegression(max_iter=300).fit(X, y)
    mlflow.sklearn.autolog(disable=True)
    with mlflow.start_run(run_name="manual", log_system_metrics=True):
        model = LogisticRegression(max_iter=300).fit(X, y)
        mlflow.sklearn.log_model(model, name="clf")
        burn(1.0)  # after the model: the run's cost, not the model's
        time.sleep(1.5)
    """
    env = {"WATTSUP_AUTOLOG": "1", "MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL": "1"}
    run_script(tmp_path, experiment, body, env=env)
    import mlflow

    runs = runs_by_name(client, experiment)
    assert len(runs) == 2
    manual = runs.pop("manual")
    [auto] = runs.values()
    exp_id = manual.info.experiment_id
    for run in (auto, manual):
        mlflow_system = {k for k in run.data.metrics if k.startswith("system/") and "wattsup" not in k}
        sklearn = {k for k in [*run.data.params, *run.data.tags] if not k.startswith("wattsup.")}
        theirs = sklearn | mlflow_system | {k for k in run.data.metrics if k.startswith("training_")}
        assert_measured(client, run, "FINISHED", theirs=theirs.__contains__)
        [model] = mlflow.search_logged_models(
            experiment_ids=[exp_id],
            filter_string=f"metrics.energy_kwh < {run.data.metrics['energy_kwh']!r} AND "
            f"source_run_id = '{run.info.run_id}'",
            output_format="list",
        )
        mm = {m.key: m.value for m in model.metrics}
        assert 0 < mm["energy_kwh"] < run.data.metrics["energy_kwh"]
        assert 0 < mm["duration_s"] < run.data.metrics["duration_s"]
        assert mm["carbon_g"] > 0 and "cpu_time_s" in mm
        assert model.tags["wattsup.model_basis"].startswith(f"run {run.info.run_id}: from its start to")
        assert model.tags["wattsup.source.cpu"] == run.data.tags["wattsup.source.cpu"]
        # the run's own value is still its total, logged at its end
        history = client.get_metric_history(run.info.run_id, "energy_kwh")
        assert max(history, key=lambda h: h.timestamp).value == run.data.metrics["energy_kwh"]
    mm = {m.key: m.value for m in client.get_logged_model(model.model_id).metrics}
    assert manual.data.metrics["cpu_time_s"] - mm["cpu_time_s"] >= 0.9  # the burn after it
    # MLflow's system metrics and ours side by side, each logged once
    m = manual.data.metrics
    assert "system/cpu_utilization_percentage" in m and "system/wattsup_power_w" in m
    for key in ("system/cpu_utilization_percentage", "system/wattsup_power_w"):
        steps = [p.step for p in client.get_metric_history(manual.info.run_id, key)]
        assert steps and len(steps) == len(set(steps)), key


def test_silent_no_trace_then_disabled(tmp_path, tracking_uri, client, experiment):
    body = """
    import mlflow_wattsup
    mlflow_wattsup.autolog(silent=True, log_power_trace=False, interval_s=0.5)
    with mlflow.start_run(run_name="quiet"):
        burn(0.3)
    mlflow_wattsup.autolog(disable=True)
    with mlflow.start_run(run_name="after"):
        burn(0.1)
    """
    r = run_script(tmp_path, experiment, body)
    assert "wattsup" not in r.stderr
    runs = runs_by_name(client, experiment)
    quiet = runs["quiet"]
    assert_measured(client, quiet, "FINISHED", 0.3, by="autolog()")
    assert quiet.data.params["wattsup.interval_s"] == "0.5"
    assert not [k for k in quiet.data.metrics if k.startswith("system/")]
    assert "energy_kwh" not in runs["after"].data.metrics and "wattsup.autolog" not in runs["after"].data.tags


@pytest.mark.slow
def test_track_and_wattsup_run_inside_are_one_measurement(tmp_path, tracking_uri, client, experiment):
    """A track() block in an autologged run is one of its stages; a script under ``wattsup run``
    is measured by wattsup run alone."""
    body = """
    import mlflow_wattsup
    with mlflow.start_run(run_name="outer"):
        with mlflow_wattsup.track("block"):
            burn(0.3)
    """
    run_script(tmp_path, experiment, body, env={"WATTSUP_AUTOLOG": "1"})
    outer = runs_by_name(client, experiment)["outer"]
    assert_measured(client, outer, "FINISHED", 0.3)
    assert outer.data.metrics["stage/block/cpu_time_s"] >= 0.28
    assert len(client.get_metric_history(outer.info.run_id, "energy_kwh")) == 1

    inner = tmp_path / "inner.py"
    inner.write_text(
        PRELUDE.format(experiment=experiment + "-wr")
        + "with mlflow.start_run():\n    burn(0.3)\n    mlflow.log_metric('loss', 2.0)\n"
    )
    env = dict(os.environ, WATTSUP_AUTOLOG="1")
    r = subprocess.run(
        [sys.executable, "-m", "mlflow_wattsup", "run", "--experiment", experiment + "-wr", "--quiet", "--"]
        + [sys.executable, str(inner)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    exp = client.get_experiment_by_name(experiment + "-wr")
    [run] = client.search_runs([exp.experiment_id])
    assert run.data.metrics["loss"] == 2.0 and run.data.metrics["cpu_time_s"] >= 0.3
    assert "wattsup.autolog" not in run.data.tags and "wattsup.command" in run.data.tags
    assert len(client.get_metric_history(run.info.run_id, "energy_kwh")) == 1


def test_our_failures_never_break_the_users_run(tmp_path, tracking_uri, client, experiment):
    """A measurement that cannot start, or a bad setting in the environment: said once, and the
    user's runs go on (measured where they still can be)."""
    body = """
    import mlflow_wattsup.tracking.tracker as tracker
    real = tracker.Tracker
    def broken(*args, **kw):
        raise OSError("no meters today")
    tracker.Tracker = broken
    for name in ("a", "b"):
        with mlflow.start_run(run_name=name):
            mlflow.log_metric("loss", 1.0)
    tracker.Tracker = real
    with mlflow.start_run(run_name="c"):
        burn(0.2)
    """
    r = run_script(tmp_path, experiment, body, env={"WATTSUP_AUTOLOG": "1", "WATTSUP_REGION": "Atlantis"})
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("wattsup: autolog:")]
    assert len(lines) == 2, r.stderr  # each said once, though two runs met them
    assert any(
        "starting the measurement failed (OSError: no meters today); the run goes on" in ln for ln in lines
    )
    assert any("Atlantis" in ln and "world average" in ln for ln in lines)
    runs = runs_by_name(client, experiment)
    for name in ("a", "b"):
        assert runs[name].info.status == "FINISHED" and runs[name].data.metrics == {"loss": 1.0}
    assert_measured(client, runs["c"], "FINISHED", 0.2)
    assert runs["c"].data.tags["wattsup.source.carbon_intensity"].startswith("world-average")


def test_bad_settings_are_refused_before_any_run():
    import mlflow_wattsup
    from mlflow_wattsup.analysis.carbon import CarbonConfigError
    from mlflow_wattsup.meters.estimator import EstimatorConfigError

    with pytest.raises(CarbonConfigError, match="unknown region 'Atlantis'"):
        mlflow_wattsup.autolog(region="Atlantis")
    with pytest.raises(EstimatorConfigError, match="CPU TDP must be positive"):
        mlflow_wattsup.autolog(cpu_tdp_w=-3)
    with pytest.raises(ValueError, match="interval_s must be > 0"):
        mlflow_wattsup.autolog(interval_s=0)
    import mlflow

    assert not hasattr(mlflow.start_run, "_wattsup_autolog")  # nothing was installed


@pytest.mark.slow
def test_settings_from_the_environment(tmp_path, tracking_uri, client, experiment):
    body = """
    with mlflow.start_run(run_name=os.environ["RUN_NAME"]):
        burn(0.2)
    """
    env = {"WATTSUP_AUTOLOG": "yes", "WATTSUP_INTERVAL_S": "0.5", "WATTSUP_POWER_TRACE": "off"}
    run_script(tmp_path, experiment, body, env={**env, "WATTSUP_PUE": "1.3", "RUN_NAME": "env"})
    r = run_script(tmp_path, experiment, body, env={"WATTSUP_AUTOLOG": "maybe", "RUN_NAME": "typo"})
    assert (
        "wattsup: autolog: WATTSUP_AUTOLOG='maybe' is not one of 1/true/yes/on: autolog stays off" in r.stderr
    )
    runs = runs_by_name(client, experiment)
    run = runs["env"]
    assert_measured(client, run, "FINISHED", 0.2)
    assert run.data.params["wattsup.interval_s"] == "0.5" and run.data.params["wattsup.pue"] == "1.3"
    assert run.data.tags["wattsup.source.pue"] == "env"
    assert not [k for k in run.data.metrics if k.startswith("system/")]
    assert "energy_kwh" not in runs["typo"].data.metrics
