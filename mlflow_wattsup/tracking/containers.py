"""Containers the measured command starts, attributed to its run through their cgroups.

``docker run`` does not run the container: it asks a daemon, whose shim starts the container's
processes, so they are not in the command's process tree and a tree walk misses them (measured:
0.056 CPU-s logged for a 2 CPU-s container). The kernel still counts them, in the cgroup the
runtime made for the container (:mod:`~mlflow_wattsup.meters.cgroup`). This module finds that
cgroup and attaches it to the run's :class:`~mlflow_wattsup.meters.proctree.ProcessTreeMeter`:

1. **Which container.** The command itself being ``docker|podman|nerdctl [global options] run``
   (or ``container run``), ``--cidfile`` is added to it (the runtime writes the container's id
   there when it creates it); a user's own ``--cidfile`` is read instead. Runtime clients started
   deeper in the tree (a script's ``docker run``) are found in the tree's processes at each sample
   and resolved by their ``--cidfile``, their ``--name``, or else the one container created during
   the client's life from the same image with the same command line; more than one such container
   is not guessed between.
2. **Its cgroup.** ``<runtime> inspect`` (the same client binary, global options and environment:
   the same daemon) gives the container's first process; ``/proc/PID/cgroup`` must name a cgroup
   holding the container's id, else the daemon's processes are not on this machine (a remote
   ``DOCKER_HOST``, a daemon in another PID namespace) and the container cannot be attributed.
3. **Counted once.** A container whose processes are already in the tree (rootful Podman: conmon
   is adopted by ``wattsup run`` as subreaper) is counted by the tree (method ``process-tree``);
   any other (Docker) by its cgroup (``cgroup-v1``/``cgroup-v2``): its whole CPU time since it was
   created, and its resident memory, while its processes on a GPU are matched by cgroup.
4. **Read before it is gone.** The runtime removes the cgroup when the container stops (Docker
   20.10: ~10 ms after the container's first process exits, with or without ``--rm``): a pidfd on
   that process wakes this module's thread to read the final figures at once.
5. **Stopped with the run.** A forwarded SIGINT/SIGTERM/SIGHUP/SIGQUIT also runs
   ``<runtime> stop`` for every container of the run still running (the client alone proxies the
   signal to the container's PID 1, which ignores it unless it handles it, or, with
   ``--sig-proxy=false``, exits and leaves the container running), and the run waits for them.

What cannot be resolved is said once (on the terminal, then in the run's warnings: tag
``wattsup.warning.container`` and the description), next to the machine-level figure that covers
it. The CPU time of the runtime's daemons themselves (image unpacking, networking) is not
attributed.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from mlflow_wattsup.meters.cgroup import CgroupMeter, CgroupUnavailable, locate

RUNTIMES = ("docker", "podman", "nerdctl")
#: global options (before the subcommand) that take no value; every other one takes one unless
#: written ``--opt=value``
_SWITCHES = {
    "docker": {"-D", "--debug", "--tls", "--tlsverify", "-v", "--version", "-h", "--help"},
    "podman": {
        "-h",
        "--help",
        "-v",
        "--version",
        "-r",
        "--remote",
        "--syslog",
        "--noout",
        "--transient-store",
    },
    "nerdctl": {
        "--debug",
        "--debug-full",
        "--insecure-registry",
        "--experimental",
        "-h",
        "--help",
        "-v",
        "--version",
    },
}
#: where each client reads its daemon's address (for the warning when it is not this machine)
_HOST_ENV = {"docker": ("DOCKER_HOST", "DOCKER_CONTEXT"), "podman": ("CONTAINER_HOST",), "nerdctl": ()}
_HOST_OPTS = ("-H", "--host", "--url", "--connection", "-c", "--context", "-a", "--address")
INSPECT_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 300.0


# -- command lines -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Client:
    """A container runtime's command line: ``<cli> [global options] <command> [args]``."""

    runtime: str
    argv: tuple[str, ...]
    global_opts: tuple[str, ...]
    command: str  # "run", "create", "compose run", ...; "" when there is none
    args: tuple[str, ...]

    @property
    def starts_container(self) -> bool:
        return self.command == "run"

    def option(self, name: str) -> str | None:
        """The value of ``--name value`` / ``--name=value`` among the command's arguments."""
        for i, a in enumerate(self.args):
            if a == name and i + 1 < len(self.args):
                return self.args[i + 1]
            if a.startswith(name + "="):
                return a[len(name) + 1 :]
        return None

    def host(self, env: dict[str, str]) -> str | None:
        """The daemon the client talks to, when it was told one (option or environment)."""
        for i, a in enumerate(self.global_opts):
            for o in _HOST_OPTS:
                if a == o and i + 1 < len(self.global_opts):
                    return f"{o} {self.global_opts[i + 1]}"
                if a.startswith(o + "="):
                    return a
        for var in _HOST_ENV.get(self.runtime, ()):
            if env.get(var):
                return f"{var}={env[var]}"
        return None


