"""A study's report from a PostgreSQL-backed ``mlflow server``: 1,000 children of a trivial
pipeline, reported in under 10 s (issue 20).

    python benchmarks/report_pg.py [--children 1000] [--reps 3]

Starts a private PostgreSQL and an ``mlflow server`` on it (as the tests do: root needs the
``postgres`` user; Debian's ``postgresql``). A template child is one real measured run
(``wattsup run -- true`` on a scratch sqlite store: its metrics, params, tags and description);
the study's parent and its 1,000 children are then written straight to the database with
``MlflowClient.log_batch`` (each child: the template's values, slightly varied, plus the tags a
study gives a child: ``wattsup.study``/``role``/``subject``/``pipeline``/``device``/``params_hash``/
``attempt``, ``mlflow.parentRunId``), which takes about a minute instead of running 1,000 jobs.

Then, over HTTP as a study and its users reach the server, median of ``--reps``:

* ``study report``: what a study does at its end (``Study._artifacts``: children.csv, the
  filtered fetch of its children, the table in markdown and CSV, two plots, the upload) -- the
  figure the target is for;
* ``wattsup report EXP`` end to end (a new process, its imports included);
* ``fetch_runs`` alone (MLflow's ``search_runs`` pages over HTTP), and the same fetch from the
  database URI (the column-restricted SQL read), and ``RestClient.search_runs`` (no MLflow), as
  the floors the report stands on.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

TARGET_S = 10.0


def template_run(tmp: Path) -> tuple[dict, dict, dict]:
    """(metrics, params, tags) of one real ``wattsup run -- true``."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp}/template.db"
    env = dict(os.environ, MLFLOW_TRACKING_URI=uri, WATTSUP_SPOOL_DIR=str(tmp / "spool"))
    subprocess.run(
        [sys.executable, "-m", "mlflow_wattsup", "run", "--quiet", "--experiment", "t", "--", "true"],
        env=env,
        check=True,
        capture_output=True,
    )
    c = MlflowClient(uri)
    [run] = c.search_runs([c.get_experiment_by_name("t").experiment_id])
    return dict(run.data.metrics), dict(run.data.params), dict(run.data.tags)


def make_study(tmp: Path, n: int):
    """A planned study of ``n`` subjects x one trivial pipeline (not run)."""
    from mlflow_wattsup.study import plan as planning
    from mlflow_wattsup.study import subjects as subj

    project = tmp / "noop"
    project.mkdir()
    (project / "MLproject").write_text(
        'name: noop\nentry_points:\n  main:\n    parameters:\n      sid: {type: string}\n    command: "true"\n'
    )
    (tmp / "t1.nii.gz").write_bytes(b"x")
    tsv = tmp / "participants.tsv"
    tsv.write_text("subject\tt1\n" + "".join(f"s{i:04d}\tt1.nii.gz\n" for i in range(n)))
    subjects = subj.from_tsv(tsv)
    pipes = [planning.Pipeline.parse(f"noop={project}")]
    return subjects, tsv, pipes, planning.plan(subjects, pipes, ["cpu"], tmp / "work")


def populate(db_uri: str, server_uri: str, tmp: Path, n: int):
    """The parent and ``n`` FINISHED children in the database; returns (study, parent id, latest)."""
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    from mlflow_wattsup.sink import keys
    from mlflow_wattsup.study.runner import Study

    metrics, params, tags = template_run(tmp)
    subjects, tsv, pipes, children = make_study(tmp, n)
    db = MlflowClient(db_uri)
    exp_id = db.create_experiment("study-bench")
    study = Study(
        MlflowClient(server_uri),
        exp_id,
        subjects,
        tsv,
        pipes,
        children,
        ["cpu"],
        workdir=tmp / "work",
        log=lambda m: None,
    )
    parent = db.create_run(
        exp_id, tags={keys.STUDY: study.study_id, keys.STUDY_ROLE: "parent", "mlflow.runName": study.study_id}
    ).info.run_id
    rng = random.Random(20)
    latest = {}
    own = {k: v for k, v in tags.items() if not k.startswith("mlflow.") or k == "mlflow.note.content"}
    t0 = time.perf_counter()
    for i, c in enumerate(children):
        child_tags = {
            **own,
            "mlflow.parentRunId": parent,
            "mlflow.runName": c.run_name,
            "mlflow.source.type": "PROJECT",
            "mlflow.source.name": str(c.pipeline.project_dir),
            "mlflow.user": "bench",
            keys.STUDY: study.study_id,
            keys.STUDY_ROLE: "child",
            keys.SUBJECT: c.subject.id,
            keys.PIPELINE: c.pipeline.name,
            keys.DEVICE: c.device,
            keys.STUDY_PARAMS_HASH: c.params_hash,
            keys.STUDY_ATTEMPT: "1",
        }
        run_id = db.create_run(exp_id, tags={"mlflow.user": "bench"}, run_name=c.run_name).info.run_id
        ms = int(time.time() * 1000)
        f = rng.uniform(0.8, 1.25)
        db.log_batch(
            run_id,
            metrics=[Metric(k, v * f, ms, 0) for k, v in metrics.items()],
            params=[Param(k, v) for k, v in {**params, "sid": c.subject.id}.items()],
            tags=[RunTag(k, v) for k, v in child_tags.items()],
        )
        db.set_terminated(run_id, "FINISHED")
        latest[c.key] = (run_id, "FINISHED")
        if (i + 1) % 250 == 0:
            print(f"  {i + 1}/{n} children written ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(
        f"  each child: {len(metrics)} metrics, {len(params) + 1} params, {len(child_tags) + 1} tags "
        f"(description {len(tags.get('mlflow.note.content', ''))} characters)"
    )
    return study, parent, latest


