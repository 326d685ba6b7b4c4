"""An MLflow Project that has never heard of wattsup: its entry point is a plain ``python
train.py`` logging a metric and a scikit-learn model with MLflow's fluent API, the shape of
MLflow's own examples. Shared by the ``wattsup`` backend tests and the SLURM ones."""

from __future__ import annotations

import json
from pathlib import Path

TRAIN = """\
import argparse, json, os, sys, time

import mlflow
import mlflow.sklearn
from sklearn.linear_model import LinearRegression

p = argparse.ArgumentParser()
p.add_argument("--alpha", type=float)
p.add_argument("--epochs", type=int)
p.add_argument("--name")
p.add_argument("--data")
p.add_argument("--burn-s", type=float)
p.add_argument("--exit-code", type=int)
a = p.parse_args()
print(f"train.py: alpha={a.alpha} epochs={a.epochs}", flush=True)
seen = {k: os.environ.get(k) for k in ("MLFLOW_RUN_ID", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID", "WATTSUP_RUN_ID")}
seen.update(argv=sys.argv[1:], cwd=os.getcwd(), data_exists=os.path.exists(a.data), data_text=open(a.data).read())
with open(os.environ["PLAIN_SEEN"], "w") as f:
    json.dump(seen, f)
with mlflow.start_run():
    mlflow.log_metric("rmse", a.alpha * a.epochs)
    model = LinearRegression().fit([[0.0], [1.0], [2.0]], [0.0, 1.0, 2.0])
    mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"])  # no inference: seconds
end = time.process_time() + a.burn_s
while time.process_time() < end:
    sum(range(10000))
print("train.py: done", flush=True)
sys.exit(a.exit_code)
"""

MLPROJECT = """\
name: plain
entry_points:
  main:
    parameters:
      alpha: {type: float, default: 0.5}
      epochs: {type: int, default: 3}
      name: {type: string, default: plain}
      data: {type: path, default: data.csv}
      burn_s: {type: float, default: 0}
      exit_code: {type: int, default: 0}
    command: "python train.py --alpha {alpha} --epochs {epochs} --name {name} --data {data} --burn-s {burn_s} --exit-code {exit_code}"
"""


def plain_project(root: Path) -> Path:
    """Write the project into ``root``; the entry point writes what it saw (its environment,
    arguments, working directory, the ``data`` file) as JSON to ``$PLAIN_SEEN``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "MLproject").write_text(MLPROJECT)
    (root / "train.py").write_text(TRAIN)
    return root


def seen(path: Path) -> dict:
    return json.loads(path.read_text())
