"""A `wattsup run` inside a command another `wattsup run` already measures into the same run
($WATTSUP_RUN_ID) is one stage of that measurement, never a second one."""

import sys

import pytest
from support.helpers import only_run, wattsup

BURN = "import time\nend = time.process_time() + 1.0\nwhile time.process_time() < end: sum(range(10000))"


@pytest.mark.slow
def test_wattsup_run_inside_wattsup_run_is_one_measurement(tracking_uri, client, experiment, tmp_path):
    script = tmp_path / "burn.py"
    script.write_text(BURN)
    inner = f"{sys.executable} -m mlflow_wattsup run --run-name inner -- {sys.executable} {script}"
    r = wattsup("run", "--experiment", experiment, "--", "bash", "-c", f"{inner} && echo after-inner")
    assert r.returncode == 0, r.stderr
    run = only_run(client, experiment)  # the inner one joined the outer run, as $MLFLOW_RUN_ID says
    rid, m = run.info.run_id, run.data.metrics
    for key in ("energy_kwh", "cpu_time_s", "duration_s", "overhead_cpu_s"):
        assert len(client.get_metric_history(rid, key)) == 1, key  # written by one measurement, once
    steps = [p.step for p in client.get_metric_history(rid, "system/wattsup_power_w")]
    assert steps and len(steps) == len(set(steps))  # one power series, not two interleaved
    # the inner command is a stage of the outer measurement, within it
    assert 1.0 <= m["stage/inner/cpu_time_s"] <= m["cpu_time_s"]
    assert m["stage/inner/energy_kwh"] <= m["energy_kwh"]
    assert run.data.tags["wattsup.command"].startswith("bash -c ")  # the outer command's tag stays
    assert run.info.status == "FINISHED" and run.data.tags["wattsup.exit_code"] == "0"
    assert f"logged as stage/inner/ of run {rid}" in r.stderr and "after-inner" in r.stdout
    assert r.stderr.count("wattsup: FINISHED in ") == 1  # one summary: the outer run's