def parse_client(argv: Sequence[str]) -> Client | None:
    """``argv`` as a container runtime's client command line, or None if it is not one."""
    if not argv:
        return None
    name = os.path.basename(argv[0])
    if name == "docker-compose":  # compose v1, or the v2 plugin as the CLI starts it (`compose ...`)
        rest = list(argv[2:] if argv[1:2] == ["compose"] else argv[1:])
        return Client("docker", tuple(argv), (), _compose_command(rest), tuple(rest))
    runtime = name[: -len("-remote")] if name.endswith("-remote") else name
    if runtime not in RUNTIMES:
        return None
    switches = _SWITCHES[runtime]
    i = 1
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        a = argv[i]
        i += 1 if ("=" in a or a in switches or a == "--") else 2
        if a == "--":
            break
    glob = tuple(argv[1:i])
    if name.endswith("-remote"):
        glob = ("--remote", *glob)
    rest = list(argv[i:])
    if not rest:
        return Client(runtime, tuple(argv), glob, "", ())
    cmd, rest = rest[0], rest[1:]
    if cmd in ("container", "compose") and rest:
        if cmd == "container":
            cmd, rest = rest[0], rest[1:]
        else:
            cmd = _compose_command(rest)
    return Client(runtime, tuple(argv), glob, cmd, tuple(rest))


_COMPOSE_STARTS = ("run", "up", "start", "create", "restart")


def _compose_command(rest: Sequence[str]) -> str:
    """``compose <subcommand>`` of a compose command line (its options may take values)."""
    return f"compose {next((r for r in rest if r in _COMPOSE_STARTS), '')}".strip()


def with_cidfile(argv: Sequence[str], path: str) -> list[str] | None:
    """``argv`` with ``--cidfile path`` added after its ``run``; None when it is not a container
    run or already names a cidfile."""
    c = parse_client(argv)
    if c is None or not c.starts_container or c.option("--cidfile") is not None:
        return None
    at = len(argv) - len(c.args)
    return [*argv[:at], "--cidfile", path, *argv[at:]]


# -- what is reported ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerUse:
    """A container attributed to the run: ``method`` is ``cgroup-v1``/``cgroup-v2`` (its cgroup's
    CPU time and memory were added to the run's) or ``process-tree`` (its processes were the run's
    own descendants, already counted). ``cpu_s``: its cgroup's CPU seconds at the end."""

    runtime: str
    container_id: str
    method: str
    cpu_s: float

    @property
    def label(self) -> str:
        return f"{self.runtime}:{self.container_id[:12]}"


# -- the watch ------------------------------------------------------------------------------------


@dataclass
class _Container:
    client: Client
    cli: str
    env: dict[str, str]
    client_pid: int | None = None
    cidfile: str | None = None
    name: str | None = None
    since_wall: float = 0.0  # the client's start (epoch s)
    cid: str | None = None
    # pending -> live -> ended; or unresolved; or unseen (gone before it was read: said at the end)
    state: str = "pending"
    next_try: float = 0.0
    tries: int = 0
    init_pid: int | None = None
    pidfd: int | None = None
    meter: CgroupMeter | None = None
    method: str = ""
    stop_timeout_s: float = 10.0
    stopper: threading.Thread | None = None


def _say(message: str) -> None:
    print(f"wattsup: warning: {message}", file=sys.stderr, flush=True)


