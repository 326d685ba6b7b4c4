"""A real one-node SLURM cluster (Debian's slurmctld, slurmd, munge) in a temp folder, for tests.

Everything is private to the folder: its own munge key and socket, its own ports, state, spool,
pid and log files, so it never touches a system SLURM or another test session's cluster. Needs
root (slurmd runs jobs as their user) and the Debian packages; ``.ci/run`` installs them.
No cgroups (``proctrack/linuxproc``, ``task/none``), no slurmdbd (states from ``scontrol``, the
job completion log in ``jobcomp.txt``).

``SlurmCluster(accounting=True)`` adds SLURM's accounting: a private MariaDB server (Debian's
``mariadb-server``: its own data folder, socket and TCP port on 127.0.0.1) and ``slurmdbd`` behind
it, with ``jobacct_gather/linux`` on the node, so ``sacct`` and ``sstat`` answer. No energy plugin
(``AcctGatherEnergyType`` unset): ``ConsumedEnergy`` is 0, as on most clusters. ``.ci/run`` installs
``mariadb-server`` and ``slurmdbd``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")
INSTALL = "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"
ACCOUNTING_BINARIES = ("slurmdbd", "mariadbd", "mariadb-install-db", "mariadb", "sacct", "sstat", "sacctmgr")
ACCOUNTING_INSTALL = "apt-get install -y --no-install-recommends mariadb-server slurmdbd"


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None
    )


def unavailable(accounting: bool = False) -> str | None:
    """Why a cluster (with ``accounting``: slurmdbd and MariaDB too) cannot be started here, or None."""
    if os.name != "posix" or os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd starts jobs as their user)"
    missing = [b for b in BINARIES if _which(b) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing): {INSTALL}"
    if accounting:
        missing = [b for b in ACCOUNTING_BINARIES if _which(b) is None]
        if missing:
            return f"SLURM accounting is not installed ({', '.join(missing)} missing): {ACCOUNTING_INSTALL}"
    try:
        import pwd

        pwd.getpwnam("munge")
    except KeyError:
        return f"no 'munge' user: {INSTALL}"
    return None


def _start(cmd: list[str], env: dict | None = None) -> None:
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    if p.returncode != 0:
        msg = (p.stderr or p.stdout).strip().splitlines()
        raise RuntimeError(
            f"{Path(cmd[0]).name if cmd[0] != 'runuser' else cmd[3]} failed: {msg[-1] if msg else p.returncode}"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_resources() -> tuple[int, int]:
    out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, check=True).stdout
    fields = dict(tok.split("=", 1) for tok in out.split() if "=" in tok)
    return int(fields.get("CPUs", os.cpu_count() or 1)), int(fields.get("RealMemory", 1000))


class SlurmCluster:
    """``start()`` then ``env`` (SLURM_CONF) for sbatch & co; ``stop()`` ends the daemons by pid."""

    def __init__(self, root: str | Path | None = None, *, accounting: bool = False):
        self.root = Path(root or tempfile.mkdtemp(prefix="wattsup-slurm-"))
        self.conf = self.root / "slurm.conf"
        self.jobcomp = self.root / "jobcomp.txt"
        self.pids: dict[str, Path] = {}
        self.cpus = 1
        self.munge_dir: Path | None = None
        self.accounting = accounting
        self.db_dir: Path | None = None
        self._mariadb: subprocess.Popen | None = None

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def _munge(self) -> Path:
        # munged runs as user munge, which must traverse every folder above its socket: pytest's
        # /tmp/pytest-of-root is root-only, so munge gets a folder of its own directly in /tmp
        d = self.munge_dir = Path(tempfile.mkdtemp(prefix="wattsup-munge-"))
        shutil.chown(d, "munge", "munge")
        d.chmod(0o755)  # munged wants the socket's folder traversable by all
        key = d / "munge.key"
        key.write_bytes(os.urandom(1024))
        shutil.chown(key, "munge", "munge")
        key.chmod(0o400)
        sock = d / "munge.socket"
        _start(
            [
                "runuser",
                "-u",
                "munge",
                "--",
                _which("munged"),
                f"--socket={sock}",
                f"--key-file={key}",
                f"--pid-file={d / 'munged.pid'}",
                f"--log-file={d / 'munged.log'}",
                f"--seed-file={d / 'munged.seed'}",
            ]
        )
        self.pids["munged"] = d / "munged.pid"
        return sock

    def start(self, timeout_s: float = 30) -> float:
        """Start munged, slurmctld, slurmd; wait until the node is idle. Returns the seconds taken."""
        t0 = time.monotonic()
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir()
        sock = self._munge()
        self.cpus, mem = _node_resources()
        r = self.root
        accounting = ["AccountingStorageType=accounting_storage/none"]
        if self.accounting:
            accounting = self._accounting(sock)
        self.conf.write_text(
            "\n".join(
                [
                    "ClusterName=wattsup-test",
                    "SlurmctldHost=localhost",
                    f"SlurmctldPort={_free_port()}",
                    f"SlurmdPort={_free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    "CredType=cred/munge",
                    f"AuthInfo=socket={sock}",
                    f"StateSaveLocation={r}/state",
                    f"SlurmdSpoolDir={r}/spool",
                    f"SlurmctldPidFile={r}/slurmctld.pid",
                    f"SlurmdPidFile={r}/slurmd.pid",
                    f"SlurmctldLogFile={r}/log/slurmctld.log",
                    f"SlurmdLogFile={r}/log/slurmd.log",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "MpiDefault=none",
                    "ReturnToService=2",
                    *accounting,
                    "JobCompType=jobcomp/filetxt",
                    f"JobCompLoc={self.jobcomp}",
                    "MinJobAge=3600",
                    "KillWait=5",
                    "SchedulerParameters=batch_sched_delay=0",
                    "MaxArraySize=5001",
                    "MaxJobCount=20000",
                    f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem} State=UNKNOWN",
                    "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
                    "",
                ]
            )
        )
        env = dict(os.environ, **self.env)
        _start([_which("slurmctld"), "-f", str(self.conf)], env)
        self.pids["slurmctld"] = r / "slurmctld.pid"
        subprocess.run(
            [_which("slurmd"), "-f", str(self.conf), "-N", "localhost"],
            check=True,
            env=env,
            capture_output=True,
        )
        self.pids["slurmd"] = r / "slurmd.pid"
        while time.monotonic() - t0 < timeout_s:
            p = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env)
            if p.returncode == 0 and p.stdout.strip() == "idle":
                return time.monotonic() - t0
            time.sleep(0.2)
        raise RuntimeError(f"SLURM node not idle after {timeout_s:g} s; logs in {r / 'log'}")

    def _accounting(self, munge_socket: Path) -> list[str]:
        """Start MariaDB and slurmdbd; the slurm.conf lines that point slurmctld at them."""
        d = self.db_dir = Path(tempfile.mkdtemp(prefix="wattsup-mariadb-"))
        d.chmod(0o755)
        data, sock, port = d / "data", d / "mysqld.sock", _free_port()
        _start(
            [_which("mariadb-install-db"), "--no-defaults", f"--datadir={data}", "--user=root",
             "--auth-root-authentication-method=socket", "--skip-test-db"]
        )  # fmt: skip
        log = open(d / "mariadbd.log", "wb")
        self._mariadb = subprocess.Popen(
            [_which("mariadbd"), "--no-defaults", f"--datadir={data}", f"--socket={sock}", f"--port={port}",
             "--bind-address=127.0.0.1", f"--pid-file={d / 'mariadbd.pid'}", "--user=root",
             "--skip-name-resolve", "--innodb-buffer-pool-size=64M"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 60
        sql = "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'wattsup'; GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';"
        while True:
            p = subprocess.run(
                [_which("mariadb"), "--no-defaults", f"--socket={sock}", "-u", "root", "-e", sql],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            if p.returncode == 0:
                break
            if self._mariadb.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"MariaDB did not start: {(p.stderr or '').strip()}; log {d / 'mariadbd.log'}"
                )
            time.sleep(0.3)
        dbd_port = _free_port()
        dbd_conf = self.root / "slurmdbd.conf"  # slurmdbd reads it beside $SLURM_CONF
        dbd_conf.write_text(
            "\n".join(
                [
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={munge_socket}",
                    "DbdHost=localhost",
                    "DbdAddr=127.0.0.1",
                    f"DbdPort={dbd_port}",
                    "SlurmUser=root",
                    f"PidFile={self.root / 'slurmdbd.pid'}",
                    f"LogFile={self.root / 'log' / 'slurmdbd.log'}",
                    "StorageType=accounting_storage/mysql",
                    "StorageHost=127.0.0.1",
                    f"StoragePort={port}",
                    "StorageUser=slurm",
                    "StoragePass=wattsup",
                    "StorageLoc=slurm_acct_db",
                    "",
                ]
            )
        )
        dbd_conf.chmod(0o600)  # slurmdbd refuses a readable password file
        lines = [
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=localhost",
            f"AccountingStoragePort={dbd_port}",
            f"AccountingStoragePass={munge_socket}",  # clients reach slurmdbd through our munged
            "JobAcctGatherType=jobacct_gather/linux",
            "JobAcctGatherFrequency=1",
        ]
        # enough of slurm.conf for sacctmgr to find slurmdbd; start() writes the whole file next
        self.conf.write_text(
            "\n".join(["ClusterName=wattsup-test", "SlurmctldHost=localhost", "AuthType=auth/munge",
                       f"AuthInfo=socket={munge_socket}", *lines, ""])
        )  # fmt: skip
        env = dict(os.environ, **self.env)
        _start([_which("slurmdbd")], env)
        self.pids["slurmdbd"] = self.root / "slurmdbd.pid"
        deadline = time.monotonic() + 60
        while True:  # the cluster must exist in the database before slurmctld registers
            p = subprocess.run(
                [_which("sacctmgr"), "-i", "add", "cluster", "wattsup-test"], env=env, capture_output=True,
                text=True, timeout=30,
            )  # fmt: skip
            if p.returncode == 0 or "already exists" in (p.stdout + p.stderr):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"slurmdbd did not answer: {(p.stderr or p.stdout).strip()}")
            time.sleep(0.3)
        return lines

    def stop(self) -> None:
        """Cancel what is still queued or running, then SIGTERM each daemon by its pid file
        (slurmd, slurmctld, slurmdbd, MariaDB, munged), SIGKILL after 10 s."""
        if self.conf.exists() and self.pids.get("slurmctld"):
            env = dict(os.environ, **self.env)
            subprocess.run(["scancel", "--user", "root"], env=env, capture_output=True, timeout=30)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                q = subprocess.run(["squeue", "-h"], env=env, capture_output=True, text=True, timeout=30)
                if q.returncode != 0 or not q.stdout.strip():
                    break
                time.sleep(0.3)
        pids = []
        for name in ("slurmd", "slurmctld", "slurmdbd", "munged"):
            pid_file = self.pids.get(name)
            try:
                pid = int(pid_file.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
            except (AttributeError, OSError, ValueError, IndexError):
                continue
        deadline = time.monotonic() + 10
        for pid in pids:
            while True:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                if time.monotonic() > deadline:
                    os.kill(pid, signal.SIGKILL)
                    break
                time.sleep(0.1)
        if self._mariadb is not None:  # our own child: SIGTERM by its pid, then reap it
            self._mariadb.terminate()
            try:
                self._mariadb.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._mariadb.kill()
                self._mariadb.wait(timeout=10)
            self._mariadb = None

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        if self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)
        if self.db_dir is not None:
            shutil.rmtree(self.db_dir, ignore_errors=True)


@contextmanager
def running_cluster(
    workdir: Path, *, accounting: bool = False, set_conf: bool = True
) -> Iterator[SlurmCluster]:
    """A started cluster in ``workdir`` for a module's tests, stopped (by PID) and removed after;
    skips the tests where SLURM cannot run here (:func:`unavailable`), fails them where it is
    installed and root yet did not start. ``set_conf``: ``$SLURM_CONF`` names it meanwhile."""
    import pytest

    why = unavailable(accounting=accounting)
    if why:
        pytest.skip(why)
    c = SlurmCluster(workdir, accounting=accounting)
    try:
        c.start()
    except Exception:  # installed and root, yet it did not start: a failure, not a skip
        c.stop()
        c.cleanup()
        raise
    try:
        with pytest.MonkeyPatch.context() as mp:
            if set_conf:
                mp.setenv("SLURM_CONF", str(c.conf))
            yield c
    finally:
        c.stop()
        c.cleanup()
