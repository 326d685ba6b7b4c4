"""Shared by several tests (moved out of test_distributed.py so that no test module imports another)."""

import time

from mlflow_wattsup.meters.units import J_PER_KWH
from mlflow_wattsup.sink import keys

BIG = 262143328850


WAITER = (
    "import os, sys, time\n"
    "go, code = sys.argv[1], int(sys.argv[2])\n"
    "while not os.path.exists(go): time.sleep(0.05)\n"
    "s = time.process_time()\n"
    "while time.process_time() - s < 0.2: pass\n"
    "sys.exit(code)\n"
)


def job_run(client, experiment, deadline_s=60):
    """The run of the job once it exists (polls)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        exp = client.get_experiment_by_name(experiment)
        if exp is not None:
            runs = client.search_runs([exp.experiment_id])
            if runs:
                return runs[0]
        time.sleep(0.2)
    raise AssertionError(f"no run in {experiment} after {deadline_s} s")


def wait_joined(client, run_id, agents, procs, deadline_s=90):
    t0 = time.monotonic()
    while time.monotonic() - t0 < deadline_s:
        tags = client.get_run(run_id).data.tags
        if all(keys.dist_agent_tag(a) in tags for a in range(agents)):
            return tags
        for p in procs:
            assert p.poll() is None, p.communicate()
        time.sleep(0.2)
    raise AssertionError(f"agents did not join: {client.get_run(run_id).data.tags}")


def kwh_of(j):
    return j / J_PER_KWH
