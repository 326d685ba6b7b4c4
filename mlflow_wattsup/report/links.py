"""Links into the MLflow UI that open its model-training view.

MLflow 3.17's UI has two views, GenAI and Model training; which one an experiment or run page
opens in is a per-browser setting (local storage, GenAI by default) unless the address says
``workflowType=machine_learning``. Every link we print or write carries it.

For a tracking server the links point at it; for a local store (``sqlite:///mlflow.db``) at
``http://127.0.0.1:5000``, where ``mlflow ui --backend-store-uri <store>`` serves it, and
:func:`open_lines` prints that command first.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Sequence

TRAINING_VIEW = "workflowType=machine_learning"
#: our saved view of an experiment's runs table (MLflow stores saved views as experiment tags)
VIEW_ID = "wattsup"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_ID}"
VIEW_NAME = "wattsup: energy, carbon, Dice"
#: its columns (MLflow's keys: ``attributes.`Label```, ``metrics.`key```, ``tags.`key```)
VIEW_COLUMNS = (
    "attributes.`Dataset`",
    "attributes.`Duration`",
    "metrics.`energy_kwh`",
    "metrics.`carbon_g`",
    "metrics.`dice_mean`",
    "metrics.`power_mean_w`",
    "metrics.`params`",
    "tags.`wattsup.pipeline`",
    "tags.`wattsup.device`",
    "tags.`wattsup.source.cpu`",
)
#: where ``mlflow ui`` / ``mlflow server`` serve by default (for stores that are not a server)
DEFAULT_UI = "http://127.0.0.1:5000"


def ui_base(tracking_uri: str | None) -> str:
    """The UI's address: the tracking server itself, or where ``mlflow ui`` serves a local store."""
    uri = str(tracking_uri or "")
    if uri.startswith(("http://", "https://")):
        return uri.rstrip("/")
    return DEFAULT_UI


def ui_command(tracking_uri: str | None) -> str | None:
    """How to serve a store that is not a server (``mlflow ui --backend-store-uri ...``), else None."""
    uri = str(tracking_uri or "")
    if not uri or uri.startswith(("http://", "https://", "databricks")):
        return None
    return f"mlflow ui --backend-store-uri {uri}"


def run_fragment(experiment_id: str, run_id: str) -> str:
    """``#/experiments/<id>/runs/<run>?workflowType=machine_learning``: relative, so a link in a
    run's description opens in the UI that shows it."""
    return f"#/experiments/{experiment_id}/runs/{run_id}?{TRAINING_VIEW}"


def experiment_fragment(experiment_id: str, view: bool = False) -> str:
    """The runs table; ``view``: opened in our saved view (see :func:`ensure_runs_view`)."""
    return f"#/experiments/{experiment_id}/runs?{TRAINING_VIEW}" + (
        f"&viewStateShareKey={VIEW_ID}" if view else ""
    )


def compare_fragment(experiment_id: str, run_ids: Sequence[str]) -> str:
    """MLflow's compare view (``#/compare-runs?runs=[...]&experiments=[...]``), URL-encoded."""
    q = urllib.parse.urlencode(
        {
            "runs": json.dumps([str(r) for r in run_ids], separators=(",", ":")),
            "experiments": json.dumps([str(experiment_id)], separators=(",", ":")),
            "workflowType": "machine_learning",
        }
    )
    return f"#/compare-runs?{q}"


def run_url(tracking_uri: str | None, experiment_id: str, run_id: str) -> str:
    """The run's page in the model-training view."""
    return f"{ui_base(tracking_uri)}/{run_fragment(experiment_id, run_id)}"


def experiment_url(tracking_uri: str | None, experiment_id: str, view: bool = False) -> str:
    """The experiment's runs table in the model-training view (``view``: in our saved view)."""
    return f"{ui_base(tracking_uri)}/{experiment_fragment(experiment_id, view)}"


def compare_url(tracking_uri: str | None, experiment_id: str, run_ids: Sequence[str]) -> str:
    """MLflow's compare view of ``run_ids`` (all in ``experiment_id``)."""
    return f"{ui_base(tracking_uri)}/{compare_fragment(experiment_id, run_ids)}"


def open_lines(
    tracking_uri: str | None, experiment_id: str, run_id: str | None = None, view: bool = False
) -> list[str]:
    """Lines for a printed summary: the run's (or the experiment's, ``view``: in our saved view)
    link, and for a local store the command that serves it."""
    if run_id:
        url = run_url(tracking_uri, experiment_id, run_id)
    else:
        url = experiment_url(tracking_uri, experiment_id, view)
    cmd = ui_command(tracking_uri)
    return [f"view: {url}", f"  (serve it first: {cmd})"] if cmd else [f"view: {url}"]


def runs_view_state() -> dict:
    """The runs-table state of our saved view: our columns, runs sorted by energy (a sort also
    lists child runs at top level, next to each other, instead of folded under their parent)."""
    return {"selectedColumns": list(VIEW_COLUMNS), "orderByKey": "metrics.`energy_kwh`", "orderByAsc": True}


def ensure_runs_view(client, experiment_id: str) -> bool:
    """``client``: an ``MlflowClient`` or a :class:`~mlflow_wattsup.sink.transport.Store`. Save our runs-table view in the experiment unless it is there (a user may have changed it:
    it is never overwritten); True if written. The UI lists it under "Views"; links made with
    ``view=True`` open it. The tag's format is the MLflow 3.17 UI's own ("Save view": a JSON
    envelope with the name, the creation time in ms, and the state as JSON text)."""
    # our Store knows the tags it read when it found the experiment: a view seen there is there
    # (no request); one not seen then is looked for now, never written over a user's
    if hasattr(client, "experiment_tags") and VIEW_TAG in client.experiment_tags(experiment_id):
        return False
    if VIEW_TAG in client.get_experiment(experiment_id).tags:
        return False
    envelope = {
        "name": VIEW_NAME,
        "createdAt": int(time.time() * 1000),
        "state": json.dumps(runs_view_state()),
    }
    client.set_experiment_tag(experiment_id, VIEW_TAG, json.dumps(envelope))
    return True
