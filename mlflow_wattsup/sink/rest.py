"""A small MLflow REST client that imports no MLflow: ``http.client`` and ``json`` only.

Importing MLflow costs a short job seconds of CPU; talking to an ``mlflow server`` needs a handful
of JSON calls. :class:`RestClient` makes them (experiments by name, create experiment / run,
``log-batch`` within MLflow's limits, tags, status, dataset inputs, run search with paging) and
says plainly what went wrong:

* :class:`Refused` - the server answered 4xx: one line naming the call, the run or experiment,
  MLflow's error code and message; retrying will not help.
* :class:`Overloaded` - 429 or 503 (or MLflow's 400 for an exhausted database connection pool):
  the server is up but shedding load (``retry_after_s`` when it says); back off
  (:mod:`.backoff`) and retry.
* :class:`ServerError` - another 5xx; retry.
* :class:`Unreachable` (a ``ConnectionError``) - refused, reset, timed out, name unknown; retry.

Authentication and TLS follow MLflow's own environment variables, read when the client is made:
``MLFLOW_TRACKING_USERNAME``/``_PASSWORD`` (else ``~/.mlflow/credentials``, section ``[mlflow]``;
HTTP basic when both are set), else ``MLFLOW_TRACKING_TOKEN`` (bearer);
``MLFLOW_TRACKING_INSECURE_TLS``, ``MLFLOW_TRACKING_SERVER_CERT_PATH`` (a CA bundle),
``MLFLOW_TRACKING_CLIENT_CERT_PATH``; ``MLFLOW_WORKSPACE``. Schemes that need MLflow's plugins
(``MLFLOW_TRACKING_AUTH``, ``MLFLOW_TRACKING_AWS_SIGV4``) are not spoken here:
:func:`needs_mlflow` says so, and the caller uses MLflow's client instead.

:func:`context_tags` gives the system tags ``mlflow.start_run()`` would set in this process
(user, source name and type, git commit, branch and repository URL, ``$MLFLOW_RUN_CONTEXT``),
computed as MLflow 3.17's context providers compute them, without GitPython. Context-provider
plugins other than MLflow's own (ours sets hardware tags) need MLflow to load: pass their tags
as ``extra``.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

API = "/api/2.0/mlflow"
#: seconds a request may take: above the 30 s MLflow's server waits for a database connection before
#: answering 'QueuePool limit' (under load a 15 s timeout re-sent creations the server was still
#: carrying out: issue 20's load test); a server that is down refuses at once
TIMEOUT_S = 40.0

# MLflow's limits (mlflow/utils/validation.py; a test checks them against the installed MLflow)
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_ENTITIES_PER_BATCH = 1000
MAX_BATCH_LOG_REQUEST_SIZE = 1_000_000
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_ENTITY_KEY_LENGTH = 250
MAX_DATASETS_PER_BATCH = 1000
MAX_RESULTS_PER_SEARCH = 50_000  # the server's own cap per page

# MLflow's tag names (mlflow/utils/mlflow_tags.py)
USER = "mlflow.user"
SOURCE_NAME = "mlflow.source.name"
SOURCE_TYPE = "mlflow.source.type"
GIT_COMMIT = "mlflow.source.git.commit"
GIT_BRANCH = "mlflow.source.git.branch"
GIT_REPO_URL = "mlflow.source.git.repoURL"
RUN_NAME = "mlflow.runName"


class Metric(NamedTuple):
    """One metric value (the attribute names of ``mlflow.entities.Metric``, which works too)."""

    key: str
    value: float
    timestamp: int
    step: int = 0


# -- errors ---------------------------------------------------------------------------------------


class RestError(Exception):
    """A request the server answered with an error; ``str()`` is one line."""

    retryable = False

    def __init__(self, line: str, status: int = 0, error_code: str = "", retry_after_s: float | None = None):
        super().__init__(line)
        self.status = status
        self.error_code = error_code
        self.retry_after_s = retry_after_s


class Refused(RestError):
    """4xx: the request itself is wrong (unknown run, bad value, no permission)."""


class Overloaded(RestError):
    """429 / 503: the server sheds load; back off and retry."""

    retryable = True


class ServerError(RestError):
    """Another 5xx: the server failed (its database, a bug); retry."""

    retryable = True


#: MLflow's server answers 400 BAD_REQUEST when its database connection pool is exhausted
#: (SQLAlchemy's TimeoutError is not an OperationalError, which it maps to 503): seen with 100 jobs
#: replaying at once after a restart. That is load, not a bad request.
_POOL_EXHAUSTED = ("QueuePool limit of size", "connection timed out, timeout")


class Unreachable(ConnectionError):
    """No answer at all: refused, reset, timed out, unknown host; retry."""

    retryable = True


def needs_mlflow(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why this environment needs MLflow's own HTTP client (an auth plugin), or None."""
    if environ.get("MLFLOW_TRACKING_AUTH"):
        return f"MLFLOW_TRACKING_AUTH={environ['MLFLOW_TRACKING_AUTH']} (an MLflow auth plugin)"
    if _env_bool(environ, "MLFLOW_TRACKING_AWS_SIGV4"):
        return "MLFLOW_TRACKING_AWS_SIGV4 (AWS request signing)"
    return None


