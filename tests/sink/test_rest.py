"""The MLflow REST client without MLflow (sink/rest.py), against tiny in-test HTTP servers: errors,
auth, TLS, batching limits, the context tags; a real ``mlflow server`` is in test_rest_server.py."""

import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading

import pytest

from mlflow_wattsup.sink import rest
from mlflow_wattsup.sink.backoff import TokenBucket
from mlflow_wattsup.sink.rest import Metric, Overloaded, Refused, RestClient, ServerError, Unreachable


class Fake:
    """An HTTP server on 127.0.0.1 answering from a list of (status, body, headers); records
    every request as (method, path, headers, json body)."""

    def __init__(self, answers=None, tls=None):
        self.answers = list(answers or [])
        self.seen = []
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(n)) if n else None
                fake.seen.append((self.command, self.path, dict(self.headers), body))
                status, payload, headers = fake.answers.pop(0) if fake.answers else (200, {}, {})
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                headers = dict(headers)
                if headers.pop("X-Drop-Silently", None):  # close after answering, without saying so
                    self.close_connection = True
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _handle

            def log_message(self, *a):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.uri = f"{scheme}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake():
    servers = []

    def make(answers=None, tls=None):
        servers.append(Fake(answers, tls))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


@pytest.fixture(autouse=True)
def no_credentials(monkeypatch, tmp_path):
    for var in (
        "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_TOKEN",
        "MLFLOW_TRACKING_INSECURE_TLS",
        "MLFLOW_TRACKING_SERVER_CERT_PATH",
        "MLFLOW_TRACKING_CLIENT_CERT_PATH",
        "MLFLOW_TRACKING_AUTH",
        "MLFLOW_TRACKING_AWS_SIGV4",
        "MLFLOW_WORKSPACE",
        "MLFLOW_RUN_CONTEXT",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


# -- importing ------------------------------------------------------------------------------------


def test_importing_and_using_it_imports_no_mlflow(fake):
    srv = fake([(200, {"experiment": {"experiment_id": "7", "name": "e"}}, {})])
    code = (
        "import sys\nimport mlflow_wattsup.sink.rest as r\nassert 'mlflow' not in sys.modules, 'on import'\n"
        f"c = r.RestClient({srv.uri!r})\nassert c.get_experiment_by_name('e')['experiment_id'] == '7'\n"
        "r.context_tags()\nheavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('mlflow', 'requests', 'urllib3', 'git', 'numpy', 'pandas', 'sqlalchemy'))\n"
        "assert not heavy, heavy\nprint('ok')"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_limits_are_mlflows_own():
    from mlflow.utils import validation as v

    for name in (
        "MAX_METRICS_PER_BATCH",
        "MAX_PARAMS_TAGS_PER_BATCH",
        "MAX_ENTITIES_PER_BATCH",
        "MAX_BATCH_LOG_REQUEST_SIZE",
        "MAX_PARAM_VAL_LENGTH",
        "MAX_TAG_VAL_LENGTH",
        "MAX_ENTITY_KEY_LENGTH",
        "MAX_DATASETS_PER_BATCH",
    ):
        assert getattr(rest, name) == getattr(v, name), name


# -- errors ----------------------------------------------------------------------------------------


def test_429_is_overloaded_with_a_clear_line_and_its_retry_after(fake):
    srv = fake(
        [
            (
                429,
                {"error_code": "REQUEST_LIMIT_EXCEEDED", "message": "Too many requests"},
                {"Retry-After": "7"},
            )
        ]
    )
    with pytest.raises(Overloaded) as e:
        RestClient(srv.uri).log_batch("abc123", [Metric("power_w", 1.0, 1, 0)])
    line = str(e.value)
    assert "\n" not in line
    assert "overloaded" in line and "429" in line and "REQUEST_LIMIT_EXCEEDED" in line
    assert "log-batch to run abc123 (1 metrics, 0 params, 0 tags)" in line and "retry after 7 s" in line
    assert e.value.retryable and e.value.retry_after_s == 7.0 and e.value.status == 429


def test_503_from_a_proxy_is_overloaded_too(fake):
    srv = fake([(503, b"<html><body>Service Unavailable</body></html>", {"Content-Type": "text/html"})])
    with pytest.raises(Overloaded) as e:
        RestClient(srv.uri).update_run("abc", status="FINISHED")
    assert "503" in str(e.value) and "the status FINISHED of run abc" in str(e.value)
    assert e.value.retry_after_s is None


def test_mlflows_400_for_an_exhausted_connection_pool_is_overload(fake):
    """What MLflow 3.17's server answered 100 jobs replaying at once after a restart."""
    pool = (
        "QueuePool limit of size 5 overflow 10 reached, connection timed out, timeout 30.00 "
        "(Background on this error at: https://sqlalche.me/e/21/3o7r)"
    )
    srv = fake([(400, {"error_code": "BAD_REQUEST", "message": pool}, {})])
    with pytest.raises(Overloaded, match="overloaded .HTTP 400 BAD_REQUEST. on the lookup of run r1"):
        RestClient(srv.uri).get_run("r1")


def test_4xx_is_refused_in_one_line_naming_the_call(fake):
    srv = fake(
        [
            (
                400,
                {
                    "error_code": "INVALID_PARAMETER_VALUE",
                    "message": "Changing param values is not allowed.\nmore",
                },
                {},
            )
        ]
    )
    with pytest.raises(Refused) as e:
        RestClient(srv.uri).log_batch("r1", params={"lr": 0.1})
    assert str(e.value) == (
        f"MLflow server {srv.uri} refused log-batch to run r1 (0 metrics, 1 params, 0 tags) "
        "(HTTP 400 INVALID_PARAMETER_VALUE): Changing param values is not allowed."
    )
    assert not e.value.retryable


def test_other_5xx_and_non_json_answers(fake):
    srv = fake(
        [(500, {"error_code": "INTERNAL_ERROR", "message": "db gone"}, {}), (200, b"<html>login</html>", {})]
    )
    c = RestClient(srv.uri)
    with pytest.raises(ServerError, match="failed the lookup of run r1 .HTTP 500 INTERNAL_ERROR.: db gone"):
        c.get_run("r1")
    with pytest.raises(ServerError, match="other than JSON"):
        c.get_run("r1")


def test_no_server_is_unreachable_quickly():
    from support.server import free_port

    c = RestClient(f"http://127.0.0.1:{free_port()}", timeout_s=2)
    with pytest.raises(Unreachable) as e:
        c.get_run("r1")
    assert isinstance(e.value, ConnectionError) and "did not answer the lookup of run r1" in str(e.value)
    assert not c.health()


def test_missing_experiment_is_none_not_an_error(fake):
    srv = fake([(404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "Could not find experiment"}, {})])
    assert RestClient(srv.uri).get_experiment_by_name("nope") is None
    method, path, _, _ = srv.seen[0]
    assert method == "GET" and path == "/api/2.0/mlflow/experiments/get-by-name?experiment_name=nope"


def test_bad_uris_and_plugin_auth_are_refused_up_front(monkeypatch):
    with pytest.raises(ValueError, match="not an MLflow server URI"):
        RestClient("sqlite:///x.db")
    monkeypatch.setenv("MLFLOW_TRACKING_AUTH", "my-plugin")
    assert "MLFLOW_TRACKING_AUTH" in rest.needs_mlflow()
    with pytest.raises(ValueError, match="needs MLflow's own client"):
        RestClient("http://127.0.0.1:1")


# -- auth and TLS ----------------------------------------------------------------------------------


def test_basic_auth_from_env_wins_over_token(fake, monkeypatch):
    srv = fake()
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ana")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok")
    monkeypatch.setenv("MLFLOW_WORKSPACE", "lab")
    RestClient(srv.uri).set_tag("r", "k", "v")
    headers = srv.seen[0][2]
    assert headers["Authorization"] == "Basic YW5hOnMzY3JldA=="  # base64("ana:s3cret")
    assert headers["X-MLFLOW-WORKSPACE"] == "lab"
    assert headers["User-Agent"].startswith("mlflow-wattsup/")


