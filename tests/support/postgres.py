"""A private PostgreSQL (Debian's ``postgresql``) for tests: its own data directory, port and
socket directory, started with ``initdb`` + ``pg_ctl`` (no systemd) and stopped by PID.

PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user (``runuser``),
its directory lives under ``/tmp`` (a pytest temp dir is private to root) and is owned by that user.
Authentication is ``trust`` on 127.0.0.1 and the socket only: the cluster lives as long as a test.

    pg = Postgres()
    pg.start()
    uri = pg.create_database("mlflow")   # postgresql://postgres@127.0.0.1:PORT/mlflow
    ...
    pg.stop()
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from support.server import MlflowServer, free_port

SERVER_USER = "postgres"


def bin_dir() -> Path | None:
    """Debian's versioned binaries (``/usr/lib/postgresql/N/bin``, newest first), else PATH."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"), key=lambda p: int(Path(p).parts[-3]), reverse=True
    )
    if found:
        return Path(found[0]).parent
    which = shutil.which("pg_ctl")
    return Path(which).parent if which else None


def unavailable() -> str | None:
    """Why a private PostgreSQL cannot start here (None when it can)."""
    b = bin_dir()
    if b is None or not (b / "initdb").exists():
        return "PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does it)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root without runuser: PostgreSQL refuses to run as root"
        try:
            pwd.getpwnam(SERVER_USER)
        except KeyError:
            return f"running as root and there is no {SERVER_USER!r} user to run PostgreSQL as"
    return None


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left to a non-reaping init counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class Postgres:
    """One private PostgreSQL cluster (see the module docstring)."""

    def __init__(self, port: int | None = None, max_connections: int = 300):
        self.port = port or free_port()
        self.max_connections = max_connections
        self.bin = bin_dir()
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="wattsup-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "postgres.log"
        self.pid: int | None = None
        self.user = SERVER_USER if self.as_root else pwd.getpwuid(os.geteuid()).pw_name

    def _run(self, *argv: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / argv[0]), *argv[1:]]
        if self.as_root:
            cmd = ["runuser", "-u", SERVER_USER, "--", *cmd]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=self.root)
        if r.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv[:2])} failed ({r.returncode}): {(r.stderr or r.stdout)[-2000:]}"
            )
        return r

    def start(self, timeout_s: float = 120) -> float:
        """initdb (first time), then start the server and wait until it accepts connections;
        returns the seconds it took."""
        reason = unavailable()
        if reason:
            raise RuntimeError(reason)
        t0 = time.monotonic()
        if self.as_root:
            pw = pwd.getpwnam(SERVER_USER)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
        if not (self.data / "PG_VERSION").exists():
            self._run(
                "initdb", "-D", str(self.data), "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync"
            )
        opts = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
            f"-c max_connections={self.max_connections} -c fsync=off"
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            opts,
            "-w",
            "-t",
            str(int(timeout_s)),
            "start",
        )
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        return time.monotonic() - t0

    @property
    def base_uri(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}"

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its SQLAlchemy URI (what ``mlflow server`` takes)."""
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, name)
        return f"{self.base_uri}/{name}"

    def psql(self, database: str, sql: str) -> str:
        """Run ``sql`` in ``database``; returns psql's unaligned, tuples-only output."""
        r = self._run(
            "psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", self.user, "-d", database,
            "-v", "ON_ERROR_STOP=1", "-At", "-c", sql,
        )  # fmt: skip
        return r.stdout.strip()

    def stop(self, timeout_s: float = 30) -> None:
        """Fast shutdown (SIGINT to the postmaster, by PID), SIGKILL if it lingers; then remove
        the cluster's directory."""
        if self.pid is not None and _pid_alive(self.pid):
            os.kill(self.pid, signal.SIGINT)
            deadline = time.monotonic() + timeout_s
            while _pid_alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if _pid_alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
                while _pid_alive(self.pid):
                    time.sleep(0.1)
        self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)


@contextmanager
def mlflow_on_postgres(
    workdir: Path, workers: int = 1, timeout_s: float = 180
) -> Iterator[tuple[Postgres, MlflowServer]]:
    """A private PostgreSQL with database ``mlflow`` and an ``mlflow server`` on it; both stopped
    (by PID) at the end. The server's first start creates MLflow's tables (migrations)."""
    pg = Postgres()
    try:
        pg.start()
        srv = MlflowServer(workdir, backend_store_uri=pg.create_database("mlflow"), workers=workers)
        try:
            srv.start(timeout_s=timeout_s)
            yield pg, srv
        finally:
            srv.stop()
    finally:
        pg.stop()
