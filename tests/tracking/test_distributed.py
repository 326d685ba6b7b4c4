"""One run for a distributed job: rank/host discovery, the total rule, several agents joining one
run without a race, simulated hosts (two agents with their own host ids and fake powercap trees),
torchrun (gloo, CPU) under ``wattsup run`` and with ``track()`` inside, a rank that fails and an
agent that dies. The real-SLURM tests are in tests/integration/test_slurm_distributed.py."""

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from support.distributed import BIG, WAITER, job_run, kwh_of, wait_joined
from support.fakes.sysfs import FakeRapl
from support.helpers import WATTSUP

from mlflow_wattsup.meters.units import Energy
from mlflow_wattsup.sink import keys
from mlflow_wattsup.tracking.distributed import (
    AgentReport,
    DistributedSetupError,
    combine,
    discover,
)

# -- discovery -----------------------------------------------------------------------------------


def test_torchrun_environment():
    env = {
        "RANK": "3",
        "LOCAL_RANK": "1",
        "WORLD_SIZE": "4",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "1",
        "GROUP_WORLD_SIZE": "2",
        "TORCHELASTIC_RUN_ID": "abc",
        "MASTER_ADDR": "n1",
        "MASTER_PORT": "29500",
        "WATTSUP_HOST_ID": "n2",
    }
    c = discover(env)
    assert (c.launcher, c.rank, c.world_size, c.local_rank, c.local_size, c.node, c.nodes, c.host) == (
        "torchrun",
        3,
        4,
        1,
        2,
        1,
        2,
        "n2",
    )
    assert c.job_key == "torchrun:abc@n1:29500"
    assert not c.host_agent and c.agent("rank") == 3 and c.agent("host") == 1
    assert c.agents("rank") == 4 and c.agents("host") == 2 and not c.leader("host")
    # a torchrun inside a SLURM task: the SLURM job is part of the key
    c = discover({**env, "SLURM_JOB_ID": "77", "SLURM_STEP_ID": "0", "SLURM_PROCID": "1"})
    assert c.launcher == "torchrun" and c.job_key == "slurm::77/torchrun:abc@n1:29500"
    # an elastic restart is a new group of workers, so a new run (an old one may be left RUNNING)
    assert discover({**env, "TORCHELASTIC_RESTART_COUNT": "1"}).job_key == "torchrun:abc@n1:29500#1"


def test_slurm_step_and_batch_script():
    step = {
        "SLURM_JOB_ID": "42",
        "SLURM_STEP_ID": "1",
        "SLURM_PROCID": "2",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "1",
        "SLURM_STEP_NUM_TASKS": "4",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_STEP_TASKS_PER_NODE": "2(x2)",
        "SLURMD_NODENAME": "cn7",
        "SLURM_CLUSTER_NAME": "c",
    }
    c = discover(step)
    assert (c.launcher, c.job_key, c.rank, c.world_size, c.node, c.nodes, c.local_size, c.host) == (
        "slurm",
        "slurm:c:42.1",
        2,
        4,
        1,
        2,
        2,
        "cn7",
    )
    assert c.host_agent and c.leader("host") is False and c.agent("rank") == 2
    batch = {k: v for k, v in step.items() if k != "SLURM_STEP_ID"}
    assert discover(batch) is None  # the batch script itself is one process
    assert discover({**step, "SLURM_STEP_NUM_TASKS": "1"}) is None
    assert discover({**step, "WATTSUP_DISTRIBUTED": "0"}) is None
    assert discover({**step, "SLURM_RESTART_COUNT": "2"}).job_key == "slurm:c:42.1#2"  # requeued
    assert discover({}) is None


def test_mpi_environments():
    c = discover(
        {
            "OMPI_COMM_WORLD_SIZE": "4",
            "OMPI_COMM_WORLD_RANK": "2",
            "OMPI_COMM_WORLD_LOCAL_RANK": "0",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
            "PMIX_NAMESPACE": "prterun-x-1@1",
        }
    )
    assert (c.launcher, c.job_key, c.node, c.nodes, c.host_agent) == ("mpi", "mpi:prterun-x-1@1", 1, 2, True)
    c = discover({"PMI_SIZE": "2", "PMI_RANK": "1", "MPI_LOCALRANKID": "1", "PMI_KVSNAME": "kvs_9"})
    assert (c.launcher, c.job_key, c.rank, c.local_rank) == ("mpi", "mpi:kvs_9", 1, 1)
    with pytest.raises(DistributedSetupError, match="set \\$WATTSUP_JOB_KEY"):
        discover({"PMI_SIZE": "2", "PMI_RANK": "1"})
    assert discover({"PMI_SIZE": "2", "PMI_RANK": "1", "WATTSUP_JOB_KEY": "j"}).job_key == "j"
    with pytest.raises(DistributedSetupError, match="PMI_SIZE"):
        discover({"PMI_SIZE": "two", "PMI_RANK": "1"})