def timed(fn, reps: int) -> tuple[float, list[float]]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--children", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    from support.postgres import mlflow_on_postgres, unavailable

    why = unavailable()
    if why:
        print(f"cannot start PostgreSQL here: {why}")
        return 2
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="wattsup-bench-report-pg-") as d:
        tmp = Path(d)
        with mlflow_on_postgres(tmp / "server", workers=4, timeout_s=300) as (pg, srv):
            db_uri = srv.backend_store_uri
            print(f"PostgreSQL on port {pg.port}, mlflow server at {srv.uri}; writing the study:")
            study, parent, latest = populate(db_uri, srv.uri, tmp, args.children)
            from mlflow_wattsup.report import build, fetch_runs, to_markdown
            from mlflow_wattsup.sink.keys import STUDY, STUDY_ROLE
            from mlflow_wattsup.sink.rest import RestClient

            flt = f"tags.`{STUDY}` = '{study.study_id}' and tags.`{STUDY_ROLE}` = 'child'"
            exp = study.experiment_id
            n = args.children

            def study_report():
                study._artifacts(parent, latest)
                assert study._report_md, "no table"

            def fetch_http():
                rows = fetch_runs(experiment_ids=[exp], filter_string=flt, tracking_uri=srv.uri)
                assert len(rows) == n, len(rows)

            def fetch_sql():
                rows = fetch_runs(experiment_ids=[exp], tracking_uri=db_uri)
                table = build(rows)
                to_markdown(table, "wide")
                assert len(rows) == n + 1, len(rows)

            def rest_pages():
                got = sum(1 for _ in RestClient(srv.uri).search_runs([exp], flt))
                assert got == n, got

            def cli_report():
                env = dict(os.environ, MLFLOW_TRACKING_URI=srv.uri)
                r = subprocess.run(
                    [sys.executable, "-m", "mlflow_wattsup", "report", "study-bench"],
                    env=env,
                    capture_output=True,
                    text=True,
                )
                assert r.returncode == 0, r.stderr[-2000:]

            rows = {}
            for label, fn in (
                ("study report (Study._artifacts, HTTP)", study_report),
                ("wattsup report EXP (new process, HTTP)", cli_report),
                ("fetch_runs with the study's filter (HTTP)", fetch_http),
                ("fetch_runs + table, database URI (SQL read)", fetch_sql),
                ("RestClient.search_runs pages (HTTP, no MLflow)", rest_pages),
            ):
                rows[label] = timed(fn, args.reps)
                print(f"  {label}: {' '.join(f'{x:.2f}' for x in rows[label][1])} s", flush=True)
            print(study._report_md.splitlines()[0] if study._report_md else "")
    print(f"\n{n} children, PostgreSQL-backed mlflow server, median of {args.reps}:")
    for label, (med, _) in rows.items():
        print(f"  {label:<50} {med:7.2f} s")
    ours = rows["study report (Study._artifacts, HTTP)"][0]
    floor = rows["RestClient.search_runs pages (HTTP, no MLflow)"][0]
    print(f"  study report / the bare REST pages: {ours / floor:.1f}x")
    ok = ours < TARGET_S and rows["wattsup report EXP (new process, HTTP)"][0] < TARGET_S
    print(f"target: the study report and wattsup report < {TARGET_S:.0f} s: {'PASS' if ok else 'MISS'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
