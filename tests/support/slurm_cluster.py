"""A real one-node SLURM cluster (Debian's slurmctld, slurmd, munge) in a temp folder, for tests.

Everything is private to the folder: its own munge key and socket, its own ports, state, spool,
pid and log files, so it never touches a system SLURM or another test session's cluster. Needs
root (slurmd runs jobs as their user) and the Debian packages; ``.ci/run`` installs them.
No cgroups (``proctrack/linuxproc``, ``task/none``), no slurmdbd (states from ``scontrol``, the
job completion log in ``jobcomp.txt``).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")
INSTALL = "apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge"


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin") if (p := Path(d) / name).exists()), None
    )


def unavailable() -> str | None:
    """Why a cluster cannot be started here, or None."""
    if os.name != "posix" or os.geteuid() != 0:
        return "a local SLURM cluster needs root (slurmd starts jobs as their user)"
    missing = [b for b in BINARIES if _which(b) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing): {INSTALL}"
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

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root or tempfile.mkdtemp(prefix="wattsup-slurm-"))
        self.conf = self.root / "slurm.conf"
        self.jobcomp = self.root / "jobcomp.txt"
        self.pids: dict[str, Path] = {}
        self.cpus = 1
        self.munge_dir: Path | None = None

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
                    "AccountingStorageType=accounting_storage/none",
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

    def stop(self) -> None:
        """Cancel what is still queued or running, then SIGTERM each daemon by its pid file
        (slurmd, slurmctld, munged), SIGKILL after 10 s."""
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
        for name in ("slurmd", "slurmctld", "munged"):
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

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
        if self.munge_dir is not None:
            shutil.rmtree(self.munge_dir, ignore_errors=True)