# -- the total rule ------------------------------------------------------------------------------


def _rep(agent, host, local, energy, machine, status="FINISHED", cpu_s=1.0, **src):
    return AgentReport(
        agent, host, agent, local, status, 0, 2.0 + agent, Energy(*energy), Energy(*machine), cpu_s, src
    )


def test_combine_counts_each_host_machine_once_and_sums_ranks():
    reports = [
        _rep(0, "a", 0, (10, 100, 1), (50, 400, 5), cpu="rapl", gpu="nvml"),
        _rep(1, "a", 1, (12, 150, 2), (51, 401, 5), cpu="rapl", gpu="nvml"),  # same host: machine not added
        _rep(2, "b", 0, (7, 0, 1), (20, 0, 3), cpu="estimate", gpu="none"),
    ]
    job = combine(reports, 3)
    assert job.status == "FINISHED" and job.missing == ()
    assert job.machine_energy == Energy(70, 400, 8)  # a's local rank 0 + b
    assert job.energy == Energy(29, 250, 4)
    assert job.hosts["a"].energy == Energy(22, 250, 3) and job.hosts["a"].agents == (0, 1)
    assert job.cpu_s == 3.0 and job.duration_s == 4.0
    assert job.sources["cpu"] == "estimate,rapl" and job.sources["gpu"] == "none,nvml"
    # report round trip is exact
    assert AgentReport.from_json(reports[1].to_json()) == reports[1]


def test_combine_caps_a_host_at_its_machine_energy_and_fails_on_missing_or_failed():
    # two ranks each claim the whole GPU (NVML could not map processes): counted once
    job = combine([_rep(0, "a", 0, (1, 300, 0), (5, 300, 1)), _rep(1, "a", 1, (1, 300, 0), (5, 300, 1))], 2)
    assert job.energy == Energy(2, 300, 0) and job.hosts["a"].capped == ("gpu",)
    job = combine([_rep(0, "a", 0, (1, 0, 0), (5, 0, 1))], 3)
    assert job.status == "FAILED" and job.missing == (1, 2) and job.energy == Energy(1, 0, 0)
    job = combine([_rep(0, "a", 0, (1, 0, 0), (5, 0, 1)), _rep(1, "b", 0, (1, 0, 0), (5, 0, 1), "KILLED")], 2)
    assert job.status == "KILLED"
    job = combine(
        [_rep(0, "a", 0, (1, 0, 0), (5, 0, 1), "KILLED"), _rep(1, "b", 0, (1, 0, 0), (5, 0, 1), "FAILED")], 2
    )
    assert job.status == "FAILED"


# -- several agents, one run (processes; simulated hosts) ----------------------------------------


def _rapl(root: Path) -> FakeRapl:
    return FakeRapl(root, {"intel-rapl:0": ("package-0", 1_000_000, BIG), "intel-rapl:0:0": ("dram", 0, BIG)})


def _slurm_env(job, rank, ntasks, node, nnodes, local, host, **extra):
    return {
        "SLURM_JOB_ID": job,
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(local),
        "SLURM_NODEID": str(node),
        "SLURM_STEP_NUM_TASKS": str(ntasks),
        "SLURM_STEP_NUM_NODES": str(nnodes),
        "WATTSUP_HOST_ID": host,
        "WATTSUP_DIST_JOIN_S": "60",
        "WATTSUP_DIST_REPORT_S": "60",
        **extra,
    }


