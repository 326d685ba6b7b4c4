"""The tracking-store calls we make, all of them, and how they fail: fast.

Against an MLflow REST server every call goes through MLflow's own HTTP helper (its
authentication, TLS settings and error checks) with **no retries and a short timeout**, so a down
server costs seconds, not MLflow's default seven retries over about four minutes: our sink's
backoff and spool take over. Other stores (sqlite, the file store) go through ``MlflowClient``.
This is the only place that creates experiments and runs, finds an experiment by name, and
pages through ``search_runs``. Nothing here changes the process environment.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from mlflow_wattsup.sink import keys

HTTP_TIMEOUT_S = 15

_UNREACHABLE = (
    "Connection refused",
    "Max retries exceeded",
    "Failed to establish",
    "timed out",
    "Timeout",
    "ConnectionError",
    "Name or service not known",
    "Temporary failure",
    "database is locked",
    "unable to open database",
    "Connection aborted",
    "RemoteDisconnected",
    "Connection broken",  # the server died while answering (IncompleteRead): issue 20's load test
    "IncompleteRead",
)


def unreachable(exc: BaseException) -> bool:
    """Whether an exception means the tracking store could not be reached (vs a real error such
    as an unknown run)."""
    text = f"{type(exc).__name__}: {exc}"
    return any(n in text for n in _UNREACHABLE)


def now_ms() -> int:
    return int(time.time() * 1000)


class Store:
    """One tracking store, called so that failures are quick (see the module docstring)."""

    def __init__(self, client: MlflowClient | None = None, http_timeout_s: float = HTTP_TIMEOUT_S):
        self.client = client or MlflowClient()
        self.uri = self.client.tracking_uri
        self._rest = None
        try:
            from mlflow.store.tracking.rest_store import RestStore
            from mlflow.utils.rest_utils import http_request, verify_rest_response

            store = self.client._tracking_client.store  # the client's store, to reuse its credentials
            if isinstance(store, RestStore):

                def call(method: str, endpoint: str, body: dict) -> dict:
                    kw = {"json": body} if method == "POST" else {"params": body}
                    resp = http_request(
                        store.get_host_creds(),
                        endpoint,
                        method,
                        max_retries=0,
                        timeout=int(http_timeout_s),
                        **kw,
                    )
                    verify_rest_response(resp, endpoint)
                    return resp.json() if resp.text else {}

                self._rest = call
        except Exception:  # an MLflow without these helpers: the client's own calls
            self._rest = None

    @property
    def is_rest(self) -> bool:
        return self._rest is not None

    def reachable(self) -> bool:
        """A quick check (REST: one request, no retries); other stores are assumed reachable."""
        if self._rest is None:
            return True
        try:
            self._rest("GET", "/api/2.0/mlflow/experiments/get-by-name", {"experiment_name": "Default"})
        except Exception as exc:
            return not unreachable(exc)
        return True

    # -- runs and experiments -------------------------------------------------------------------

    def run_exists(self, run_id: str) -> None:
        """Check that ``run_id`` exists: ValueError (one line) if the store says it does not;
        store errors (unreachable included) propagate."""
        try:
            if self._rest is None:
                self.client.get_run(run_id)
            else:
                self._rest("GET", "/api/2.0/mlflow/runs/get", {"run_id": run_id})
        except Exception as exc:
            if unreachable(exc):
                raise
            raise ValueError(f"run {run_id} not found at {self.uri} ({type(exc).__name__})") from None

    def experiment_id(self, name: str) -> str:
        """The id of experiment ``name``, created (marked as a training experiment) if missing;
        safe against other jobs creating it at the same moment."""
        for attempt in range(2):
            exp_id, kind_tagged = self._find_experiment(name)
            if exp_id is not None:
                if not kind_tagged:
                    self._set_experiment_tag(exp_id, keys.EXPERIMENT_KIND_TAG, keys.EXPERIMENT_KIND)
                return exp_id
            try:
                return self._create_experiment(name)
            except Exception as exc:
                # another job created it between our lookup and our create (8 jobs starting at once)
                if attempt or (
                    "already exists" not in str(exc) and "RESOURCE_ALREADY_EXISTS" not in str(exc)
                ):
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def find_experiment(self, name: str) -> str | None:
        """The id of experiment ``name``, None when there is none."""
        return self._find_experiment(name)[0]

    def experiment_ids(self, names: Iterable[str]) -> list[str]:
        """The ids of the experiments ``names``; ValueError (one line) naming the first that does
        not exist."""
        ids = []
        for name in names:
            exp_id = self.find_experiment(name)
            if exp_id is None:
                raise ValueError(f"no experiment named {name!r} at {self.uri}")
            ids.append(exp_id)
        return ids

    def _find_experiment(self, name: str) -> tuple[str | None, bool]:
        if self._rest is None:
            exp = self.client.get_experiment_by_name(name)
            return (None, False) if exp is None else (exp.experiment_id, keys.EXPERIMENT_KIND_TAG in exp.tags)
        try:
            exp = self._rest("GET", "/api/2.0/mlflow/experiments/get-by-name", {"experiment_name": name})[
                "experiment"
            ]
        except Exception as exc:
            if "RESOURCE_DOES_NOT_EXIST" not in str(exc):
                raise
            return None, False
        tags = {t.get("key") for t in exp.get("tags", [])}
        return exp["experiment_id"], keys.EXPERIMENT_KIND_TAG in tags

    def _create_experiment(self, name: str) -> str:
        kind = {keys.EXPERIMENT_KIND_TAG: keys.EXPERIMENT_KIND}
        if self._rest is None:
            return self.client.create_experiment(name, tags=kind)
        body = {"name": name, "tags": [{"key": k, "value": v} for k, v in kind.items()]}
        return self._rest("POST", "/api/2.0/mlflow/experiments/create", body)["experiment_id"]

    def _set_experiment_tag(self, exp_id: str, key: str, value: str) -> None:
        if self._rest is None:
            self.client.set_experiment_tag(exp_id, key, value)
            return
        body = {"experiment_id": exp_id, "key": key, "value": value}
        self._rest("POST", "/api/2.0/mlflow/experiments/set-experiment-tag", body)

    def create_run(self, create: dict) -> str:
        """Create the run described by ``create``: ``experiment_id`` or ``experiment_name``,
        ``run_name``, ``tags``, ``start_time`` (epoch ms); returns its id."""
        exp_id = create.get("experiment_id") or self.experiment_id(create.get("experiment_name") or "Default")
        tags = {k: str(v) for k, v in (create.get("tags") or {}).items()}
        run_name = create.get("run_name")
        if run_name:
            tags["mlflow.runName"] = run_name
        start_ms = create.get("start_time") or now_ms()
        if self._rest is None:
            return self.client.create_run(
                str(exp_id), start_time=start_ms, tags=tags, run_name=run_name
            ).info.run_id
        body = {
            "experiment_id": str(exp_id),
            "start_time": start_ms,
            "tags": [{"key": k, "value": v} for k, v in tags.items()],
        }
        if run_name:
            body["run_name"] = run_name
        return self._rest("POST", "/api/2.0/mlflow/runs/create", body)["run"]["info"]["run_id"]

    # -- reading --------------------------------------------------------------------------------

    def search_runs(
        self,
        experiment_ids: Iterable[str],
        filter_string: str = "",
        *,
        order_by: Sequence[str] | None = None,
        max_results: int | None = None,
        page_size: int = 1000,
    ) -> list:
        """The runs of ``experiment_ids`` that match ``filter_string``, all of them page by page
        (or the first ``max_results``), in ``order_by`` (MLflow's syntax)."""
        ids, out, token = list(experiment_ids), [], None
        while True:
            size = page_size if max_results is None else min(page_size, max_results - len(out))
            page = self.client.search_runs(
                ids,
                filter_string,
                max_results=size,
                order_by=list(order_by) if order_by else None,
                page_token=token,
            )
            out.extend(page)
            token = page.token
            if not token or (max_results is not None and len(out) >= max_results):
                return out

    # -- writing --------------------------------------------------------------------------------

    def log_batch(self, run_id: str, metrics: list[Metric], params: list[Param], tags: list[RunTag]) -> None:
        if self._rest is None:
            # the sink's entities carry .key/.value(/.timestamp/.step) only; MLflow's client wants its own
            metrics = [Metric(m.key, m.value, m.timestamp, m.step) for m in metrics]
            params = [Param(p.key, p.value) for p in params]
            tags = [RunTag(t.key, t.value) for t in tags]
            self.client.log_batch(run_id, metrics=metrics, params=params, tags=tags, synchronous=True)
            return
        self._rest(
            "POST",
            "/api/2.0/mlflow/runs/log-batch",
            {
                "run_id": run_id,
                "metrics": [
                    {"key": m.key, "value": m.value, "timestamp": m.timestamp, "step": m.step}
                    for m in metrics
                ],
                "params": [{"key": p.key, "value": p.value} for p in params],
                "tags": [{"key": t.key, "value": t.value} for t in tags],
            },
        )

    def params(self, run_id: str) -> dict[str, str]:
        if self._rest is None:
            return dict(self.client.get_run(run_id).data.params)
        data = self._rest("GET", "/api/2.0/mlflow/runs/get", {"run_id": run_id})
        return {p["key"]: p.get("value", "") for p in data.get("run", {}).get("data", {}).get("params", [])}

    def terminate(self, run_id: str, status: str, end_time_ms: int) -> None:
        if self._rest is None:
            self.client.set_terminated(run_id, status, end_time=end_time_ms)
            return
        self._rest(
            "POST",
            "/api/2.0/mlflow/runs/update",
            {"run_id": run_id, "status": status, "end_time": end_time_ms},
        )

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)