def test_token_and_credentials_file(fake, monkeypatch, tmp_path):
    srv = fake()
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "tok")
    RestClient(srv.uri).set_tag("r", "k", "v")
    assert srv.seen[-1][2]["Authorization"] == "Bearer tok"
    cred = tmp_path / "home" / ".mlflow" / "credentials"
    cred.parent.mkdir(parents=True)
    cred.write_text("[mlflow]\nmlflow_tracking_username = bob\nmlflow_tracking_password = pw\n")
    RestClient(srv.uri).set_tag("r", "k", "v")
    assert srv.seen[-1][2]["Authorization"] == "Basic Ym9iOnB3"  # the file's pair beats the token
    assert rest.context_tags()[rest.USER] == "bob"  # and MLflow takes the user name from it too


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("no openssl to make a test certificate")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(d / "cert.pem"), str(d / "key.pem")


def test_tls_verifies_by_default_and_honours_mlflows_variables(fake, cert, monkeypatch):
    srv = fake([(200, {"run": {"info": {"run_id": "r"}}}, {})] * 2, tls=cert)
    with pytest.raises(Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
        RestClient(srv.uri).get_run("r")  # self-signed: refused unless told
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", cert[0])
    assert RestClient(srv.uri).get_run("r")["info"]["run_id"] == "r"
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "true")
    with pytest.raises(ValueError, match="both set"):
        RestClient(srv.uri)
    monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH")
    assert RestClient(srv.uri).get_run("r")["info"]["run_id"] == "r"
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "yes please")
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_INSECURE_TLS"):
        RestClient(srv.uri)


