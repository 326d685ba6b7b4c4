"""The tracking-store calls we make, all of them, and how they fail: fast.

Against an ``mlflow server`` (``http(s)://``) every call goes through :class:`.rest.RestClient`:
plain JSON over ``http.client``, **no MLflow import**, no retries and a short timeout, so a down
server costs seconds, not MLflow's default seven retries over about four minutes (our sink's
backoff and spool take over), and a short job does not spend seconds importing MLflow. Where the
environment asks for one of MLflow's authentication plugins (:func:`.rest.needs_mlflow`) the same
calls go through MLflow's own HTTP helper (still no retries). Other stores (sqlite, the file
store, databricks) go through ``MlflowClient``, imported only then.

This is the only place that creates experiments and runs, finds an experiment by name, and
pages through ``search_runs``. :class:`Store` also answers the few ``MlflowClient`` calls the
report code makes on a run (``get_run``, ``set_tag``, ``get_experiment``,
``set_experiment_tag``), with objects shaped like MLflow's (``run.info.run_id``,
``run.data.metrics``...), so the same code describes a run over HTTP without MLflow. Nothing
here changes the process environment.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from types import SimpleNamespace
from typing import Any

from mlflow_wattsup.sink import keys, rest

HTTP_TIMEOUT_S = rest.TIMEOUT_S

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
    """Whether an exception means the tracking store could not be reached or is shedding load
    (retry later), vs a real error such as an unknown run."""
    if isinstance(exc, (rest.Unreachable, rest.Overloaded, rest.ServerError)):
        return True
    if isinstance(exc, rest.Refused):
        return False
    text = f"{type(exc).__name__}: {exc}"
    return any(n in text for n in _UNREACHABLE)


def now_ms() -> int:
    return int(time.time() * 1000)


def tracking_uri_now(tracking_uri: str | None = None) -> str | None:
    """The tracking URI a store should use: ``tracking_uri``; else MLflow's current one when this
    process imported MLflow already (``mlflow.set_tracking_uri`` counts); else
    ``$MLFLOW_TRACKING_URI``; None: MLflow's default (MLflow resolves it)."""
    if tracking_uri:
        return str(tracking_uri)
    if "mlflow" in sys.modules:
        try:
            return sys.modules["mlflow"].get_tracking_uri()
        except Exception:
            pass
    return os.environ.get("MLFLOW_TRACKING_URI") or None


