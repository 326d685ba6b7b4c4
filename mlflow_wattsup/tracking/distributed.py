"""Who we are in a distributed job (from the launcher's environment) and how the
reports of several measuring agents add up to one job's totals. Nothing here talks to MLflow.

A distributed job (torchrun/DDP workers, the tasks of a SLURM step, MPI ranks) is measured by
*agents*: in ``rank`` mode (``srun wattsup run ...``) every task's ``wattsup run`` is an agent
measuring its own process tree; in ``host`` mode (``track()`` inside a DDP script) only the first
process of each host (local rank 0) is an agent and measures the tree of all local ranks (the
children of their common parent: torchrun's agent, slurmstepd, mpirun's daemon).

The total rule (:func:`combine`), documented in ``docs/metrics.md``:

* machine-level energy of a host = that host's agent with the lowest local rank (one reading of
  the host's RAPL/GPU counters per host, never one per rank); the job's machine energy = the sum
  over hosts;
* attributed energy of a host = the sum of its agents' process-tree energies, each component
  (CPU, GPU, RAM) capped at the host's machine-level value (two ranks that each claim a whole GPU
  because NVML cannot map their processes count it once); the job's = the sum over hosts;
* CPU time = the sum over agents; duration = the longest agent's;
* status: FAILED when an agent failed or did not report, else KILLED when one was killed, else
  FINISHED.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from mlflow_wattsup.meters.units import Energy

#: settings read from the environment
HOST_ENV = "WATTSUP_HOST_ID"  # override the host name (tests simulate hosts with it)
JOB_ENV = "WATTSUP_JOB_KEY"  # override the job key shared by all agents of one job
OFF_ENV = "WATTSUP_DISTRIBUTED"  # "0": never join; each process is a job of its own


class DistributedSetupError(ValueError):
    """The environment says 'distributed' but cannot tell the agents how to find each other."""


@dataclass(frozen=True)
class JobContext:
    """This process's place in a distributed job.

    ``rank``/``world_size``: global rank and number of ranks; ``local_rank``/``local_size``: on
    this host; ``node``/``nodes``: this host's index and the number of hosts; ``host``: this
    host's name; ``job_key``: a string all processes of the job share (their run is found by it).
    """

    launcher: str
    job_key: str
    rank: int
    world_size: int
    local_rank: int
    local_size: int
    node: int
    nodes: int
    host: str

    @property
    def host_agent(self) -> bool:
        """The process that reads this host's machine-level counters in ``host`` mode."""
        return self.local_rank == 0

    def agent(self, mode: str) -> int:
        """This process's agent number: its rank (``rank`` mode) or its host's index (``host``)."""
        return self.rank if mode == "rank" else self.node

    def agents(self, mode: str) -> int:
        """How many agents report in ``mode``."""
        return self.world_size if mode == "rank" else self.nodes

    def leader(self, mode: str) -> bool:
        """Agent 0 creates the run, waits for the others' reports and logs the totals."""
        return self.agent(mode) == 0 and (mode == "rank" or self.host_agent)


def _int(env: Mapping[str, str], *names: str) -> int | None:
    for n in names:
        v = env.get(n)
        if v not in (None, ""):
            try:
                return int(v.split("(")[0])  # SLURM_TASKS_PER_NODE may read "2(x3)"
            except ValueError:
                raise DistributedSetupError(f"${n}={v!r} is not a number") from None
    return None


def _host(env: Mapping[str, str]) -> str:
    return env.get(HOST_ENV) or env.get("SLURMD_NODENAME") or socket.gethostname()