def _start_agents(tmp_path, experiment, job, hosts, codes=(0, 0), extra=None):
    """One `wattsup run` per simulated host (own host id, own fake powercap tree)."""
    script = tmp_path / "waiter.py"
    script.write_text(WAITER)
    go = tmp_path / "go"
    procs, fakes = [], []
    for rank, host in enumerate(hosts):
        fake = _rapl(tmp_path / f"rapl-{host}")
        fakes.append(fake)
        env = {**os.environ, **_slurm_env(job, rank, len(hosts), rank, len(hosts), 0, host), **(extra or {})}
        cmd = [*WATTSUP, "run", "--experiment", experiment, "--interval", "0.2", "--quiet"]
        cmd += [
            "--powercap-root",
            str(fake.root),
            "--",
            sys.executable,
            str(script),
            str(go),
            str(codes[rank]),
        ]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    return procs, fakes, go


@pytest.mark.slow
def test_two_simulated_hosts_one_run_sum_per_host(tracking_uri, client, experiment, tmp_path):
    job = uuid.uuid4().hex[:8]
    procs, fakes, go = _start_agents(tmp_path, experiment, job, ["hosta", "hostb"])
    run = job_run(client, experiment)
    wait_joined(client, run.info.run_id, 2, procs)
    # while both agents measure: host a's package uses 30 J and dram 3 J, host b's 50 J and 5 J
    fakes[0].add("intel-rapl:0", 30_000_000)
    fakes[0].add("intel-rapl:0:0", 3_000_000)
    fakes[1].add("intel-rapl:0", 50_000_000)
    fakes[1].add("intel-rapl:0:0", 5_000_000)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, "every agent logs to the one run"
    r = runs[0]
    m, t = r.data.metrics, r.data.tags
    assert r.info.status == "FINISHED" and t[keys.STATUS] == "FINISHED"
    assert t[keys.DIST_JOB] == f"slurm::{job}.0" and t[keys.DIST_HOSTS] == "hosta,hostb"
    assert t[keys.DIST_MODE] == "rank" and t[keys.DIST_AGENTS] == "2"
    assert m["host/hosta/machine_energy_cpu_kwh"] == pytest.approx(kwh_of(30), rel=1e-9)
    assert m["host/hostb/machine_energy_cpu_kwh"] == pytest.approx(kwh_of(50), rel=1e-9)
    assert m["machine_energy_cpu_kwh"] == pytest.approx(kwh_of(80), rel=1e-9)
    assert m["machine_energy_ram_kwh"] == pytest.approx(kwh_of(8), rel=1e-9)
    reports = [AgentReport.from_json(t[keys.dist_agent_tag(a)]) for a in (0, 1)]
    assert [r_.host for r_ in reports] == ["hosta", "hostb"]
    total = reports[0].energy + reports[1].energy
    assert m["energy_kwh"] == pytest.approx(kwh_of(total.total_j), rel=1e-9)
    assert m["energy_cpu_kwh"] == pytest.approx(m["rank/0/energy_cpu_kwh"] + m["rank/1/energy_cpu_kwh"])
    assert m["cpu_time_s"] == pytest.approx(reports[0].cpu_s + reports[1].cpu_s)
    assert min(rep.cpu_s for rep in reports) >= 0.2  # each agent measured its own command's burn
    assert 0 < m["energy_cpu_kwh"] <= m["machine_energy_cpu_kwh"]
    hist = client.get_metric_history(r.info.run_id, "rank/1/power_w")
    assert hist, "agent 1's power series is in the run under its prefix"
    assert "power_w" not in m
    _all_documented(r)


def _all_documented(run):
    from support.contract import documented, undocumented

    logged = {*run.data.metrics, *run.data.params, *run.data.tags}
    assert undocumented(logged, documented()) == []


@pytest.mark.slow
def test_a_failed_rank_fails_the_run_and_a_dead_agent_is_named(tracking_uri, client, experiment, tmp_path):
    job = uuid.uuid4().hex[:8]
    hosts = ["hosta", "hostb", "hostc"]
    procs, fakes, go = _start_agents(
        tmp_path, experiment, job, hosts, codes=(0, 3, 0), extra={"WATTSUP_DIST_REPORT_S": "4"}
    )
    run = job_run(client, experiment)
    wait_joined(client, run.info.run_id, 3, procs)
    for f in fakes:
        f.add("intel-rapl:0", 10_000_000)
    os.kill(procs[2].pid, signal.SIGKILL)  # host c's agent dies: it never reports
    procs[2].wait(timeout=30)
    go.touch()
    assert [p.wait(timeout=120) for p in procs[:2]] == [0, 3]
    r = client.get_run(run.info.run_id)
    m, t = r.data.metrics, r.data.tags
    assert r.info.status == "FAILED" and t[keys.STATUS] == "FAILED"
    assert t[keys.DIST_MISSING] == "agent 2: joined: host hostc, rank 2, local rank 0, no report"
    assert t[keys.DIST_HOSTS] == "hosta,hostb"
    assert AgentReport.from_json(t[keys.dist_agent_tag(1)]).status == "FAILED"
    assert m["machine_energy_cpu_kwh"] == pytest.approx(kwh_of(20), rel=1e-9)  # the hosts that reported
    client_runs = client.search_runs([r.info.experiment_id])
    assert len(client_runs) == 1


