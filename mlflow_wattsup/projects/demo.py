"""The embedded demo (root ``MLproject``, entry ``main``): the classical pipeline and a deep
network (train, then infer with the trained model) on the same real MRI, each its own run in one
experiment, then the comparison table. Offline; a few minutes on 2 CPU cores.

Each step is run as an MLflow Project run of ``projects/segmentation`` (``--env-manager local``),
nested under the demo's own run, so it carries the same tags as a hand-run ``mlflow run``.

The runs go to the experiment ``mlflow run`` was given (``--experiment-name`` /
``MLFLOW_EXPERIMENT_NAME``), else to ``wattsup-demo``: when ``mlflow run .`` put its run in the
Default experiment, that run only launches, and the demo's parent run is made in ``wattsup-demo``.
The parent gets the children's comparison table as its description and as the artifacts
``wattsup/report.md`` and ``wattsup/report.html``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlflow_wattsup.projects.params import (
    ParamError,
    choice_param,
    entry_point,
    float_param,
    int_param,
    is_none,
)
from mlflow_wattsup.sink import keys

EXPERIMENT = "wattsup-demo"
DEFAULT_EXPERIMENT_ID = "0"  # MLflow's "Default": where `mlflow run .` goes unless told otherwise


def project_dir() -> Path:
    here = Path.cwd() / "projects" / "segmentation"
    if (here / "MLproject").is_file():
        return here
    repo = Path(__file__).resolve().parents[2] / "projects" / "segmentation"
    if (repo / "MLproject").is_file():
        return repo
    raise ParamError(
        "projects/segmentation/MLproject not found: run the demo from the repository root (mlflow run .)"
    )


def demo_title(res: int) -> str:
    return f"demo: classical vs FastSurferCNN, MNI152 {res} mm"


def parent_run(client, launcher: str | None, title: str, params: dict[str, str]) -> tuple[str, str, bool]:
    """(experiment id, parent run id, created by us). ``launcher`` is the run ``mlflow run`` made;
    it is the parent unless it sits in the Default experiment."""
    if launcher:
        exp_id = client.get_run(launcher).info.experiment_id
        if exp_id != DEFAULT_EXPERIMENT_ID:
            client.update_run(launcher, name=title)
            return exp_id, launcher, False
    from mlflow_wattsup.run.lifecycle import new_run_tags
    from mlflow_wattsup.sink.transport import Store

    store = Store(client)
    name = None if launcher else os.environ.get("MLFLOW_EXPERIMENT_NAME")
    exp_id = store.experiment_id(name or EXPERIMENT)
    parent = store.create_run(
        {"experiment_id": exp_id, "run_name": title, "tags": new_run_tags({keys.PIPELINE: "demo"})}
    )
    from mlflow.entities import Param

    client.log_batch(parent, params=[Param(k, v) for k, v in params.items()])
    if launcher:
        from mlflow_wattsup.report.links import experiment_fragment, run_fragment
        from mlflow_wattsup.report.notes import write_note

        client.update_run(launcher, name=f"demo launcher (runs in {EXPERIMENT})")
        write_note(
            client,
            launcher,
            f"This run only launched the demo. Its runs are in the experiment **{EXPERIMENT}**: "
            f"[the runs]({experiment_fragment(exp_id)}), [the demo's parent run]({run_fragment(exp_id, parent)}).\n\n"
            f"Next time: `mlflow run . --env-manager local --experiment-name {EXPERIMENT}`.\n",
        )
    return exp_id, parent, True


@entry_point("demo")
def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="demo", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", default="30")
    p.add_argument("--resolution", default="2")
    p.add_argument("--device", default="auto")
    p.add_argument("--region", default="")
    p.add_argument("--pue", default="")
    args = p.parse_args(argv)
    epochs = int_param("epochs", args.epochs, 1, 10_000)
    res = int_param("resolution", args.resolution, 1, 2)
    device = choice_param("device", args.device, ("cpu", "gpu", "auto"))
    pue = "" if is_none(args.pue) else str(float_param("pue", args.pue, 1.0))
    region = "" if is_none(args.region) else args.region
    if region:
        from mlflow_wattsup.analysis.carbon import lookup_region

        lookup_region(region)  # a bad region fails now, not in the third step
    seg = project_dir()

    import mlflow
    from mlflow.tracking import MlflowClient

    from mlflow_wattsup.report import build, to_markdown
    from mlflow_wattsup.report.artifacts import log_report
    from mlflow_wattsup.report.fetch import run_row
    from mlflow_wattsup.report.links import compare_url, ensure_runs_view, experiment_url, open_lines
    from mlflow_wattsup.report.notes import describe_or_warn
    from mlflow_wattsup.report.parent_note import children, describe_parent

    if os.environ.get("MLFLOW_RUN_ID"):
        # `mlflow run` started us in the project folder; an experiment we create keeps its
        # artifacts where `mlflow run` keeps them (./mlruns of the folder it was started in)
        from mlflow_wattsup.projects.params import launch_dir

        os.chdir(launch_dir())
    # the steps' entry points run `python`: make it this interpreter's
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    client = MlflowClient()
    title = demo_title(res)
    exp_id, parent, ours = parent_run(
        client,
        os.environ.get("MLFLOW_RUN_ID"),
        title,
        {
            "epochs": str(epochs),
            "resolution": str(res),
            "device": device,
            "region": region or "none",
            "pue": pue or "none",
        },
    )
    client.set_tag(parent, keys.PIPELINE, "demo")
    try:
        ensure_runs_view(client, exp_id)
    except Exception as exc:  # a view is a convenience: never a reason to stop
        print(f"demo: runs-table view not saved ({type(exc).__name__}: {exc})", file=sys.stderr)
    # only non-empty values: MLflow logs a string param shell-quoted, so "" would show as ''
    common = {k: v for k, v in {"region": region, "pue": pue}.items() if v}

    def step(entry: str, name: str, **params) -> str:
        print(f"\n=== demo: {name} ===", flush=True)
        sub = mlflow.projects.run(
            str(seg),
            entry_point=entry,
            parameters={**common, **params},
            experiment_id=exp_id,
            env_manager="local",
            synchronous=True,  # (asynchronous runs go through a second `mlflow run` process)
            run_name=name,
        )
        client.set_tag(sub.run_id, "mlflow.parentRunId", parent)
        return sub.run_id

    status = "FAILED"
    try:
        step("classical", "classical: Gaussian mixture", resolution=res)
        train_id = step(
            "train",
            f"FastSurferCNN train ({epochs} epoch{'s' if epochs > 1 else ''})",
            epochs=epochs,
            resolution=res,
            device=device,
        )
        step(
            "infer", "FastSurferCNN infer", model_uri=f"runs:/{train_id}/model", resolution=res, device=device
        )
        status = "FINISHED"
    finally:
        if ours:
            client.set_terminated(parent, status)
    kids = children(client, parent, exp_id)
    table = build([r for r in map(run_row, kids) if "energy_kwh" in r.metrics], runtime_unit="s")
    print("\n" + to_markdown(table))
    log_report(client, parent, table, title)
    describe_or_warn(describe_parent, client, parent, title, prog="demo")
    uri = mlflow.get_tracking_uri()
    lines = open_lines(uri, exp_id, parent)
    print(lines[0].replace("view:", "the demo:"))
    print(f"its runs: {experiment_url(uri, exp_id, view=True)}")
    print(f"compared: {compare_url(uri, exp_id, [r.info.run_id for r in kids])}")
    for line in lines[1:]:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
