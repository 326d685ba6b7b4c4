"""The embedded demo (root ``MLproject``, entry ``main``): the classical pipeline and a deep
network (train, then infer with the trained model) on the same real MRI, each its own run in one
experiment, then the comparison table. Offline; a few minutes on 2 CPU cores.

Each step is run as an MLflow Project run of ``projects/segmentation`` (``--env-manager local``),
nested under the demo's own run, so it carries the same tags as a hand-run ``mlflow run``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mlflow_wattsup.mlflow_layer.projects.params import (
    ParamError,
    choice_param,
    entry_point,
    float_param,
    int_param,
    is_none,
)


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

    from mlflow_wattsup.mlflow_layer.report import build, fetch_runs

    # the steps' entry points run `python`: make it this interpreter's
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    parent = os.environ.get("MLFLOW_RUN_ID")
    client = MlflowClient()
    if parent:
        exp_id = client.get_run(parent).info.experiment_id
    else:
        from mlflow_wattsup.mlflow_layer.sink.transport import Store

        exp_id = Store(client).experiment_id(os.environ.get("MLFLOW_EXPERIMENT_NAME") or "wattsup-demo")
    common = {"region": region, "pue": pue, "carbon_intensity": ""}

    def step(entry: str, **params) -> str:
        print(f"\n=== demo: {entry} ===", flush=True)
        sub = mlflow.projects.run(
            str(seg),
            entry_point=entry,
            parameters={**common, **params},
            experiment_id=exp_id,
            env_manager="local",
            synchronous=True,
        )
        if parent:
            client.set_tag(sub.run_id, "mlflow.parentRunId", parent)
        return sub.run_id

    step("classical", resolution=res)
    train_id = step("train", epochs=epochs, resolution=res, device=device)
    step("infer", model_uri=f"runs:/{train_id}/model", resolution=res, device=device)

    runs = [r for r in fetch_runs(experiment_ids=[exp_id]) if r.run_id != parent]
    table = build(runs, runtime_unit="s")
    print("\n" + table.to_markdown())
    if parent:
        client.set_tag(parent, "wattsup.pipeline", "demo")
        client.log_text(parent, table.to_markdown(), "wattsup/report.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