@pytest.mark.slow
def test_a_dead_agent_0_is_taken_over_by_the_lowest_agent_that_reported(
    tracking_uri, client, experiment, tmp_path
):
    job = uuid.uuid4().hex[:8]
    hosts = ["hosta", "hostb", "hostc"]
    knobs = {"WATTSUP_DIST_REPORT_S": "4", "WATTSUP_DIST_TAKEOVER_S": "2"}
    procs, fakes, go = _start_agents(tmp_path, experiment, job, hosts, codes=(0, 0, 0), extra=knobs)
    run = job_run(client, experiment)
    wait_joined(client, run.info.run_id, 3, procs)
    for i, f in enumerate(fakes):
        f.add("intel-rapl:0", (i + 1) * 10_000_000)  # 10 J on host a, 20 J on b, 30 J on c
    os.kill(procs[0].pid, signal.SIGKILL)  # agent 0 (it created the run) dies: nobody else ends it
    procs[0].wait(timeout=30)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs[1:]]
    assert [p.returncode for p in procs[1:]] == [0, 0], outs
    r = client.get_run(run.info.run_id)
    m, t = r.data.metrics, r.data.tags
    assert r.info.status == "FAILED" and t[keys.STATUS] == "FAILED"
    assert t[keys.DIST_MISSING] == "agent 0: joined: host hosta, rank 0, local rank 0, no report"
    assert t[keys.DIST_TAKEOVER].startswith("agent 1 took over: run still RUNNING, quiet for ")
    assert t[keys.DIST_TAKEOVER].endswith(", no report from agent 0")
    assert t[keys.DIST_HOSTS] == "hostb,hostc"
    reports = [AgentReport.from_json(t[keys.dist_agent_tag(a)]) for a in (1, 2)]
    assert [rep.status for rep in reports] == ["FINISHED", "FINISHED"]
    assert m["machine_energy_cpu_kwh"] == pytest.approx(kwh_of(50), rel=1e-9)  # hosts b and c only
    assert m["host/hostb/machine_energy_cpu_kwh"] == pytest.approx(kwh_of(20), rel=1e-9)
    total = reports[0].energy + reports[1].energy
    assert m["energy_kwh"] == pytest.approx(kwh_of(total.total_j), rel=1e-9)
    assert m["cpu_time_s"] == pytest.approx(reports[0].cpu_s + reports[1].cpu_s)
    assert "host/hosta/machine_energy_cpu_kwh" not in m and "rank/0/energy_kwh" not in m
    assert keys.EXIT_CODE not in t, "agent 0's command's exit code is unknown"
    assert "agent 2 took over" not in outs[1][1], "only the lowest reporting agent takes over"
    assert len(client.search_runs([r.info.experiment_id])) == 1
    _all_documented(r)


TRACKED = (
    "import os, sys, time\n"
    "import mlflow_wattsup\n"
    "go, out, experiment, root = sys.argv[1:5]\n"
    "t = mlflow_wattsup.track('ddp', experiment=experiment, interval_s=0.2, powercap_root=root)\n"
    "with t:\n"
    "    while not os.path.exists(go): time.sleep(0.05)\n"
    "    s = time.process_time()\n"
    "    while time.process_time() - s < 0.2: pass\n"
    "open(out, 'w').write(str(t.run_id))\n"
)


