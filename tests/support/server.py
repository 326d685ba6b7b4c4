"""A real `mlflow server` on 127.0.0.1 for tests that need HTTP: sqlite-backed by default, or on
any database MLflow takes (``backend_store_uri``; PostgreSQL: :mod:`support.postgres`).

Its log (``server.log`` in ``workdir``, kept across restarts) holds uvicorn's access log:
:meth:`MlflowServer.requests` reads it back, one line per request the server answered.
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: one access-log line of uvicorn: ``2026/12/05 12:15:45 INFO:     127.0.0.1:41546 - "GET /x HTTP/1.1" 200 OK``
_ACCESS = re.compile(r'^(\S+ \S+) INFO:\s+\S+ - "(\w+) (\S+) HTTP/[\d.]+" (\d{3})', re.M)


class MlflowServer:
    """``backend_store_uri``: the tracking database (default: a sqlite file in ``workdir``);
    ``workers``: uvicorn worker processes (1 unless a test studies the server's capacity)."""

    def __init__(
        self, workdir: Path, port: int | None = None, backend_store_uri: str | None = None, workers: int = 1
    ):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.backend_store_uri = backend_store_uri or f"sqlite:///{self.workdir}/server.db"
        self.workers = workers
        self.proc = None

    def start(self, timeout_s: float = 90) -> float:
        """Start and wait until /health answers; returns the seconds it took."""
        t0 = time.monotonic()
        env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true")
        log = open(self.workdir / "server.log", "ab")
        self.proc = subprocess.Popen(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                self.backend_store_uri,
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            cwd=self.workdir,
            env=env,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited: {(self.workdir / 'server.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=1) as r:
                    if r.status == 200:
                        return time.monotonic() - t0
            except OSError:
                time.sleep(0.25)
        raise RuntimeError("mlflow server did not answer /health in time")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """Kill the server at once (SIGKILL to its process group, by PID): a crash, not a shutdown."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def requests(self) -> list[tuple[str, str, str, int]]:
        """Every request answered so far, from the access log: (time, method, path, status)."""
        text = (self.workdir / "server.log").read_text(errors="replace")
        return [(t, m, p, int(code)) for t, m, p, code in _ACCESS.findall(text)]

    def down(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return False
        except OSError:
            return True