# -- batching --------------------------------------------------------------------------------------


def test_log_batch_splits_at_mlflows_limits_in_order(fake):
    srv = fake()
    c = RestClient(srv.uri)
    metrics = [Metric("power_w", float(i), 1000 + i, i) for i in range(2500)]
    params = {f"p{i}": "x" * 7000 for i in range(150)}  # cut to 6,000: 100 of them would be 600 kB
    tags = {f"t{i}": "y" * 9000 for i in range(120)}  # cut to 8,000: 120 would be ~960 kB
    calls = c.log_batch("run1", metrics, params, tags)
    bodies = [b for _, path, _, b in srv.seen]
    assert calls == len(bodies) == c.requests
    for b in bodies:
        assert len(b["metrics"]) <= 1000 and len(b["params"]) <= 100 and len(b["tags"]) <= 100
        assert len(b["metrics"]) + len(b["params"]) + len(b["tags"]) <= 1000
        assert len(json.dumps(b).encode()) <= 1_000_000
        assert b["run_id"] == "run1"
    sent_m = [m for b in bodies for m in b["metrics"]]
    assert [m["step"] for m in sent_m] == list(range(2500))  # every value once, in order
    sent_p = [p for b in bodies for p in b["params"]]
    assert [p["key"] for p in sent_p] == list(params) and {len(p["value"]) for p in sent_p} == {6000}
    sent_t = [t for b in bodies for t in b["tags"]]
    assert [t["key"] for t in sent_t] == list(tags) and {len(t["value"]) for t in sent_t} == {8000}
    assert calls <= 8  # params go 2 x 100 at most... never one call per value


def test_non_finite_metrics_are_sent_as_mlflow_spells_them(fake):
    srv = fake()
    RestClient(srv.uri).log_batch("r", [Metric("a", float("nan"), 1), Metric("b", float("inf"), 1, 2)])
    assert [m["value"] for m in srv.seen[0][3]["metrics"]] == ["NaN", "Infinity"]


def test_a_key_mlflow_would_refuse_is_refused_before_any_request(fake):
    srv = fake()
    c = RestClient(srv.uri)
    with pytest.raises(Refused, match="1 to 250 characters .this one has 300"):
        c.log_batch("r", [Metric("k" * 300, 1.0, 1)])
    assert c.requests == 0 and srv.seen == []


def test_requests_take_tokens_from_the_limiter(fake):
    srv = fake()
    now = [0.0]
    bucket = TokenBucket(60, burst=2, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    c = RestClient(srv.uri, limiter=bucket)
    for _ in range(5):
        c.set_tag("r", "k", "v")
    assert len(srv.seen) == 5 and now[0] == pytest.approx(3.0)  # 2 at once, then one a second


def test_search_runs_follows_page_tokens(fake):
    srv = fake(
        [
            (
                200,
                {"runs": [{"info": {"run_id": "a"}}, {"info": {"run_id": "b"}}], "next_page_token": "T1"},
                {},
            ),
            (200, {"runs": [{"info": {"run_id": "c"}}]}, {}),
        ]
    )
    ids = [r["info"]["run_id"] for r in RestClient(srv.uri).search_runs(["1"], "tags.x = 'y'", page_size=2)]
    assert ids == ["a", "b", "c"]
    first, second = srv.seen[0][3], srv.seen[1][3]
    assert first["max_results"] == 2 and first["filter"] == "tags.x = 'y'" and "page_token" not in first
    assert second["page_token"] == "T1"


def test_a_closed_keep_alive_connection_is_retried_once_but_never_a_create(fake):
    srv = fake(
        [(200, {}, {"X-Drop-Silently": "1"}), (200, {}, {}), (200, {"run": {"info": {"run_id": "n"}}}, {})]
    )
    c = RestClient(srv.uri)
    c.set_tag("r", "k", "v")  # the server drops the kept-alive connection after answering
    c.set_tag("r", "k", "v")  # sent again on a new connection
    assert len(srv.seen) == 2 and c.requests == 3
    before = c._conn
    assert c.create_run("1", {"mlflow.user": "me"})["info"]["run_id"] == "n"
    assert c._conn is not before  # a create always goes on a fresh connection, and is sent once
    assert srv.seen[-1][1] == "/api/2.0/mlflow/runs/create" and srv.seen[-1][3]["user_id"] == "me"


# -- context tags ----------------------------------------------------------------------------------


def _git(cwd, *args):
    env = dict(
        os.environ,
        GIT_AUTHOR_NAME="t",
        GIT_AUTHOR_EMAIL="t@x",
        GIT_COMMITTER_NAME="t",
        GIT_COMMITTER_EMAIL="t@x",
    )
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, env=env)