@pytest.mark.slow
def test_track_on_two_simulated_hosts_joins_one_run(tracking_uri, client, experiment, tmp_path):
    """track() in a two-node torchrun job (one rank per node, simulated by two processes with
    torchrun's variables, their own host ids and fake powercap trees): host 1's agent joins host
    0's run, each host's machine energy is counted once."""
    script = tmp_path / "tracked.py"
    script.write_text(TRACKED)
    go, procs, fakes = tmp_path / "go", [], []
    run_id = uuid.uuid4().hex
    for node, host in enumerate(["hosta", "hostb"]):
        fakes.append(_rapl(tmp_path / f"rapl-{host}"))
        env = {
            **os.environ,
            "RANK": str(node),
            "LOCAL_RANK": "0",
            "WORLD_SIZE": "2",
            "LOCAL_WORLD_SIZE": "1",
            "GROUP_RANK": str(node),
            "GROUP_WORLD_SIZE": "2",
            "TORCHELASTIC_RUN_ID": run_id,
            "MASTER_ADDR": "hosta",
            "MASTER_PORT": "29500",
            "WATTSUP_HOST_ID": host,
            "WATTSUP_DIST_REPORT_S": "60",
        }
        args = [
            sys.executable,
            str(script),
            str(go),
            str(tmp_path / f"out{node}"),
            experiment,
            str(fakes[-1].root),
        ]
        # each under a shell of its own, as under two torchrun agents (the host agent measures its
        # parent's children)
        sh = ["sh", "-c", '"$@"; exit $?', "sh", *args]
        procs.append(subprocess.Popen(sh, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    run = job_run(client, experiment)
    wait_joined(client, run.info.run_id, 2, procs)
    fakes[0].add("intel-rapl:0", 30_000_000)
    fakes[1].add("intel-rapl:0", 50_000_000)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert (tmp_path / "out0").read_text() == (tmp_path / "out1").read_text() == run.info.run_id
    runs = client.search_runs([run.info.experiment_id])
    assert len(runs) == 1
    r = runs[0]
    m, t = r.data.metrics, r.data.tags
    assert r.info.status == "FINISHED" and t[keys.DIST_MODE] == "host" and t[keys.DIST_HOSTS] == "hosta,hostb"
    assert t[keys.DIST_JOB] == f"torchrun:{run_id}@hosta:29500"
    assert m["host/hosta/machine_energy_cpu_kwh"] == pytest.approx(kwh_of(30), rel=1e-9)
    assert m["host/hostb/machine_energy_cpu_kwh"] == pytest.approx(kwh_of(50), rel=1e-9)
    assert m["machine_energy_cpu_kwh"] == pytest.approx(kwh_of(80), rel=1e-9)
    assert m["energy_kwh"] == pytest.approx(m["host/hosta/energy_kwh"] + m["host/hostb/energy_kwh"])
    assert m["host/hostb/cpu_time_s"] >= 0.2
    _all_documented(r)


# -- torchrun (gloo, CPU) ------------------------------------------------------------------------

WORKER = """
import json, os, sys, time
import torch, torch.distributed as dist
out, mode, experiment = sys.argv[1], sys.argv[2], sys.argv[3]
dist.init_process_group("gloo")
rank = dist.get_rank()

def burn():
    t = torch.ones(1000)
    dist.all_reduce(t)
    s = time.process_time()
    while time.process_time() - s < 0.4:
        pass
    dist.barrier()

if mode == "track":
    import mlflow_wattsup
    dist.barrier()
    t = mlflow_wattsup.track("ddp", experiment=experiment, interval_s=0.2)
    dist.barrier()
    c0 = time.process_time()
    with t:
        with t.stage("burn"):
            burn()
        c1 = time.process_time()
    info = {"block_cpu_s": c1 - c0, "run_id": t.run_id}
else:
    burn()
    info = {}
ancestors, pid = [], os.getpid()
while pid > 1:
    pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    ancestors.append(pid)
info.update(rank=rank, pid=os.getpid(), ancestors=ancestors, cpu_s=time.process_time())
with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
    json.dump(info, f)
dist.destroy_process_group()
"""


def _torchrun(tmp_path, mode, experiment):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(script),
        str(tmp_path),
        mode,
        experiment,
    ]


@pytest.mark.slow
def test_wattsup_run_torchrun_is_one_process_tree_and_one_run(tracking_uri, client, experiment, tmp_path):
    cmd = [*WATTSUP, "run", "--experiment", experiment, "--interval", "0.5", "--quiet", "--"]
    p = subprocess.Popen(
        cmd + _torchrun(tmp_path, "plain", experiment),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out = p.communicate(timeout=300)[0]
    assert p.returncode == 0, out
    workers = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    # the proof: both workers descend from this `wattsup run` (torchrun is its child)
    assert all(p.pid in w["ancestors"] for w in workers), (p.pid, workers)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    m, t = runs[0].data.metrics, runs[0].data.tags
    assert keys.DIST_JOB not in t  # nothing to join: one agent saw the whole job
    # the run's CPU time covers both workers' own CPU (plus torchrun's)
    assert m["cpu_time_s"] >= sum(w["cpu_s"] for w in workers) - 0.05


@pytest.mark.slow
def test_track_inside_ddp_one_agent_per_host_and_no_other_runs(tracking_uri, client, experiment, tmp_path):
    env = dict(os.environ, WATTSUP_DIST_REPORT_S="30")
    p = subprocess.run(
        _torchrun(tmp_path, "track", experiment), env=env, capture_output=True, text=True, timeout=300
    )
    assert p.returncode == 0, p.stdout + p.stderr
    workers = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert workers[1]["run_id"] is None  # rank 1 measured nothing and created no run
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == workers[0]["run_id"]
    r = runs[0]
    m, t = r.data.metrics, r.data.tags
    assert r.info.status == "FINISHED" and t[keys.DIST_MODE] == "host" and t[keys.DIST_LAUNCHER] == "torchrun"
    assert t[keys.DIST_AGENTS] == "1"
    host = t[keys.DIST_HOSTS]
    # the host agent measured both local ranks' blocks, not only its own process
    assert m["cpu_time_s"] >= sum(w["block_cpu_s"] for w in workers) - 0.05
    assert m["cpu_time_s"] > max(w["block_cpu_s"] for w in workers) + 0.3
    assert m[f"host/{host}/energy_kwh"] == pytest.approx(m["energy_kwh"])
    assert "stage/burn/energy_kwh" in m
    assert client.get_metric_history(r.info.run_id, f"host/{host}/power_w")
    _all_documented(r)


# -- GPUs: attributed to the ranks that use them, each device counted once per host ------------


def _gpu_agents(tracking_uri, experiment, pids, procs_of):
    """Two rank-mode agents on one host (in this process), each measuring one process and seeing
    the same two fake GPUs; GPU 0 draws 100 W, GPU 1 200 W for 10 s while both measure."""
    from support.fakes.nvml import FakeGpu, FakeNvml

    from mlflow_wattsup.analysis.carbon import CarbonConfig
    from mlflow_wattsup.meters.proctree import ProcessTreeMeter
    from mlflow_wattsup.run.joined import JoinedRun
    from mlflow_wattsup.tracking.distributed import JobContext
    from mlflow_wattsup.tracking.tracker import Tracker

    gpus = [
        FakeGpu("H100", "GPU-0", 100.0, procs=procs_of(0)),
        FakeGpu("H100", "GPU-1", 200.0, procs=procs_of(1)),
    ]
    job = uuid.uuid4().hex
    carbon = CarbonConfig.resolve(None, None, None)
    runs = []
    for rank, pid in enumerate(pids):
        ctx = JobContext("slurm", job, rank, 2, rank, 2, 0, 1, "gpuhost")
        run = JoinedRun(ctx, "rank", experiment=experiment, run_name="gpu", echo=None, flush_interval_s=0)
        tracker = Tracker(ProcessTreeMeter(root_pid=pid), interval_s=60, rapl=False, nvml=FakeNvml(gpus))
        run.record(tracker, carbon)
        runs.append(run)
    FakeNvml(gpus).advance(10.0)  # the hardware: one set of devices for both agents
    import threading

    # agents are separate processes: agent 1 waits (after its report) for agent 0 to end the run
    other = threading.Thread(target=runs[1].finish, args=("FINISHED", 0))
    other.start()
    runs[0].finish("FINISHED", 0)
    other.join(timeout=60)
    assert not other.is_alive(), "agent 1 saw the run end"
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri).get_run(runs[0].run_id)


def _sleepers_gpu_run(tracking_uri, experiment, procs_of):
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(2)]
    try:
        pids = [p.pid for p in sleepers]
        return _gpu_agents(tracking_uri, experiment, pids, lambda i: procs_of(pids, i))
    finally:
        for p in sleepers:
            p.kill()
            p.wait()