def discover(environ: Mapping[str, str] | None = None) -> JobContext | None:
    """The job this process is part of, from the launcher's variables, or None when it is not
    part of one with more than one rank (or ``$WATTSUP_DISTRIBUTED=0``).

    Checked in this order (a torchrun inside a SLURM task is a torchrun job): torchrun
    (``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``GROUP_RANK``, ``TORCHELASTIC_RUN_ID``), Open MPI
    (``OMPI_COMM_WORLD_*``), MPICH/Intel MPI (``PMI_RANK``, ``PMI_SIZE``, ``MPI_LOCALRANKID``), a
    SLURM job step (``SLURM_STEP_ID``, ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NODEID``,
    ``SLURM_STEP_NUM_TASKS``). A batch script itself (no step id) is not distributed.
    """
    env = os.environ if environ is None else environ
    if env.get(OFF_ENV, "").strip().lower() in ("0", "false", "no", "off"):
        return None
    host = _host(env)
    slurm_job = env.get("SLURM_JOB_ID") or env.get("SLURM_JOBID")
    slurm_key = f"slurm:{env.get('SLURM_CLUSTER_NAME', '')}:{slurm_job}" if slurm_job else None

    if env.get("RANK") is not None and env.get("LOCAL_RANK") is not None and env.get("WORLD_SIZE"):
        world = _int(env, "WORLD_SIZE") or 1
        local_size = _int(env, "LOCAL_WORLD_SIZE") or world
        rank, local = _int(env, "RANK") or 0, _int(env, "LOCAL_RANK") or 0
        node = _int(env, "GROUP_RANK")
        nodes = _int(env, "GROUP_WORLD_SIZE")
        run_id = env.get("TORCHELASTIC_RUN_ID")
        where = f"{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}"
        key = f"torchrun:{run_id}@{where}" if run_id and run_id != "none" else None
        if key is None and env.get("MASTER_PORT"):
            key = f"torch:{where}"
        restart = env.get("TORCHELASTIC_RESTART_COUNT")
        if key and restart not in (None, "", "0"):
            key += f"#{restart}"  # an elastic restart is a new group of workers: a new run
        if slurm_key and key:
            key = f"{slurm_key}/{key}"
        launcher = "torchrun"
    elif env.get("OMPI_COMM_WORLD_SIZE"):
        world = _int(env, "OMPI_COMM_WORLD_SIZE") or 1
        rank = _int(env, "OMPI_COMM_WORLD_RANK") or 0
        local = _int(env, "OMPI_COMM_WORLD_LOCAL_RANK") or 0
        local_size = _int(env, "OMPI_COMM_WORLD_LOCAL_SIZE") or world
        node = nodes = None
        ns = env.get("PMIX_NAMESPACE") or env.get("OMPI_MCA_ess_base_jobid")
        key = f"mpi:{ns}" if ns else slurm_key
        launcher = "mpi"
    elif env.get("PMI_SIZE") and env.get("PMI_RANK") is not None:
        world = _int(env, "PMI_SIZE") or 1
        rank = _int(env, "PMI_RANK") or 0
        local = _int(env, "MPI_LOCALRANKID", "PMI_LOCAL_RANK") or 0
        local_size = _int(env, "MPI_LOCALNRANKS", "PMI_LOCAL_SIZE") or world
        node = nodes = None
        kvs = env.get("PMI_KVSNAME") or env.get("PMIX_NAMESPACE")
        key = f"mpi:{kvs}" if kvs else slurm_key
        launcher = "mpi"
    elif slurm_job and env.get("SLURM_STEP_ID", env.get("SLURM_STEPID")) is not None:
        world = _int(env, "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS") or 1
        rank = _int(env, "SLURM_PROCID") or 0
        local = _int(env, "SLURM_LOCALID") or 0
        node = _int(env, "SLURM_NODEID")
        nodes = _int(env, "SLURM_STEP_NUM_NODES", "SLURM_NNODES")
        local_size = _int(env, "SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE") or world
        step = env.get("SLURM_STEP_ID", env.get("SLURM_STEPID"))
        key = f"{slurm_key}.{step}"
        launcher = "slurm"
    else:
        return None
    if world <= 1:
        return None
    if slurm_key and env.get("SLURM_RESTART_COUNT") not in (None, "", "0") and key:
        key += f"#{env['SLURM_RESTART_COUNT']}"  # a requeued job runs again: a new run
    key = env.get(JOB_ENV) or key
    if not key:
        raise DistributedSetupError(
            f"{launcher} rank {rank} of {world}, but nothing in the environment identifies the job: "
            f"set ${JOB_ENV} to a value all ranks share (e.g. the scheduler's job id)"
        )
    local_size = max(1, local_size)
    if node is None:
        node = rank // local_size
    if nodes is None:
        nodes = max(1, -(-world // local_size))
    return JobContext(launcher, key, rank, world, local, local_size, node, nodes, host)


# -- reports and the total rule ------------------------------------------------------------------


@dataclass(frozen=True)
class AgentReport:
    """What one agent measured, as it sends it to the leader (energies in joules)."""

    agent: int
    host: str
    rank: int
    local_rank: int
    status: str
    exit_code: int | None
    duration_s: float
    energy: Energy
    machine_energy: Energy
    cpu_s: float
    sources: dict[str, str] = field(default_factory=dict)
    warnings: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        d = {k: getattr(self, k) for k in ("agent", "host", "rank", "local_rank", "status", "exit_code")}
        d.update(duration_s=self.duration_s, cpu_s=self.cpu_s, sources=self.sources, warnings=self.warnings)
        d["energy_j"] = list(_parts(self.energy))
        d["machine_energy_j"] = list(_parts(self.machine_energy))
        return json.dumps(d, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> AgentReport:
        d = json.loads(text)
        return cls(
            agent=int(d["agent"]),
            host=str(d["host"]),
            rank=int(d["rank"]),
            local_rank=int(d["local_rank"]),
            status=str(d["status"]),
            exit_code=d.get("exit_code"),
            duration_s=float(d["duration_s"]),
            energy=Energy(*map(float, d["energy_j"])),
            machine_energy=Energy(*map(float, d["machine_energy_j"])),
            cpu_s=float(d["cpu_s"]),
            sources=dict(d.get("sources") or {}),
            warnings=dict(d.get("warnings") or {}),
        )


@dataclass(frozen=True)
class HostTotals:
    host: str
    energy: Energy  # attributed, after the cap
    machine_energy: Energy
    cpu_s: float
    agents: tuple[int, ...]
    capped: tuple[str, ...] = ()  # components whose attributed sum exceeded the machine's


@dataclass(frozen=True)
class JobTotals:
    duration_s: float
    energy: Energy
    machine_energy: Energy
    cpu_s: float
    status: str
    hosts: dict[str, HostTotals]
    reports: dict[int, AgentReport]
    missing: tuple[int, ...]  # agents that did not report
    sources: dict[str, str]


def _parts(e: Energy) -> tuple[float, float, float]:
    return e.cpu_j, e.gpu_j, e.ram_j


def _cap(attributed: Energy, machine: Energy) -> tuple[Energy, tuple[str, ...]]:
    parts, capped = [], []
    for name, a, m in zip(("cpu", "gpu", "ram"), _parts(attributed), _parts(machine), strict=True):
        if a > m:
            capped.append(name)
        parts.append(min(a, m))
    return Energy(*parts), tuple(capped)


def combined_source(values: Iterable[str]) -> str:
    """One source tag for several agents: the common value, else the distinct values joined by
    ``,`` (e.g. ``estimate,rapl`` when one host had RAPL and another not)."""
    distinct = sorted({v for v in values if v})
    return distinct[0] if len(distinct) == 1 else ",".join(distinct)


def combine(reports: Iterable[AgentReport], agents: int) -> JobTotals:
    """The job's totals from the agents' reports (see the module docstring for the rule);
    ``agents``: how many were expected (those missing make the status FAILED)."""
    by_agent = {r.agent: r for r in reports}
    by_host: dict[str, list[AgentReport]] = {}
    for r in sorted(by_agent.values(), key=lambda r: (r.local_rank, r.agent)):
        by_host.setdefault(r.host, []).append(r)
    hosts: dict[str, HostTotals] = {}
    for host, rs in sorted(by_host.items()):
        machine = rs[0].machine_energy  # the lowest local rank: the host's counter reader
        attributed = Energy()
        for r in rs:
            attributed = attributed + r.energy
        attributed, capped = _cap(attributed, machine)
        cpu_s = sum(r.cpu_s for r in rs)
        hosts[host] = HostTotals(host, attributed, machine, cpu_s, tuple(sorted(r.agent for r in rs)), capped)
    energy, machine = Energy(), Energy()
    for h in hosts.values():
        energy, machine = energy + h.energy, machine + h.machine_energy
    missing = tuple(a for a in range(agents) if a not in by_agent)
    statuses = {r.status for r in by_agent.values()}
    if missing or "FAILED" in statuses:
        status = "FAILED"
    elif "KILLED" in statuses:
        status = "KILLED"
    else:
        status = "FINISHED"
    sources = {
        k: combined_source(r.sources.get(k, "") for r in by_agent.values())
        for k in ("cpu", "gpu", "ram", "attribution_gpu")
    }
    return JobTotals(
        duration_s=max((r.duration_s for r in by_agent.values()), default=0.0),
        energy=energy,
        machine_energy=machine,
        cpu_s=sum(h.cpu_s for h in hosts.values()),
        status=status,
        hosts=hosts,
        reports=by_agent,
        missing=missing,
        sources=sources,
    )


def local_ranks_tree(ctx: JobContext):
    """What a host agent measures in ``host`` mode: every child of this process's parent (the
    launcher's per-host process: torchrun's agent, slurmstepd, mpirun's daemon) and their
    descendants, i.e. all local ranks. Returns ``(meter, note)``: ``note`` is a one-line
    warning when the parent has fewer children than the host has ranks (the ranks were
    started by different parents, e.g. ``srun bash -c ...``: only ours is then measured)."""
    from mlflow_wattsup.meters.proctree import ProcessTreeMeter

    ppid = os.getppid()
    meter = ProcessTreeMeter(children_of=ppid)
    n = len(meter.read().pids) if ctx.local_size > 1 else 1
    note = None
    if n < ctx.local_size:
        note = (
            f"{ctx.local_size} ranks on host {ctx.host} but process {ppid} (our parent) has only {n} "
            "processes under it: ranks started by other parents are not measured"
        )
    return meter, note