def _mlflow_context(monkeypatch, main: str) -> dict:
    """What MLflow's registered context providers resolve for ``sys.argv[0] = main`` (ours excluded)."""
    from mlflow.tracking.context import registry

    from mlflow_wattsup.run.plugin import WattsupRunContextProvider

    monkeypatch.setattr(sys, "argv", [main])
    for provider in registry._run_context_provider_registry:
        if hasattr(provider, "_cache"):
            provider._cache.clear()  # the git provider caches per process
    return registry.resolve_tags(ignore=[WattsupRunContextProvider])


@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    root = tmp_path_factory.mktemp("repos")
    main = root / "main"
    main.mkdir()
    _git(main, "init", "-q", "-b", "trunk")
    _git(main, "remote", "add", "origin", "https://user:token@example.org/lab/pipe.git")
    _git(main, "remote", "add", "backup", "git@example.org:lab/pipe.git")
    (main / ".gitignore").write_text("scratch/\n")
    for d in ("src", "scratch"):
        (main / d).mkdir()
        (main / d / "job.py").write_text("print(1)\n")
    _git(main, "add", ".gitignore", "src")
    _git(main, "commit", "-q", "-m", "one")
    packed = root / "packed"
    _git(root, "clone", "-q", str(main), str(packed))
    _git(packed, "pack-refs", "--all")
    detached = root / "detached"
    _git(root, "clone", "-q", str(main), str(detached))
    _git(detached, "checkout", "-q", "--detach")
    worktree = root / "wt"
    _git(main, "worktree", "add", "-q", "-b", "feature", str(worktree))
    empty = root / "empty"
    empty.mkdir()
    _git(empty, "init", "-q")
    (empty / "job.py").write_text("")
    plain = root / "plain"
    plain.mkdir()
    (plain / "job.py").write_text("")
    return {
        "branch, remotes with credentials": main / "src" / "job.py",
        "ignored directory": main / "scratch" / "job.py",
        "packed refs": packed / "src" / "job.py",
        "detached head": detached / "src" / "job.py",
        "worktree": worktree / "src" / "job.py",
        "no commit yet": empty / "job.py",
        "not a repository": plain / "job.py",
        "not a file": "-c",
    }


CASES = [
    "branch, remotes with credentials",
    "ignored directory",
    "packed refs",
    "detached head",
    "worktree",
    "no commit yet",
    "not a repository",
    "not a file",
]


@pytest.mark.parametrize("case", CASES)
def test_context_tags_are_what_mlflow_resolves(case, repos, monkeypatch):
    main = str(repos[case])
    want = _mlflow_context(monkeypatch, main)
    got = rest.context_tags()
    assert got == want
    if case == "branch, remotes with credentials":
        assert got[rest.GIT_REPO_URL] == "https://example.org/lab/pipe.git"
        assert got[rest.GIT_BRANCH] == "trunk" and len(got[rest.GIT_COMMIT]) == 40
    if case in ("ignored directory", "not a repository", "not a file", "no commit yet"):
        assert rest.GIT_COMMIT not in got


def test_context_tags_user_run_context_and_extra(monkeypatch, repos):
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ana")
    monkeypatch.setenv("MLFLOW_RUN_CONTEXT", json.dumps({"ci.job": "42", "mlflow.source.type": "JOB"}))
    want = _mlflow_context(monkeypatch, str(repos["not a repository"]))
    got = rest.context_tags(extra={"hw": "x"})
    assert got == {**want, "hw": "x"}
    assert got[rest.USER] == "ana" and got["ci.job"] == "42" and got[rest.SOURCE_TYPE] == "JOB"