def test_gpus_go_to_the_ranks_using_them_and_count_once(tracking_uri, experiment):
    r = _sleepers_gpu_run(tracking_uri, experiment, lambda pids, i: [(pids[i], 1 << 30)])
    m, t = r.data.metrics, r.data.tags
    assert m["machine_energy_gpu_kwh"] == pytest.approx(kwh_of(3000), rel=1e-9)  # 1000 J + 2000 J, once
    assert m["rank/0/energy_gpu_kwh"] == pytest.approx(kwh_of(1000), rel=1e-9)  # rank 0 uses GPU 0
    assert m["rank/1/energy_gpu_kwh"] == pytest.approx(kwh_of(2000), rel=1e-9)
    assert m["energy_gpu_kwh"] == pytest.approx(kwh_of(3000), rel=1e-9)
    assert t[keys.GPU_ATTRIBUTION] == "process" and keys.DIST_CAPPED not in t


def test_gpus_nvml_cannot_map_are_capped_at_the_device(tracking_uri, experiment):
    # the GPUs' processes live in another PID namespace: each agent gets whole devices
    r = _sleepers_gpu_run(tracking_uri, experiment, lambda pids, i: [(2**22 + 12345, 1 << 30)])
    m, t = r.data.metrics, r.data.tags
    assert m["rank/0/energy_gpu_kwh"] == m["rank/1/energy_gpu_kwh"] == pytest.approx(kwh_of(3000), rel=1e-9)
    assert m["energy_gpu_kwh"] == pytest.approx(kwh_of(3000), rel=1e-9)  # not 6000
    assert t[keys.DIST_CAPPED] == "gpuhost: gpu" and t[keys.GPU_ATTRIBUTION] == "device"