def speaks_rest(uri: str | None, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether ``uri`` is an ``mlflow server`` our own REST client talks to (http(s), no auth
    plugin asked for)."""
    return (
        bool(uri)
        and str(uri).lower().startswith(("http://", "https://"))
        and rest.needs_mlflow(environ) is None
    )


def job_limiter():
    """The pace of one job's requests to a tracking server: a :class:`.backoff.TokenBucket` at
    ``$WATTSUP_MAX_REQUESTS_PER_MIN`` (120 a minute, bursts of 30: a job's usual 5 to 10 requests
    never wait), so that hundreds of jobs replaying at once do not storm the server."""
    from mlflow_wattsup.sink.backoff import TokenBucket, rate_from_env

    return TokenBucket(rate_from_env())


# -- MLflow-shaped views of REST answers ------------------------------------------------------------


class RunInfo(SimpleNamespace):
    """``run.info`` as MLflow names it (``run_id``, ``experiment_id``, ``status``, ``start_time``,
    ``end_time``, ``run_name``, ``user_id``, ``artifact_uri``, ``lifecycle_stage``)."""

    @property
    def run_uuid(self) -> str:
        return self.run_id


class RunData:
    """``run.data``: ``metrics`` (latest value per key), ``params``, ``tags`` as dicts, and
    ``_metric_objs`` (the latest point per key, with timestamp and step) as MLflow's RunData."""

    def __init__(self, metrics: list, params: dict[str, str], tags: dict[str, str]):
        self._metric_objs = metrics
        self.metrics = {m.key: m.value for m in metrics}
        self.params = params
        self.tags = tags


class RunView:
    """One run from MLflow's REST JSON, shaped like ``mlflow.entities.Run``."""

    def __init__(self, raw: Mapping[str, Any]):
        info = dict(raw.get("info") or {})
        data = raw.get("data") or {}
        for k in ("start_time", "end_time"):
            if info.get(k) is not None:
                info[k] = int(info[k])
        info.setdefault("end_time", None)
        info.setdefault("run_name", None)
        self.info = RunInfo(**{k: info.get(k) for k in _INFO_FIELDS})
        metrics = [
            rest.Metric(
                m["key"], float(m.get("value", 0.0)), int(m.get("timestamp", 0)), int(m.get("step", 0))
            )
            for m in data.get("metrics", [])
        ]
        self.data = RunData(
            metrics,
            {p["key"]: p.get("value", "") for p in data.get("params", [])},
            {t["key"]: t.get("value", "") for t in data.get("tags", [])},
        )
        self.inputs = raw.get("inputs") or {}


_INFO_FIELDS = (
    "run_id",
    "experiment_id",
    "run_name",
    "user_id",
    "status",
    "start_time",
    "end_time",
    "artifact_uri",
    "lifecycle_stage",
)


class ExperimentView(SimpleNamespace):
    """An experiment from MLflow's REST JSON: ``experiment_id``, ``name``, ``tags`` (a dict),
    ``artifact_location``, ``lifecycle_stage``."""


def _experiment_view(raw: Mapping[str, Any]) -> ExperimentView:
    return ExperimentView(
        experiment_id=str(raw.get("experiment_id")),
        name=raw.get("name"),
        tags={t["key"]: t.get("value", "") for t in raw.get("tags", [])},
        artifact_location=raw.get("artifact_location"),
        lifecycle_stage=raw.get("lifecycle_stage"),
    )


class _MlflowAuthRest(rest.RestClient):
    """:class:`.rest.RestClient`'s calls made with MLflow's own HTTP helper (for an auth plugin:
    ``MLFLOW_TRACKING_AUTH``, AWS SigV4), still with no retries and a short timeout. Errors are
    translated to :mod:`.rest`'s."""

    def __init__(self, uri: str, host_creds, timeout_s: float):
        self.uri = uri.rstrip("/")
        self.timeout_s = timeout_s
        self.limiter = None
        self.requests = 0
        self._creds = host_creds

    def call(self, method: str, endpoint: str, body: dict | None = None, what: str = "") -> dict:
        from mlflow.exceptions import MlflowException
        from mlflow.utils.rest_utils import http_request, verify_rest_response

        what = what or f"{method} {rest.API}{endpoint}"
        kw = {"json": body or {}} if method != "GET" else {"params": body or {}}
        self.requests += 1
        try:
            resp = http_request(
                self._creds, rest.API + endpoint, method, max_retries=0, timeout=int(self.timeout_s), **kw
            )
        except Exception as exc:
            raise rest.Unreachable(f"{self.uri} did not answer {what}: {type(exc).__name__}: {exc}") from None
        if resp.status_code in (429, 503) or resp.status_code >= 500:
            return self._answer(resp.status_code, resp.content, resp.headers.get("Retry-After"), what)
        try:
            verify_rest_response(resp, rest.API + endpoint)
        except MlflowException as exc:
            line = (str(exc).splitlines() or [""])[0]
            raise rest.Refused(
                f"MLflow server {self.uri} refused {what}: {line}", resp.status_code, exc.error_code
            ) from None
        return resp.json() if resp.text else {}

    def close(self) -> None:
        pass


# -- the store --------------------------------------------------------------------------------------


class Store:
    """One tracking store, called so that failures are quick (see the module docstring).

    ``Store(tracking_uri="http://...")`` (or ``Store()``: the current tracking URI, see
    :func:`tracking_uri_now`) imports MLflow only for stores that need it; ``Store(client)``
    wraps an ``MlflowClient`` made elsewhere (its URI decides the same way). ``requests``: the
    calls this store made over HTTP; ``limiter``: what paces them (None: nothing; a job's
    store takes :func:`job_limiter`).
    """

    def __init__(
        self,
        client=None,
        http_timeout_s: float = HTTP_TIMEOUT_S,
        *,
        tracking_uri: str | None = None,
        limiter=None,
    ):
        self._client = client
        if client is not None:
            self.uri = client.tracking_uri
        else:
            uri = tracking_uri_now(tracking_uri)
            if uri is None or not speaks_rest(uri):
                from mlflow.tracking import MlflowClient

                self._client = MlflowClient(uri)
                uri = self._client.tracking_uri
            self.uri = uri
        self.rest: rest.RestClient | None = None
        if speaks_rest(self.uri):
            self.rest = rest.RestClient(self.uri, timeout_s=http_timeout_s, limiter=limiter)
        elif str(self.uri).lower().startswith(("http://", "https://")):
            self.rest = self._mlflow_auth_rest(http_timeout_s)
        self._created: dict[str, str] = {}  # run id -> experiment id, for runs this store created
        self._runs: dict[str, Any] = {}  # run id -> the run as last read (consumed by params())
        self._experiment_of: dict[str, str] = {}
        self._experiments: dict[str, dict[str, str]] = {}  # experiment id -> tags as last read

    def _mlflow_auth_rest(self, timeout_s: float):
        try:
            from mlflow.store.tracking.rest_store import RestStore

            store = self.client._tracking_client.store  # its credentials (the auth plugin's)
            if isinstance(store, RestStore):
                return _MlflowAuthRest(self.uri, store.get_host_creds(), timeout_s)
        except Exception:  # an MLflow without these helpers: the client's own calls
            pass
        return None

    @property
    def client(self):
        """An ``MlflowClient`` for this store (imported and made on first use: over HTTP only the
        calls this class does not make, e.g. artifacts of a server that does not proxy them)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(self.uri)
        return self._client

    @property
    def is_rest(self) -> bool:
        return self.rest is not None

    @property
    def requests(self) -> int:
        return self.rest.requests if self.rest is not None else 0

    def reachable(self) -> bool:
        """A quick check (REST: one request, no retries); other stores are assumed reachable."""
        if self.rest is None:
            return True
        try:
            self.rest.get_experiment_by_name("Default")
        except Exception as exc:
            return not unreachable(exc)
        return True

    # -- runs and experiments -------------------------------------------------------------------

    def run_exists(self, run_id: str) -> None:
        """Check that ``run_id`` exists: ValueError (one line) if the store says it does not;
        store errors (unreachable included) propagate. The run read is kept for :meth:`params`."""
        try:
            self._runs[run_id] = self.get_run(run_id)
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
                    self.set_experiment_tag(exp_id, keys.EXPERIMENT_KIND_TAG, keys.EXPERIMENT_KIND)
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
        if self.rest is None:
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                return None, False
            self._experiments[exp.experiment_id] = dict(exp.tags)
            return exp.experiment_id, keys.EXPERIMENT_KIND_TAG in exp.tags
        raw = self.rest.get_experiment_by_name(name)
        if raw is None:
            return None, False
        exp = _experiment_view(raw)
        self._experiments[exp.experiment_id] = dict(exp.tags)
        return exp.experiment_id, keys.EXPERIMENT_KIND_TAG in exp.tags

    def _create_experiment(self, name: str) -> str:
        kind = {keys.EXPERIMENT_KIND_TAG: keys.EXPERIMENT_KIND}
        if self.rest is None:
            exp_id = self.client.create_experiment(name, tags=kind)
        else:
            exp_id = self.rest.create_experiment(name, kind)
        self._experiments[str(exp_id)] = dict(kind)
        return str(exp_id)

    def get_experiment(self, experiment_id: str):
        """The experiment (``.experiment_id``, ``.name``, ``.tags`` as a dict), read now."""
        if self.rest is None:
            exp = self.client.get_experiment(experiment_id)
        else:
            exp = _experiment_view(self.rest.get_experiment(experiment_id))
        self._experiments[str(experiment_id)] = dict(exp.tags)
        return exp

    def experiment_tags(self, experiment_id: str) -> dict[str, str]:
        """The experiment's tags as this store last read or wrote them (read now if never)."""
        exp_id = str(experiment_id)
        if exp_id not in self._experiments:
            self.get_experiment(exp_id)
        return self._experiments[exp_id]

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        if self.rest is None:
            self.client.set_experiment_tag(experiment_id, key, value)
        else:
            self.rest.set_experiment_tag(experiment_id, key, value)
        self._experiments.setdefault(str(experiment_id), {})[key] = str(value)

    def create_run(self, create: dict) -> str:
        """Create the run described by ``create``: ``experiment_id`` or ``experiment_name``,
        ``run_name``, ``tags``, ``start_time`` (epoch ms); returns its id."""
        exp_id = create.get("experiment_id") or self.experiment_id(create.get("experiment_name") or "Default")
        tags = {k: str(v) for k, v in (create.get("tags") or {}).items()}
        run_name = create.get("run_name")
        if run_name:
            tags["mlflow.runName"] = run_name
        start_ms = create.get("start_time") or now_ms()
        if self.rest is None:
            run_id = self.client.create_run(
                str(exp_id), start_time=start_ms, tags=tags, run_name=run_name
            ).info.run_id
        else:
            run_id = self.rest.create_run(str(exp_id), tags, run_name=run_name, start_time_ms=start_ms)[
                "info"
            ]["run_id"]
        self._created[run_id] = str(exp_id)
        self._experiment_of[run_id] = str(exp_id)
        return run_id

    def get_run(self, run_id: str):
        """The run (``.info``, ``.data.metrics/params/tags`` as MLflow's ``Run``), read now."""
        run = self.client.get_run(run_id) if self.rest is None else RunView(self.rest.get_run(run_id))
        self._experiment_of[run_id] = str(run.info.experiment_id)
        return run

    def experiment_of(self, run_id: str) -> str:
        """The id of the run's experiment (no request when this store created or read the run)."""
        if run_id not in self._experiment_of:
            self.get_run(run_id)
        return self._experiment_of[run_id]

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
        ids, out, token = [str(e) for e in experiment_ids], [], None
        while True:
            size = page_size if max_results is None else min(page_size, max_results - len(out))
            if self.rest is None:
                page = self.client.search_runs(
                    ids,
                    filter_string,
                    max_results=size,
                    order_by=list(order_by) if order_by else None,
                    page_token=token,
                )
                out.extend(page)
                token = page.token
            else:
                runs, token = self.rest.search_runs_page(
                    ids, filter_string, size, list(order_by or ()), token
                )
                out.extend(RunView(r) for r in runs)
            if not token or (max_results is not None and len(out) >= max_results):
                return out

    # -- writing --------------------------------------------------------------------------------

    def log_batch(
        self, run_id: str, metrics: Sequence = (), params: Sequence = (), tags: Sequence = ()
    ) -> None:
        """Metrics (objects with ``key``, ``value``, ``timestamp``, ``step``: :class:`.rest.Metric`
        or MLflow's), params and tags (objects with ``key``/``value``, or ``(key, value)`` pairs)."""
        if self.rest is not None:
            self.rest.log_batch(run_id, metrics, dict(_kv(params)), dict(_kv(tags)))
            return
        from mlflow.entities import Metric, Param, RunTag

        self.client.log_batch(
            run_id,
            metrics=[Metric(m.key, float(m.value), int(m.timestamp), int(m.step)) for m in metrics],
            params=[Param(k, str(v)) for k, v in _kv(params)],
            tags=[RunTag(k, str(v)) for k, v in _kv(tags)],
            synchronous=True,
        )

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        if self.rest is None:
            self.client.set_tag(run_id, key, value)
        else:
            self.rest.set_tag(run_id, key, value)

    def params(self, run_id: str) -> dict[str, str]:
        """The run's params: none for a run this store created (no request: we log its first
        params), the run as :meth:`run_exists` read it, else read now."""
        if run_id in self._created:
            return {}
        run = self._runs.pop(run_id, None) or self.get_run(run_id)
        return dict(run.data.params)

    def terminate(self, run_id: str, status: str, end_time_ms: int) -> None:
        if self.rest is None:
            self.client.set_terminated(run_id, status, end_time=end_time_ms)
        else:
            self.rest.update_run(run_id, status=status, end_time_ms=end_time_ms)

    def log_inputs(self, run_id: str, datasets: Iterable[Mapping[str, Any]]) -> None:
        """Dataset inputs as :meth:`.rest.RestClient.log_inputs` takes them (``name``, ``digest``,
        ``source_type``, ``source`` (JSON text), ``tags``)."""
        datasets = list(datasets)
        if self.rest is not None:
            self.rest.log_inputs(run_id, datasets)
            return
        from mlflow.entities import Dataset, DatasetInput, InputTag

        self.client.log_inputs(
            run_id,
            datasets=[
                DatasetInput(
                    Dataset(
                        d["name"],
                        d["digest"],
                        d["source_type"],
                        d["source"],
                        d.get("schema"),
                        d.get("profile"),
                    ),
                    tags=[InputTag(k, str(v)) for k, v in (d.get("tags") or {}).items()],
                )
                for d in datasets
            ],
        )

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """A small text artifact. Over HTTP, straight to a server that proxies artifacts
        (``mlflow-artifacts:`` artifact URIs, ``mlflow server``'s default); else MLflow's client."""
        if (
            self.rest is not None
            and isinstance(self.rest, rest.RestClient)
            and not isinstance(self.rest, _MlflowAuthRest)
        ):
            root = self.get_run(run_id).info.artifact_uri or ""
            if root.startswith("mlflow-artifacts:"):
                self.rest.put_artifact(root, artifact_file, text.encode("utf-8"))
                return
        self.client.log_text(run_id, text, artifact_file)


def _kv(values: Mapping[str, Any] | Iterable) -> list[tuple[str, Any]]:
    if isinstance(values, Mapping):
        return [(k, v) for k, v in values.items() if v is not None]
    out = []
    for e in values:
        if isinstance(e, tuple) and not hasattr(e, "key"):
            out.append((e[0], e[1]))
        else:
            out.append((e.key, e.value))
    return out
