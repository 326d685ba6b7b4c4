"""What the study machinery itself costs per child run, locally and on SLURM, and how long a
1,000-task job array takes to submit.

    python benchmarks/study.py [--children 200] [--array 1000] [--skip-slurm]

The pipeline is trivial (an entry point whose command is ``true``), so what is measured is ours:
creating each child run (tags, params, SCHEDULED), starting it (process or array task), setting
its status, the bookkeeping and the parent's report. Printed per child: the study process's wall
time and its own CPU time (``getrusage``; children's CPU excluded). On SLURM the wall time also
holds the scheduler's launch of each task (2 at a time on a 2-core node), so the study process's
CPU is the figure that scales; the array's jobs talk to an ``mlflow server`` over HTTP (two REST
calls each, no MLflow import). The SLURM part needs root and Debian's slurm packages (it starts a
private one-node cluster, as the tests do).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def self_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def make_inputs(d: Path, n: int) -> tuple[Path, Path]:
    project = d / "noop"
    project.mkdir()
    (project / "MLproject").write_text(
        'name: noop\nentry_points:\n  main:\n    parameters:\n      sid: {type: string}\n    command: "true"\n'
    )
    lines = ["subject\tt1"]
    (d / "t1.nii.gz").write_bytes(b"x")
    lines += [f"s{i:04d}\tt1.nii.gz" for i in range(n)]
    tsv = d / "participants.tsv"
    tsv.write_text("\n".join(lines) + "\n")
    return project, tsv


def run_study(uri: str, project: Path, tsv: Path, backend: str, workdir: Path, slurm_config=None) -> dict:
    from mlflow.tracking import MlflowClient

    from mlflow_wattsup.study import plan as planning
    from mlflow_wattsup.study import subjects as subj
    from mlflow_wattsup.study.runner import Study

    client = MlflowClient(uri)
    exp = client.create_experiment(f"bench-{backend}-{time.time_ns()}")
    cpu0, t0 = self_cpu_s(), time.perf_counter()
    subjects = subj.from_tsv(tsv)
    pipes = [planning.Pipeline.parse(f"noop={project}")]
    children = planning.plan(subjects, pipes, ["cpu"], workdir)
    study = Study(
        client,
        exp,
        subjects,
        tsv,
        pipes,
        children,
        ["cpu"],
        backend=backend,
        max_jobs=2,
        slurm_config=slurm_config,
        workdir=workdir,
        log=lambda m: None,
    )
    result = study.run()
    wall, cpu = time.perf_counter() - t0, self_cpu_s() - cpu0
    assert result.counts["study/finished"] == len(children), result.counts
    return {"children": len(children), "wall_s": wall, "cpu_s": cpu, **study.timings}


def show(label: str, r: dict) -> None:
    n = r["children"]
    print(
        f"{label}: {n} children in {r['wall_s']:.1f} s wall, study process {r['cpu_s']:.1f} CPU-s: "
        f"{r['wall_s'] / n:.3f} s wall and {r['cpu_s'] / n:.3f} CPU-s per child"
    )
    print(
        f"  phases: creating runs {r['create_s']:.1f} s ({r['create_s'] / n:.3f} s/child), sbatch "
        f"{r['submit_s']:.2f} s, executing {r['execute_s']:.1f} s, parent's report {r['finish_s']:.1f} s"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--children", type=int, default=200)
    ap.add_argument("--array", type=int, default=1000, help="tasks in the submission-only array")
    ap.add_argument("--skip-slurm", action="store_true")
    args = ap.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="wattsup-bench-study-") as tmp:
        d = Path(tmp)
        project, tsv = make_inputs(d, args.children)
        show("local, sqlite", run_study(f"sqlite:///{d}/local.db", project, tsv, "local", d / "w-local"))
        if args.skip_slurm:
            return 0
        from server import MlflowServer
        from slurm_cluster import SlurmCluster, unavailable

        why = unavailable()
        if why:
            print(f"slurm: skipped: {why}")
            return 0
        cluster = SlurmCluster(d / "cluster")
        server = MlflowServer(d / "server")
        try:
            print(f"slurm: cluster up in {cluster.start():.1f} s; mlflow server in {server.start():.1f} s")
            os.environ.update(cluster.env)
            cfg = {"workdir": str(d / "slurm-w"), "poll_s": 1.0}
            show(
                "slurm, mlflow server",
                run_study(server.uri, project, tsv, "slurm", d / "w-slurm", slurm_config=cfg),
            )
            from mlflow_wattsup.backends import slurm
            from mlflow_wattsup.backends.common import Task

            # the scheduler alone: a bare array of the same number of `true` tasks, start to end
            bare = d / "bare.sbatch"
            bare.write_text(
                f"#!/bin/bash\n#SBATCH --array=0-{args.children - 1}\n#SBATCH --output=/dev/null\ntrue\n"
            )
            t0 = time.perf_counter()
            job_id = slurm._run(["sbatch", "--parsable", str(bare)]).strip()
            while True:
                states = slurm.job_states(job_id)
                if len(states) == args.children and all(s[0] in slurm.END_STATES for s in states.values()):
                    break
                time.sleep(1.0)
            print(
                f"slurm, bare array of {args.children} `true` tasks (no MLflow): {time.perf_counter() - t0:.1f} s wall"
            )

            tasks = [Task(f"r{i}", "true", str(d), server.uri, "0", {"X": "y"}) for i in range(args.array)]
            cfg_obj = slurm.SlurmConfig.from_dict({"workdir": str(d / "array-w"), "sbatch": ["--hold"]})
            t0 = time.perf_counter()
            job = slurm.submit(tasks, cfg_obj)
            submit_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            states = slurm.job_states(job.job_id)
            poll_s = time.perf_counter() - t0
            job.cancel()
            print(
                f"slurm: submitting a {args.array}-task array (manifest + sbatch, held) took {submit_s:.2f} s; "
                f"one poll of its {len(states)} task states {poll_s:.2f} s"
            )
        finally:
            server.stop()
            cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