def test_takeover_races_one_taker_and_a_late_agent_0_leaves_the_ended_run(
    tracking_uri, client, experiment, monkeypatch
):
    """Agents 1 and 2 finish together while agent 0 is silent: only agent 1 takes over; agent 0
    finishing afterwards finds the run ended and leaves it (status, end time, missing)."""
    import threading

    from mlflow_wattsup.analysis.carbon import CarbonConfig
    from mlflow_wattsup.meters.proctree import ProcessTreeMeter
    from mlflow_wattsup.run.joined import JoinedRun
    from mlflow_wattsup.tracking.distributed import JobContext
    from mlflow_wattsup.tracking.tracker import Tracker

    monkeypatch.setenv("WATTSUP_DIST_TAKEOVER_S", "1")
    monkeypatch.setenv("WATTSUP_DIST_REPORT_S", "2")
    job, carbon, runs = uuid.uuid4().hex, CarbonConfig.resolve(None, None, None), []
    for a in range(3):
        ctx = JobContext("slurm", job, a, 3, 0, 1, a, 3, f"h{a}")
        run = JoinedRun(ctx, "rank", experiment=experiment, run_name="race", echo=None, flush_interval_s=0)
        run.record(
            Tracker(ProcessTreeMeter(root_pid=os.getpid()), interval_s=60, rapl=False, nvml=False), carbon
        )
        runs.append(run)
    others = [threading.Thread(target=r.finish, args=("FINISHED", 0)) for r in runs[1:]]
    for t in others:
        t.start()
    for t in others:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in others)
    assert [r._took_over for r in runs[1:]] == [True, False]
    r = client.get_run(runs[0].run_id)
    missing = "agent 0: joined: host h0, rank 0, local rank 0, no report"
    assert r.info.status == "FAILED" and r.data.tags[keys.DIST_MISSING] == missing
    assert r.data.tags[keys.DIST_TAKEOVER].startswith("agent 1 took over")
    runs[0].finish("FINISHED", 0)  # agent 0 comes back late
    late = client.get_run(runs[0].run_id)
    assert late.info.status == "FAILED" and late.info.end_time == r.info.end_time
    assert late.data.tags[keys.DIST_MISSING] == missing and late.data.tags[keys.DIST_HOSTS] == "h1,h2"
    assert late.data.tags[keys.STATUS] == "FAILED"
    assert AgentReport.from_json(late.data.tags[keys.dist_agent_tag(0)]).host == "h0"  # kept, not counted
    assert late.data.metrics["cpu_time_s"] == r.data.metrics["cpu_time_s"]