class ContainerWatch:
    """Finds the run's containers and attaches their cgroups to ``tree`` (see the module doc).

    ``tree``: the run's :class:`ProcessTreeMeter`. ``say``: how a warning reaches the terminal
    (once each). ``prefer``: the cgroup version to read where both exist (tests). ``proc_root``,
    ``mountinfo``: where ``/proc`` and the mount table are.
    """

    def __init__(
        self,
        tree,
        *,
        say: Callable[[str], None] | None = _say,
        prefer: str | None = None,
        proc_root: str = "/proc",
        mountinfo: str = "/proc/self/mountinfo",
    ):
        self.tree = tree
        self.say = say
        self.prefer = prefer
        self.proc_root = proc_root
        self.mountinfo = mountinfo
        self._lock = threading.RLock()
        self._items: list[_Container] = []
        self._seen: set[int] = set()  # the tree's processes at the last look
        self._claimed: set[str] = set()
        self._warnings: list[str] = []
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._closing = False
        self._signalled = False
        self._command_pid: int | None = None
        self._tmp: str | None = None

    # -- what the run asks -----------------------------------------------------------------

    def expect(self, cmd: Sequence[str], env: dict[str, str] | None = None) -> list[str]:
        """The command to start: ``cmd`` with a ``--cidfile`` added when it is a container run
        (then watched from its first moment)."""
        client = parse_client(cmd)
        if client is None or not client.starts_container:
            return list(cmd)
        env = dict(os.environ if env is None else env)
        cli = shutil.which(cmd[0], path=env.get("PATH")) or cmd[0]
        user_cidfile = client.option("--cidfile")
        if user_cidfile is not None:
            path, out = os.path.abspath(user_cidfile), list(cmd)
        else:
            import tempfile

            self._tmp = self._tmp or tempfile.mkdtemp(prefix="wattsup-cid-")
            path = os.path.join(self._tmp, f"{len(self._items)}.cid")
            out = with_cidfile(cmd, path) or list(cmd)
        c = _Container(client, cli, env, cidfile=path, since_wall=time.time())
        self._add(c)
        return out

    def spawned(self, pid: int) -> None:
        """The command started as ``pid`` (its own ``docker run``, if any, is already watched)."""
        self._command_pid = pid
        with self._lock:
            for c in self._items:
                if c.client_pid is None:
                    c.client_pid = pid
            self._seen.add(pid)

    def observe(self, pids: Sequence[int]) -> None:
        """Look at the tree's processes not there at the last look: a container runtime client
        among them is watched. Cheap (one ``cmdline`` read per new process, nothing for the
        others); called at every sample."""
        seen, self._seen = self._seen, set(pids)  # only the live ones are kept: the tree's size
        for pid in pids:
            if pid in seen:
                continue
            argv = _cmdline(pid, self.proc_root)
            client = parse_client(argv)
            if client is None or not (client.starts_container or client.command.startswith("compose")):
                continue
            if client.command.startswith("compose"):
                if client.command != "compose":
                    self._warn(
                        f"`{' '.join(argv[:4])}` (process {pid}) starts containers that are not attributed "
                        "(compose is not supported): the run's figures do not include them; "
                        "machine_energy_kwh covers the whole machine over the same time"
                    )
                continue
            env = _environ(pid, self.proc_root) or dict(os.environ)
            cwd = _cwd(pid, self.proc_root)
            cidfile = client.option("--cidfile")
            if cidfile and cwd and not os.path.isabs(cidfile):
                cidfile = os.path.join(cwd, cidfile)
            with self._lock:
                if any(c.client_pid == pid or (cidfile and c.cidfile == cidfile) for c in self._items):
                    continue  # the command itself, watched since it started
            cli = _exe(pid, self.proc_root) or shutil.which(argv[0], path=env.get("PATH")) or argv[0]
            c = _Container(
                client,
                cli,
                env,
                client_pid=pid,
                cidfile=cidfile,
                name=client.option("--name"),
                since_wall=_start_wall(pid, self.proc_root) or time.time(),
            )
            self._add(c)

    def on_signal(self, signum: int) -> None:
        """The run was told to stop (SIGINT/SIGTERM/...): stop its containers too (in threads;
        safe to call from a signal handler)."""
        self._signalled = True
        with self._lock:
            items = [c for c in self._items if c.state in ("pending", "live")]
        for c in items:
            self._stop(c)
        self._wake()

    def settle(self, signalled: bool, exit_code: int | None = None, patience_s: float = 5.0) -> None:
        """The command has exited (with ``exit_code``): resolve what is still pending (briefly),
        and when the run was stopped by a signal, wait for its containers to end (their runtime
        stops them). A run's own ``docker run`` that exited 125-127 never ran its container
        (Docker's codes for its own errors): nothing of it is missing."""
        deadline = time.monotonic() + patience_s
        while time.monotonic() < deadline:
            with self._lock:
                pending = [c for c in self._items if c.state == "pending" and (c.cid or self._alive(c))]
            if not pending:
                break
            self._wake()
            time.sleep(0.05)
        if signalled or self._signalled:
            with self._lock:
                live = [c for c in self._items if c.state in ("live", "pending") and c.cid]
            for c in live:
                self._stop(c)
            for c in live:
                self._wait_ended(c, c.stop_timeout_s + 30.0)
        with self._lock:
            unseen = [c for c in self._items if c.state == "unseen"]
        for c in unseen:
            direct = c.client_pid is not None and c.client_pid == self._command_pid
            if direct and exit_code in (125, 126, 127):
                with self._lock:
                    c.state = "ended"
            else:
                self._warn_unseen(c)
        with self._lock:
            still = [c for c in self._items if c.state == "live"]
        for c in still:
            self._warn(
                f"container {c.client.runtime}:{c.cid[:12]} was still running when the run's command ended "
                "(started detached?): its CPU time and memory are counted up to the end of the run only"
            )

    def close(self) -> None:
        """Stop watching: final readings, meters closed (their last figures stay)."""
        with self._lock:
            self._closing = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            items = list(self._items)
        for c in items:
            if c.state == "unseen":
                self._warn_unseen(c)
            if c.meter is not None:
                c.meter.read()
                c.meter.close()
            if c.pidfd is not None:
                os.close(c.pidfd)
                c.pidfd = None
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        if self._tmp:
            shutil.rmtree(self._tmp, ignore_errors=True)

    @property
    def uses(self) -> tuple[ContainerUse, ...]:
        with self._lock:
            return tuple(
                ContainerUse(c.client.runtime, c.cid, c.method, c.meter.read().cpu_s if c.meter else 0.0)
                for c in self._items
                if c.cid and c.method
            )

    @property
    def warnings(self) -> list[str]:
        with self._lock:
            return list(self._warnings)

    # -- the thread ---------------------------------------------------------------------------

    def _add(self, c: _Container) -> None:
        with self._lock:
            self._items.append(c)
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="wattsup-containers", daemon=True)
                self._thread.start()
        self._wake()

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    def _loop(self) -> None:
        while True:
            with self._lock:
                if self._closing:
                    return
                items = list(self._items)
            fds = {c.pidfd: c for c in items if c.pidfd is not None}
            pending = [c for c in items if c.state == "pending"]
            polling = [c for c in items if c.state == "live" and c.pidfd is None]
            timeout_s = None  # nothing to do until woken (a new client, a signal, closing)
            if pending:
                timeout_s = max(0.0, min(c.next_try for c in pending) - time.monotonic())
            if polling:  # no pidfd here: read the cgroup often enough to catch its end
                timeout_s = min(timeout_s if timeout_s is not None else 0.05, 0.05)
            poller = select.poll()
            for fd in (self._wake_r, *fds):
                poller.register(fd, select.POLLIN)
            try:
                ready = {fd for fd, _ in poller.poll(None if timeout_s is None else timeout_s * 1000)}
            except OSError:
                ready = set()
            if self._wake_r in ready:
                try:
                    os.read(self._wake_r, 4096)
                except OSError:
                    pass
            for fd in ready & set(fds):
                self._ended(fds[fd])
            for c in polling:
                if c.meter is not None and c.meter.read().gone:
                    self._ended(c)
            now = time.monotonic()
            for c in pending:
                if c.next_try <= now:
                    try:
                        self._advance(c)
                    except Exception as exc:  # never let the watch die silently
                        self._unresolved(c, f"{type(exc).__name__}: {exc}")

    def _ended(self, c: _Container) -> None:
        """The container's first process exited: read its cgroup now, before it is removed."""
        if c.meter is not None:
            c.meter.read()
        if c.pidfd is not None:
            os.close(c.pidfd)
            c.pidfd = None
        with self._lock:
            c.state = "ended"

    def _retry(self, c: _Container) -> None:
        c.tries += 1
        c.next_try = time.monotonic() + min(1.0, 0.02 * 1.5**c.tries)

    def _advance(self, c: _Container) -> None:
        if c.cid is None:
            c.cid = self._find_id(c)
            if c.cid is None:
                if c.state == "pending":
                    self._retry(c)
                return
        out, err = self._cli(c, ["container", "inspect", c.cid])
        if err is not None:
            if _no_such(err):
                self._never_seen(c)  # removed already (--rm)
            elif not self._alive(c) or c.tries >= 10:
                self._unresolved(c, err)
            else:
                self._retry(c)
            return
        info = _json_list(out)
        if not info:
            self._never_seen(c)
            return
        d = info[0]
        c.cid = d.get("Id") or c.cid
        state = d.get("State") or {}
        pid = int(state.get("Pid") or 0)
        stop = (d.get("Config") or {}).get("StopTimeout")
        if isinstance(stop, int) and stop >= 0:
            c.stop_timeout_s = float(stop)
        if pid > 0:
            self._attach(c, pid)
        elif state.get("Status") in ("exited", "dead", "removing", "stopped") or not self._alive(c):
            self._never_seen(c, started=_started(state))
        else:
            self._retry(c)  # created, not started yet

    def _attach(self, c: _Container, pid: int) -> None:
        pidfd = None
        try:
            pidfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pidfd = None
        try:
            loc = locate(pid, proc_root=self.proc_root, mountinfo=self.mountinfo, prefer=self.prefer)
        except CgroupUnavailable as exc:
            if pidfd is not None:
                os.close(pidfd)
            self._unresolved(c, str(exc))
            return
        mine = tuple(sorted(p for p in loc.paths if c.cid in p))
        if c.cid not in loc.path:
            if pidfd is not None:
                os.close(pidfd)
            where = c.client.host(c.env)
            self._unresolved(
                c,
                f"the daemon says its process is PID {pid}, which is not in a cgroup of this container here: "
                + (f"{where} is not this machine, or " if where else "")
                + "the daemon runs in another PID namespace",
            )
            return
        meter = CgroupMeter(loc)
        with self._lock:
            c.init_pid, c.pidfd, c.meter = pid, pidfd, meter
            self._claimed.add(c.cid)
            if self._in_tree(pid):
                c.method = "process-tree"  # its processes are ours already: the tree counts them
            else:
                c.method = f"cgroup-{loc.version}"
                self.tree.attach(f"{c.client.runtime}:{c.cid}", meter, mine)
            c.state = "live"
            if self._signalled:
                self._stop(c)

    def _never_seen(self, c: _Container, started: bool | None = None) -> None:
        """The container is gone (or never ran) before its cgroup was read. ``started``: whether
        the runtime says it started (None: it cannot say any more, e.g. removed by ``--rm``); the
        warning waits for the client's exit code when that is unknown."""
        with self._lock:
            c.state = "ended" if started is False else "unseen"
        if started and c.cid is not None:
            self._warn_unseen(c)

    def _warn_unseen(self, c: _Container) -> None:
        with self._lock:
            c.state = "ended"
        self._warn(
            f"container {c.client.runtime}:{c.cid[:12]} ended before its cgroup could be read (it ran for "
            "well under a second): its CPU time is not in the run's figures"
        )

    def _unresolved(self, c: _Container, why: str) -> None:
        with self._lock:
            if c.state == "unresolved":
                return
            c.state = "unresolved"
        what = (
            f"container {c.client.runtime}:{c.cid[:12]}"
            if c.cid
            else f"the container of `{_short(c.client.argv)}`"
        )
        self._warn(
            f"{what} cannot be attributed ({why}): the run's energy and CPU time do not include it; "
            "machine_energy_kwh is the whole machine over the same time"
        )

    def _warn(self, message: str) -> None:
        with self._lock:
            if message in self._warnings:
                return
            self._warnings.append(message)
        if self.say is not None:
            self.say(message)

    # -- resolving -----------------------------------------------------------------------------

    def _find_id(self, c: _Container) -> str | None:
        """The container's id once known: from the cidfile, the name, or the one matching
        container; None for now (or for good: ``c.state`` then says so)."""
        alive = self._alive(c)
        if c.cidfile:
            try:
                with open(c.cidfile) as f:
                    cid = f.read().strip()
            except OSError:
                cid = ""
            if cid:
                return cid
            if not alive:
                with self._lock:
                    c.state = "ended"  # the runtime never created it (no image, bad flags): nothing ran
            return None
        if c.name:
            out, err = self._cli(c, ["container", "inspect", c.name])
            info = _json_list(out) if err is None else []
            if info and _matches(c.client, info[0]):
                return info[0].get("Id")
        found = self._match_running(c)
        if found is None and not alive and c.state == "pending":
            self._unresolved(
                c,
                f"process {c.client_pid} ended before its container could be found: a container of well "
                "under a second, or one that never started",
            )
        return found

    def _match_running(self, c: _Container) -> str | None:
        out, err = self._cli(c, ["ps", "--no-trunc", "-q"])
        if err is not None:
            if c.tries >= 10 or not self._alive(c):
                self._unresolved(c, err)
            return None
        with self._lock:
            cands = [i for i in out.split() if i not in self._claimed]
        if not cands:
            return None
        out, err = self._cli(c, ["container", "inspect", *cands])
        hits = [
            d
            for d in (_json_list(out) if err is None else [])
            if _matches(c.client, d) and _created_wall(d.get("Created")) >= c.since_wall - 2.0
        ]
        if len(hits) == 1:
            return hits[0].get("Id")
        if len(hits) > 1:
            self._unresolved(
                c,
                f"{len(hits)} containers started at the same time match its image and command; give it "
                "--name or --cidfile",
            )
        return None

    def _cli(self, c: _Container, args: list[str]) -> tuple[str, str | None]:
        """Run the client binary with the command's global options and environment: (stdout,
        None) or ("", the error in one line)."""
        argv = [c.cli, *c.client.global_opts, *args]
        try:
            r = subprocess.run(
                argv,
                env=c.env,
                capture_output=True,
                text=True,
                timeout=INSPECT_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return "", f"`{_short(argv)}` failed: {exc}"
        if r.returncode != 0:
            err = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
            where = c.client.host(c.env)
            return "", f"`{_short(argv)}`: {err}" + (f" ({where})" if where else "")
        return r.stdout, None

    def _alive(self, c: _Container) -> bool:
        """Whether the container's client still runs (not started yet counts as running)."""
        if c.client_pid is None:
            return True
        f = _stat(c.client_pid, self.proc_root)
        return f is not None and f[0] not in ("Z", "X")

    def _in_tree(self, pid: int) -> bool:
        """Whether ``pid`` descends from the tree's root (its processes are the tree's already)."""
        roots = {self.tree.children_of if self.tree.children_of is not None else self.tree.root_pid}
        p = pid
        for _ in range(64):
            p = _ppid(p, self.proc_root)
            if p is None or p <= 1:
                return False
            if p in roots:
                return True
        return False

    def _stop(self, c: _Container) -> None:
        """``<runtime> stop <id>`` in a thread: the container's stop signal, SIGKILL after its stop
        timeout."""
        if c.stopper is not None or not c.cid:
            return

        def work():
            try:
                subprocess.run(
                    [c.cli, *c.client.global_opts, "stop", c.cid],
                    env=c.env,
                    capture_output=True,
                    timeout=STOP_TIMEOUT_S,
                    stdin=subprocess.DEVNULL,
                )
            except (OSError, subprocess.TimeoutExpired):
                pass

        c.stopper = threading.Thread(target=work, name="wattsup-container-stop", daemon=True)
        c.stopper.start()

    def _wait_ended(self, c: _Container, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if c.state != "live" and not (c.state == "pending" and c.cid):
                    break
            self._wake()
            time.sleep(0.05)
        if c.stopper is not None:
            c.stopper.join(timeout=max(0.0, deadline - time.monotonic()))


def _started(state: dict) -> bool:
    """Whether inspect's ``State`` says the container ever started (a failed start, e.g.
    ``--gpus`` without a GPU, leaves StartedAt at the zero time and an Error)."""
    at = str(state.get("StartedAt") or "")
    return bool(at) and not at.startswith("0001-01-01") and not state.get("Error")


def _no_such(err: str) -> bool:
    return "no such" in err.lower()


def _json_list(out: str) -> list[dict]:
    try:
        data = json.loads(out or "[]")
    except ValueError:
        return []
    return [d for d in data if isinstance(d, dict)] if isinstance(data, list) else []


# -- matching a client to a container --------------------------------------------------------------


def _norm_image(ref: str) -> str:
    for p in ("docker.io/library/", "docker.io/", "localhost/"):
        if ref.startswith(p):
            ref = ref[len(p) :]
    last = ref.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        ref += ":latest"
    return ref


def _matches(client: Client, d: dict) -> bool:
    """Whether container ``d`` (inspect output) is what ``client`` asked for: its image appears
    in the client's arguments, and what follows it there ends the container's command."""
    image = (d.get("Config") or {}).get("Image") or d.get("ImageName") or ""
    if not image:
        return False
    command = [d.get("Path") or "", *(d.get("Args") or [])]
    args = list(client.args)
    want = _norm_image(image)
    for i, a in enumerate(args):
        if a.startswith("-") or _norm_image(a) != want:
            continue
        tail = args[i + 1 :]
        if not tail or command[-len(tail) :] == tail:
            return True
    return False


def _created_wall(created: str | None) -> float:
    if not created:
        return 0.0
    s = created.strip().replace("Z", "+00:00")
    if "." in s:  # nanoseconds: Python parses microseconds
        head, _, frac = s.partition(".")
        digits = frac[: len(frac) - len(frac.lstrip("0123456789"))]
        zone = frac[len(digits) :]
        s = f"{head}.{digits[:6].ljust(6, '0')}{zone}"
    try:
        return datetime.fromisoformat(s).timestamp()
    except ValueError:
        return 0.0


# -- /proc ---------------------------------------------------------------------------------------


def _short(argv: Sequence[str], n: int = 6) -> str:
    words = [os.path.basename(argv[0]) if argv else "", *argv[1:n]]
    return " ".join(words) + (" ..." if len(argv) > n else "")


def _stat(pid: int, proc_root: str) -> list[str] | None:
    try:
        with open(f"{proc_root}/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rfind(b")") + 2 :].decode().split()


def _start_time(pid: int, proc_root: str) -> str:
    f = _stat(pid, proc_root)
    return f[19] if f and len(f) > 19 else ""


def _ppid(pid: int, proc_root: str) -> int | None:
    f = _stat(pid, proc_root)
    return int(f[1]) if f else None


def _start_wall(pid: int, proc_root: str) -> float | None:
    start = _start_time(pid, proc_root)
    if not start:
        return None
    try:
        with open(f"{proc_root}/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    return btime + int(start) / os.sysconf("SC_CLK_TCK")


def _cmdline(pid: int, proc_root: str) -> list[str]:
    try:
        with open(f"{proc_root}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0")[:-1]] if raw else []


def _environ(pid: int, proc_root: str) -> dict[str, str] | None:
    try:
        with open(f"{proc_root}/{pid}/environ", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    env = {}
    for item in raw.split(b"\0"):
        k, sep, v = item.partition(b"=")
        if sep:
            env[k.decode(errors="replace")] = v.decode(errors="replace")
    return env


def _cwd(pid: int, proc_root: str) -> str | None:
    try:
        return os.readlink(f"{proc_root}/{pid}/cwd")
    except OSError:
        return None


def _exe(pid: int, proc_root: str) -> str | None:
    try:
        exe = os.readlink(f"{proc_root}/{pid}/exe")
    except OSError:
        return None
    return exe if os.path.exists(exe) else None