def _env_bool(environ: Mapping[str, str], name: str) -> bool:
    raw = environ.get(name)
    if raw is None:
        return False
    if raw.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"{name}={raw!r}: give true, false, 1 or 0")
    return raw.lower() in ("true", "1")


def _read_credentials_file() -> tuple[str | None, str | None]:
    path = os.path.expanduser("~/.mlflow/credentials")
    if not os.path.exists(path):
        return None, None
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(path)
    if "mlflow" not in cfg:
        return None, None
    section = cfg["mlflow"]
    return section.get("mlflow_tracking_username"), section.get("mlflow_tracking_password")


def _finite(x: float) -> float | str:
    """A JSON-safe metric value: non-finite values as proto3 JSON spells them."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


# -- the client -----------------------------------------------------------------------------------


class RestClient:
    """Calls to one MLflow tracking server (``uri``: ``http(s)://host[:port][/prefix]``).

    ``timeout_s``: per request (connect and read). ``limiter``: a :class:`.backoff.TokenBucket`
    every request takes a token from (None: no cap). ``requests``: how many requests this
    client made (what a job costs the server). Thread-safe: requests go one at a time over one
    kept-alive connection.
    """

    def __init__(
        self,
        uri: str,
        timeout_s: float = TIMEOUT_S,
        limiter=None,
        environ: Mapping[str, str] = os.environ,
    ):
        parts = urlsplit(uri)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an MLflow server URI: {uri!r} (want http(s)://host:port)")
        reason = needs_mlflow(environ)
        if reason:
            raise ValueError(f"{reason} needs MLflow's own client")
        self.uri = uri.rstrip("/")
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self.limiter = limiter
        self.requests = 0
        self._lock = threading.Lock()
        self._conn: http.client.HTTPConnection | None = None
        self._headers = self._auth_headers(environ)
        self._ssl = self._ssl_context(environ) if self._https else None

    # -- configuration ----------------------------------------------------------------------------

    @staticmethod
    def _auth_headers(environ: Mapping[str, str]) -> dict[str, str]:
        from mlflow_wattsup import __version__

        headers = {
            "User-Agent": f"mlflow-wattsup/{__version__}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        user, password = environ.get("MLFLOW_TRACKING_USERNAME"), environ.get("MLFLOW_TRACKING_PASSWORD")
        if not (user and password):
            file_user, file_password = _read_credentials_file()
            user, password = user or file_user, password or file_password
        token = environ.get("MLFLOW_TRACKING_TOKEN")
        if user and password:
            pair = base64.standard_b64encode(f"{user}:{password}".encode()).decode()
            headers["Authorization"] = f"Basic {pair}"
        elif token:
            headers["Authorization"] = f"Bearer {token}"
        workspace = (environ.get("MLFLOW_WORKSPACE") or "").strip()
        if workspace:
            headers["X-MLFLOW-WORKSPACE"] = workspace
        return headers

    @staticmethod
    def _ssl_context(environ: Mapping[str, str]):
        import ssl

        insecure = _env_bool(environ, "MLFLOW_TRACKING_INSECURE_TLS")
        ca = environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH")
        if insecure and ca:
            raise ValueError(
                "MLFLOW_TRACKING_INSECURE_TLS and MLFLOW_TRACKING_SERVER_CERT_PATH are both set: set only one"
            )
        if insecure:
            ctx = ssl._create_unverified_context()
        else:
            ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
        cert = environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH")
        if cert:
            ctx.load_cert_chain(cert)
        return ctx

    # -- transport ----------------------------------------------------------------------------------

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout_s, context=self._ssl
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=self.timeout_s)

    def call(self, method: str, endpoint: str, body: dict | None = None, what: str = "") -> dict:
        """One request to ``API + endpoint`` (GET: ``body`` as the query); the JSON answer.

        ``what`` names the call in error lines ("log-batch to run 1a2b..."). A request on a
        kept-alive connection the server has since closed is sent again once on a new
        connection, only for calls that are safe to repeat (not the creation of a run)."""
        path = f"{self._prefix}{API}{endpoint}"
        data = None
        if method == "GET":
            if body:
                path += "?" + urlencode(body, doseq=True)
        else:
            data = json.dumps(body or {}, allow_nan=False).encode()
        what = what or f"{method} {API}{endpoint}"
        repeatable = method == "GET" or not endpoint.endswith("/create")
        status, raw, retry_after = self._send(method, path, data, self._headers, what, repeatable)
        return self._answer(status, raw, retry_after, what)

    def put_artifact(self, artifact_uri: str, artifact_file: str, data: bytes) -> None:
        """Upload ``data`` as ``artifact_file`` under a run's ``mlflow-artifacts:`` artifact URI
        (the server stores it: ``mlflow server``'s default artifact proxy)."""
        parts = urlsplit(artifact_uri)
        if parts.scheme != "mlflow-artifacts":
            raise ValueError(f"{artifact_uri!r} is not an mlflow-artifacts: URI")
        rel = "/".join(p for p in (parts.path.strip("/"), artifact_file.strip("/")) if p)
        path = f"{self._prefix}/api/2.0/mlflow-artifacts/artifacts/{quote(rel)}"
        headers = {**self._headers, "Content-Type": "application/octet-stream"}
        what = f"the upload of {artifact_file}"
        status, raw, retry_after = self._send("PUT", path, data, headers, what, True)
        self._answer(status, raw, retry_after, what)

    def _send(
        self, method: str, path: str, data: bytes | None, headers: dict, what: str, repeatable: bool
    ) -> tuple[int, bytes, str | None]:
        with self._lock:
            if self.limiter is not None:
                self.limiter.wait()
            for attempt in (0, 1):
                reused = self._conn is not None
                if not repeatable:
                    self._close()  # a fresh connection: a create is never sent twice
                    reused = False
                if self._conn is None:
                    self._conn = self._connect()
                self.requests += 1
                try:
                    self._conn.request(method, path, body=data, headers=headers)
                    resp = self._conn.getresponse()
                    status, raw = resp.status, resp.read()
                    retry_after = resp.getheader("Retry-After")
                    if resp.will_close:
                        self._close()
                    break
                except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                    self._close()
                    if attempt == 0 and reused and repeatable:
                        continue  # the server closed an idle kept-alive connection
                    raise Unreachable(
                        f"{self.uri} did not answer {what}: {type(exc).__name__}: {exc}"
                    ) from None
                except (OSError, http.client.HTTPException) as exc:
                    self._close()
                    reason = str(exc) or type(exc).__name__
                    raise Unreachable(f"{self.uri} did not answer {what}: {reason}") from None
        return status, raw, retry_after

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None

    def close(self) -> None:
        with self._lock:
            self._close()

    def _answer(self, status: int, raw: bytes, retry_after: str | None, what: str) -> dict:
        text = raw.decode("utf-8", "replace")
        parsed: Any = None
        try:
            parsed = json.loads(text) if text.strip() else {}
        except ValueError:
            pass
        if status == 200:
            if not isinstance(parsed, dict):
                raise ServerError(
                    f"MLflow server {self.uri} answered {what} with something other than JSON "
                    f"({text[:80]!r}...): is MLFLOW_TRACKING_URI an MLflow server?",
                    status,
                )
            return parsed
        code, message = "", ""
        if isinstance(parsed, dict):
            code = str(parsed.get("error_code", ""))
            message = str(parsed.get("message", ""))
        message = (message or text or http.client.responses.get(status, "")).strip().splitlines()
        message = message[0][:300] if message else ""
        label = f"HTTP {status}" + (f" {code}" if code else "")
        if status in (429, 503) or (status == 400 and any(m in message for m in _POOL_EXHAUSTED)):
            after = None
            try:
                after = float(retry_after) if retry_after else None
            except ValueError:
                pass
            hint = f", asks to retry after {after:g} s" if after else ""
            raise Overloaded(
                f"MLflow server {self.uri} is overloaded ({label}{hint}) on {what}: {message}; backing off",
                status,
                code,
                after,
            )
        if 300 <= status < 400:
            raise Refused(
                f"MLflow server {self.uri} redirected {what} ({label}): set MLFLOW_TRACKING_URI to the "
                "server's final address",
                status,
                code,
            )
        if 400 <= status < 500:
            raise Refused(f"MLflow server {self.uri} refused {what} ({label}): {message}", status, code)
        raise ServerError(f"MLflow server {self.uri} failed {what} ({label}): {message}", status, code)

    # -- experiments --------------------------------------------------------------------------------

    def health(self) -> bool:
        """Whether the server answers (one light request; False when it does not)."""
        try:
            self.get_experiment_by_name("Default")
        except (Unreachable, ServerError, Overloaded):
            return False
        return True

    def get_experiment_by_name(self, name: str) -> dict | None:
        """The experiment (MLflow's JSON: ``experiment_id``, ``name``, ``tags`` [{key, value}]...)
        or None."""
        try:
            return self.call(
                "GET",
                "/experiments/get-by-name",
                {"experiment_name": name},
                what=f"the lookup of experiment {name!r}",
            )["experiment"]
        except Refused as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST" or exc.status == 404:
                return None
            raise

    def get_experiment(self, experiment_id: str) -> dict:
        return self.call(
            "GET",
            "/experiments/get",
            {"experiment_id": str(experiment_id)},
            what=f"the lookup of experiment {experiment_id}",
        )["experiment"]

    def create_experiment(self, name: str, tags: Mapping[str, str] | None = None) -> str:
        body = {"name": name, "tags": [{"key": k, "value": str(v)} for k, v in (tags or {}).items()]}
        return self.call("POST", "/experiments/create", body, what=f"the creation of experiment {name!r}")[
            "experiment_id"
        ]

    def get_or_create_experiment(self, name: str, tags: Mapping[str, str] | None = None) -> str:
        """The id of experiment ``name``, created with ``tags`` if missing (safe against another
        job creating it at the same moment)."""
        for attempt in (0, 1):
            exp = self.get_experiment_by_name(name)
            if exp is not None:
                return exp["experiment_id"]
            try:
                return self.create_experiment(name, tags)
            except Refused as exc:
                if attempt or exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def set_experiment_tag(self, experiment_id: str, key: str, value: str) -> None:
        body = {"experiment_id": str(experiment_id), "key": key, "value": str(value)}
        self.call(
            "POST", "/experiments/set-experiment-tag", body, what=f"tag {key} of experiment {experiment_id}"
        )

    # -- runs ---------------------------------------------------------------------------------------

    def create_run(
        self,
        experiment_id: str,
        tags: Mapping[str, str] | None = None,
        run_name: str | None = None,
        start_time_ms: int | None = None,
    ) -> dict:
        """Create a run; returns MLflow's run JSON (``info.run_id``, ``info.artifact_uri``...).

        ``tags`` are all the run's tags: for a run like ``mlflow.start_run()`` makes, pass
        ``{**context_tags(), **yours}``. As MLflow's client does, ``user_id`` is the
        ``mlflow.user`` tag (else "unknown") and a ``run_name`` is also the ``mlflow.runName`` tag.
        """
        tags = {k: str(v) for k, v in (tags or {}).items()}
        if run_name:
            tags.setdefault(RUN_NAME, run_name)
        body: dict[str, Any] = {
            "experiment_id": str(experiment_id),
            "user_id": tags.get(USER, "unknown"),
            "start_time": int(start_time_ms if start_time_ms is not None else time.time() * 1000),
            "tags": [{"key": k, "value": _fit(v, MAX_TAG_VAL_LENGTH)} for k, v in tags.items()],
        }
        if run_name:
            body["run_name"] = run_name
        return self.call(
            "POST", "/runs/create", body, what=f"the creation of a run in experiment {experiment_id}"
        )["run"]

    def get_run(self, run_id: str) -> dict:
        """MLflow's run JSON: ``info``, ``data`` (``metrics``, ``params``, ``tags`` as lists of
        ``{key, value}``), ``inputs``."""
        return self.call("GET", "/runs/get", {"run_id": run_id}, what=f"the lookup of run {run_id}")["run"]

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        _check_key(key, f"tag of run {run_id}")
        body = {
            "run_id": run_id,
            "run_uuid": run_id,
            "key": key,
            "value": _fit(str(value), MAX_TAG_VAL_LENGTH),
        }
        self.call("POST", "/runs/set-tag", body, what=f"tag {key} of run {run_id}")

    def update_run(
        self,
        run_id: str,
        status: str | None = None,
        end_time_ms: int | None = None,
        run_name: str | None = None,
    ) -> dict:
        """Set the run's status (``RUNNING``, ``FINISHED``, ``FAILED``, ``KILLED``, ``SCHEDULED``),
        end time and/or name; returns the updated run info."""
        body: dict[str, Any] = {"run_id": run_id, "run_uuid": run_id}
        if status is not None:
            body["status"] = status
        if end_time_ms is not None:
            body["end_time"] = int(end_time_ms)
        if run_name is not None:
            body["run_name"] = run_name
        what = f"the {'status ' + status if status else 'update'} of run {run_id}"
        return self.call("POST", "/runs/update", body, what=what).get("run_info", {})

    def log_batch(
        self,
        run_id: str,
        metrics: Iterable = (),
        params: Mapping[str, Any] | Iterable = (),
        tags: Mapping[str, Any] | Iterable = (),
    ) -> int:
        """Log metrics (objects with ``key``, ``value``, ``timestamp``, ``step``: :class:`Metric`
        or MLflow's), params and tags (mappings, or objects with ``key``/``value``) in as few
        ``log-batch`` calls as MLflow's limits allow: 1,000 metrics, 100 params, 100 tags, 1,000
        entities and 1 MB per call. Param values are cut to 6,000 characters and tag values to
        8,000 (as MLflow's client does); a key over 250 characters is refused here, before any
        call. Returns the number of calls made. A call that fails raises; the ones before it
        are written (MLflow ignores a metric value sent twice, and a param or tag written again
        with the same value)."""
        ms = [
            {
                "key": m.key,
                "value": _finite(float(m.value)),
                "timestamp": int(m.timestamp),
                "step": int(m.step),
            }
            for m in metrics
        ]
        ps = [{"key": k, "value": _fit(str(v), MAX_PARAM_VAL_LENGTH)} for k, v in _pairs(params)]
        ts = [{"key": k, "value": _fit(str(v), MAX_TAG_VAL_LENGTH)} for k, v in _pairs(tags)]
        for e in (*ms, *ps, *ts):
            _check_key(e["key"], f"value logged to run {run_id}")
        calls = 0
        for chunk in _batches(ms, ps, ts):
            n_m, n_p, n_t = (len(chunk[k]) for k in ("metrics", "params", "tags"))
            what = f"log-batch to run {run_id} ({n_m} metrics, {n_p} params, {n_t} tags)"
            self.call("POST", "/runs/log-batch", {"run_id": run_id, **chunk}, what=what)
            calls += 1
        return calls

    def log_inputs(self, run_id: str, datasets: Iterable[Mapping[str, Any]]) -> int:
        """Log dataset inputs: each ``{"name", "digest", "source_type", "source", "schema"?,
        "profile"?, "tags": {key: value}}`` (MLflow's Dataset fields; ``source`` is the JSON
        text of the source, e.g. ``{"uri": "/abs/path"}``), at most 1,000 per call. Returns the
        number of calls made."""
        items = []
        for d in datasets:
            ds = {k: d[k] for k in ("name", "digest", "source_type", "source") if k in d}
            for k in ("schema", "profile"):
                if d.get(k):
                    ds[k] = d[k]
            items.append(
                {
                    "dataset": ds,
                    "tags": [{"key": k, "value": str(v)} for k, v in (d.get("tags") or {}).items()],
                }
            )
        calls = 0
        for i in range(0, len(items), MAX_DATASETS_PER_BATCH):
            chunk = items[i : i + MAX_DATASETS_PER_BATCH]
            self.call(
                "POST",
                "/runs/log-inputs",
                {"run_id": run_id, "datasets": chunk},
                what=f"log-inputs to run {run_id} ({len(chunk)} datasets)",
            )
            calls += 1
        return calls

    def search_runs_page(
        self,
        experiment_ids: Iterable[str],
        filter_string: str = "",
        max_results: int = 1000,
        order_by: Iterable[str] = (),
        page_token: str | None = None,
        run_view_type: str = "ACTIVE_ONLY",
    ) -> tuple[list[dict], str | None]:
        """One page of ``runs/search``: (runs as MLflow's JSON, the next page's token or None)."""
        body: dict[str, Any] = {
            "experiment_ids": [str(e) for e in experiment_ids],
            "filter": filter_string,
            "run_view_type": run_view_type,
            "max_results": min(int(max_results), MAX_RESULTS_PER_SEARCH),
            "order_by": list(order_by),
        }
        if page_token:
            body["page_token"] = page_token
        what = f"the search of runs in experiment(s) {', '.join(body['experiment_ids'])}"
        if filter_string:
            what += f" matching {filter_string!r}"
        answer = self.call("POST", "/runs/search", body, what=what)
        return answer.get("runs", []), answer.get("next_page_token") or None

    def search_runs(
        self,
        experiment_ids: Iterable[str],
        filter_string: str = "",
        order_by: Iterable[str] = (),
        page_size: int = 1000,
        run_view_type: str = "ACTIVE_ONLY",
    ) -> Iterator[dict]:
        """Every matching run, page after page (``page_size`` runs per request)."""
        ids, order = list(experiment_ids), list(order_by)
        token = None
        while True:
            runs, token = self.search_runs_page(ids, filter_string, page_size, order, token, run_view_type)
            yield from runs
            if not token:
                return


# -- batching -------------------------------------------------------------------------------------


def _pairs(values: Mapping[str, Any] | Iterable) -> list[tuple[str, Any]]:
    if isinstance(values, Mapping):
        return [(k, v) for k, v in values.items() if v is not None]
    return [(e.key, e.value) for e in values]


def _fit(value: str, limit: int) -> str:
    return value if len(value) <= limit else value[:limit]


def _check_key(key: str, where: str) -> None:
    if not key or len(key) > MAX_ENTITY_KEY_LENGTH:
        raise Refused(
            f"key {key[:60]!r}{'...' if len(key) > 60 else ''} of a {where} is refused: MLflow keys are "
            f"1 to {MAX_ENTITY_KEY_LENGTH} characters (this one has {len(key)})"
        )


_ENVELOPE_BYTES = 200  # {"run_id": ..., "metrics": [], ...} around the entities


def _batches(ms: list[dict], ps: list[dict], ts: list[dict]) -> Iterator[dict]:
    """Chunks of (metrics, params, tags) within every per-call limit, in order: params first
    (MLflow checks them against the run's existing ones), then tags, then metrics."""
    queue = [("params", e) for e in ps] + [("tags", e) for e in ts] + [("metrics", e) for e in ms]
    limits = {
        "metrics": MAX_METRICS_PER_BATCH,
        "params": MAX_PARAMS_TAGS_PER_BATCH,
        "tags": MAX_PARAMS_TAGS_PER_BATCH,
    }
    chunk: dict[str, list] = {"metrics": [], "params": [], "tags": []}
    size = _ENVELOPE_BYTES
    for kind, e in queue:
        n = len(json.dumps(e, allow_nan=False).encode()) + 2
        total = sum(len(v) for v in chunk.values())
        if total and (
            len(chunk[kind]) >= limits[kind]
            or total >= MAX_ENTITIES_PER_BATCH
            or size + n > MAX_BATCH_LOG_REQUEST_SIZE
        ):
            yield chunk
            chunk = {"metrics": [], "params": [], "tags": []}
            size = _ENVELOPE_BYTES
        chunk[kind].append(e)
        size += n
    if any(chunk.values()):
        yield chunk


# -- the system tags mlflow.start_run() sets --------------------------------------------------------


def context_tags(
    extra: Mapping[str, str] | None = None, environ: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """The tags ``mlflow.start_run()`` resolves from its context in this process, in MLflow's
    order: the default context (user, source name and type), git (commit, branch, repository
    URL, when the main script is in a git repository and not ignored there), a Jupyter
    notebook's source, ``$MLFLOW_RUN_CONTEXT``; then ``extra`` (what context-provider plugins
    would add)."""
    tags: dict[str, str] = {}
    main = sys.argv[0] if sys.argv and sys.argv[0] else None
    try:
        user = environ.get("MLFLOW_TRACKING_USERNAME") or _read_credentials_file()[0]
        tags.update({USER: user or _getuser(), SOURCE_NAME: main or "<console>", SOURCE_TYPE: "LOCAL"})
    except Exception:  # as MLflow: a provider that fails adds nothing
        pass
    if main is not None:
        info = git_info(main)
        if info.get(GIT_COMMIT) is not None:
            tags.update({k: v for k, v in info.items() if v is not None})
    tags.update(_notebook_tags())
    raw = environ.get("MLFLOW_RUN_CONTEXT")
    if raw is not None:
        try:
            tags.update(json.loads(raw))
        except Exception:
            pass
    tags.update(extra or {})
    return tags


def _getuser() -> str:
    import getpass

    try:
        return getpass.getuser()
    except ImportError:
        return "unknown"


def _notebook_tags() -> dict[str, str]:
    """A Jupyter kernel's source (NOTEBOOK and the notebook's file name where the kernel says it);
    nothing outside IPython (never imported here)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return {}
    try:
        ip = ipython.get_ipython()
        if ip is None or not (type(ip).__name__ == "ZMQInteractiveShell" or hasattr(ip, "kernel")):
            return {}
        tags = {SOURCE_TYPE: "NOTEBOOK"}
        path = ip.user_ns.get("__vsc_ipynb_file__") or os.environ.get("__vsc_ipynb_file__")
        path = path or os.environ.get("IPYNB_FILE")
        if path:
            tags[SOURCE_NAME] = os.path.basename(path)
        return tags
    except Exception:
        return {}


def git_info(path: str) -> dict[str, str | None]:
    """Git commit, branch and repository URL of the repository holding ``path`` (a file's
    directory), as MLflow's git context gives them: the commit only if the directory is not
    ignored by git (``git check-ignore``) and git is installed; the branch None on a detached
    HEAD; the first remote's URL without credentials. Read from the repository's files: no
    GitPython, no process but ``git check-ignore``."""
    none = {GIT_COMMIT: None, GIT_BRANCH: None, GIT_REPO_URL: None}
    git = shutil.which("git")
    if git is None:  # MLflow: GitPython does not import without the git executable
        return none
    if os.path.isfile(path):
        path = os.path.dirname(os.path.abspath(path))
    found = _find_git_dir(path)
    if found is None:
        return none
    git_dir, common_dir = found
    out = dict(none)
    out[GIT_REPO_URL] = _first_remote_url(common_dir)
    head = _read(os.path.join(git_dir, "HEAD"))
    if head is None:
        return out
    branch_ref = head[5:].strip() if head.startswith("ref:") else None
    if branch_ref and branch_ref.startswith("refs/heads/"):
        out[GIT_BRANCH] = branch_ref[len("refs/heads/") :]
    commit = _resolve_ref(git_dir, common_dir, branch_ref) if branch_ref else head.strip()
    if commit and not _ignored(git, path):
        out[GIT_COMMIT] = commit
    return out


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def _find_git_dir(path: str) -> tuple[str, str] | None:
    """(git dir, common dir) of the repository containing ``path``, searching parents."""
    d = os.path.abspath(path)
    if not os.path.isdir(d):
        return None
    while True:
        dot = os.path.join(d, ".git")
        git_dir = None
        if os.path.isdir(dot):
            git_dir = dot
        elif os.path.isfile(dot):
            text = _read(dot) or ""
            if text.startswith("gitdir:"):
                git_dir = os.path.normpath(os.path.join(d, text[len("gitdir:") :].strip()))
        if git_dir and os.path.exists(os.path.join(git_dir, "HEAD")):
            common = _read(os.path.join(git_dir, "commondir"))
            common_dir = os.path.normpath(os.path.join(git_dir, common.strip())) if common else git_dir
            return git_dir, common_dir
        parent = os.path.dirname(d)
        if parent == d:
            return None
        d = parent


def _resolve_ref(git_dir: str, common_dir: str, ref: str, depth: int = 0) -> str | None:
    if depth > 5:
        return None
    for base in (git_dir, common_dir):
        text = _read(os.path.join(base, ref))
        if text is not None:
            text = text.strip()
            if text.startswith("ref:"):
                return _resolve_ref(git_dir, common_dir, text[4:].strip(), depth + 1)
            return text or None
    packed = _read(os.path.join(common_dir, "packed-refs")) or ""
    for line in packed.splitlines():
        if line and line[0] not in "#^":
            sha, _, name = line.partition(" ")
            if name.strip() == ref:
                return sha
    return None  # a branch without commits yet


def _first_remote_url(common_dir: str) -> str | None:
    """The URL of the first ``[remote "..."]`` section of the repository's config (credentials
    stripped, as MLflow does)."""
    text = _read(os.path.join(common_dir, "config")) or ""
    in_remote = False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("["):
            in_remote = s.startswith("[remote ")
            continue
        if in_remote:
            key, eq, value = s.partition("=")
            if eq and key.strip().lower() == "url":
                return _strip_credentials(value.strip().strip('"'))
    return None


def _strip_credentials(url: str) -> str:
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    return urlunsplit(
        (parts.scheme, parts.netloc.rpartition("@")[2], parts.path, parts.query, parts.fragment)
    )


def _ignored(git: str, path: str) -> bool:
    try:
        r = subprocess.run(
            [git, "check-ignore", "-q", path],
            cwd=path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0
