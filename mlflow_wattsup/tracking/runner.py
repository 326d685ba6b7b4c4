"""Run a command as the measured process tree: no shell, its own process group, signals
forwarded, orphans adopted (subreaper), exact ``wait4`` rusage, and optional watching of its
output lines or of a log file it writes (for epoch markers and pipeline stages).

A container run (``docker run ...``, directly or deeper in the tree) is watched by the tracker's
:class:`~.containers.ContainerWatch`: ``--cidfile`` is added to the command when it is one, and a
forwarded stop signal stops the run's containers too; the run ends when they have.

Used by ``wattsup run`` and the pipeline projects (FastSurfer, FreeSurfer).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from mlflow_wattsup.meters.proctree import become_subreaper
from mlflow_wattsup.tracking.tracker import Tracker

LineHandler = Callable[[str, float], None]  # (line without newline, tracker-elapsed seconds)


class SpawnError(OSError):
    """The command could not be started; ``exit_code`` is 127 (not found) or 126."""

    def __init__(self, cmd0: str, exc: OSError):
        super().__init__(exc.errno, exc.strerror)
        self.exit_code = 127 if isinstance(exc, FileNotFoundError) else 126
        self.message = f"cannot run {cmd0!r}: {exc.strerror or exc}"


def execute(
    cmd: Sequence[str],
    tracker: Tracker,
    env: dict[str, str] | None = None,
    *,
    on_line: LineHandler | None = None,
    watch_file: str | os.PathLike | None = None,
    on_file_line: LineHandler | None = None,
    poll_s: float = 0.5,
    cpus: set[int] | None = None,
) -> tuple[int, bool]:
    """Run ``cmd`` (already-started ``tracker`` measuring our children) until it exits.

    Returns (exit code, ended by a signal); 128 + N for signal N. ``on_line`` gets each line
    of the command's stdout and stderr (which then go through a pipe and are copied on);
    ``on_file_line`` each new line of ``watch_file`` (polled every ``poll_s``, and once more at
    the end; an existing file is read from its current end: text from earlier runs is not this
    run's). ``cpus``: the CPU set the command may run on (its affinity; ours is left as it was).
    Handler errors are swallowed: watching must never break the run.
    Raises :class:`SpawnError` if the command cannot start.
    """
    become_subreaper()
    watch = getattr(tracker, "container_watch", None)
    if watch is not None:
        cmd = watch.expect(cmd, env)
    pipes = _Pipes(tracker, on_line) if on_line else None
    tail = _Tail(Path(watch_file), tracker, on_file_line, poll_s) if watch_file and on_file_line else None
    mask = os.sched_getaffinity(0) if cpus else None
    try:
        if cpus:
            os.sched_setaffinity(0, cpus)  # this thread only; the child inherits it
        pid = os.posix_spawnp(
            cmd[0],
            list(cmd),
            env if env is not None else dict(os.environ),
            setpgroup=0,
            file_actions=pipes.file_actions() if pipes else (),
        )
    except OSError as exc:
        if pipes:
            pipes.close()
        raise SpawnError(cmd[0], exc) from None
    finally:
        if mask:
            os.sched_setaffinity(0, mask)
    if watch is not None:
        watch.spawned(pid)
    if pipes:
        pipes.start()
    if tail:
        tail.start()
    try:
        code, signalled = _ChildRunner(pid, watch.on_signal if watch else None).wait(tracker)
        if watch is not None:
            watch.settle(signalled, code)
        return code, signalled
    finally:
        if pipes:
            pipes.join()
        if tail:
            tail.stop()


def _safe(handler: LineHandler, line: str, elapsed: float) -> None:
    try:
        handler(line, elapsed)
    except Exception:
        pass


class _Pipes:
    """The command's stdout/stderr through pipes, copied on byte for byte, lines to a handler."""

    def __init__(self, tracker: Tracker, handler: LineHandler):
        self.tracker = tracker
        self.handler = handler
        self._pipes = [os.pipe(), os.pipe()]
        self._threads: list[threading.Thread] = []

    def file_actions(self):
        (r1, w1), (r2, w2) = self._pipes
        return [
            (os.POSIX_SPAWN_DUP2, w1, 1),
            (os.POSIX_SPAWN_DUP2, w2, 2),
            (os.POSIX_SPAWN_CLOSE, r1),
            (os.POSIX_SPAWN_CLOSE, r2),
        ]

    def start(self) -> None:
        for (r, w), out in zip(self._pipes, (sys.stdout, sys.stderr), strict=False):
            os.close(w)
            t = threading.Thread(target=self._copy, args=(r, out), daemon=True)
            t.start()
            self._threads.append(t)

    def _copy(self, fd: int, out) -> None:
        target = getattr(out, "buffer", None)
        with os.fdopen(fd, "rb", buffering=0) as src:
            pending = b""
            while True:
                chunk = src.read(65536)
                if not chunk:
                    break
                try:
                    if target is not None:
                        target.write(chunk)
                        target.flush()
                    else:
                        out.write(chunk.decode(errors="replace"))
                        out.flush()
                except (OSError, ValueError):
                    pass  # our own output is gone (closed pipe): keep draining the command's
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    _safe(self.handler, line.decode(errors="replace").rstrip("\r"), self.tracker.elapsed_s())
            if pending:
                _safe(self.handler, pending.decode(errors="replace"), self.tracker.elapsed_s())

    def join(self) -> None:
        for t in self._threads:
            t.join(timeout=10)

    def close(self) -> None:
        for r, w in self._pipes:
            for fd in (r, w):
                try:
                    os.close(fd)
                except OSError:
                    pass


class _Tail:
    """Poll a file for appended lines (it may not exist yet, or be replaced)."""

    def __init__(self, path: Path, tracker: Tracker, handler: LineHandler, poll_s: float):
        self.path = path
        self.tracker = tracker
        self.handler = handler
        self.poll_s = poll_s
        self._pos = 0
        self._partial = b""
        self._ino = None
        try:  # appended logs (FastSurfer's deep-seg.log, recon-all.log): start at the current end
            st = path.stat()
            self._pos, self._ino = st.st_size, st.st_ino
        except OSError:
            pass
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="wattsup-tail", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def poll(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            return
        if self._ino is not None and (st.st_ino != self._ino or st.st_size < self._pos):
            self._pos, self._partial = 0, b""  # replaced or truncated: read it again
        self._ino = st.st_ino
        if st.st_size <= self._pos:
            return
        with open(self.path, "rb") as f:
            f.seek(self._pos)
            data = f.read()
        self._pos += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        now = self.tracker.elapsed_s()
        for line in lines:
            _safe(self.handler, line.decode(errors="replace").rstrip("\r"), now)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.poll()
        if self._partial:
            _safe(self.handler, self._partial.decode(errors="replace"), self.tracker.elapsed_s())
            self._partial = b""


class _ChildRunner:
    """Wait for the child (its own process group), forwarding SIGINT/SIGTERM/SIGHUP/SIGQUIT to
    the group, giving it the terminal's foreground when we had it, and reaping adopted orphans."""

    FORWARD = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)
    # A signal ignored when we started (SIGHUP under nohup; SIGINT/SIGQUIT for a shell's
    # background job) stays ignored, by us and by the command, which inherits the disposition:
    # `wattsup run -- CMD` then reacts to signals exactly as CMD alone would.

    def __init__(self, pid: int, on_signal: Callable[[int], None] | None = None):
        self.pid = pid
        self.on_signal = on_signal  # told of each forwarded signal (the run's containers stop too)
        self.signalled: int | None = None
        self._tty_fd = None
        try:
            if sys.stdin.isatty() and os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp():
                self._tty_fd = sys.stdin.fileno()
                os.tcsetpgrp(self._tty_fd, pid)
                os.killpg(pid, signal.SIGCONT)  # in case it touched the terminal before this
        except (OSError, ValueError):
            self._tty_fd = None

    def _forward(self, signum, frame) -> None:
        self.signalled = signum
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass
        if self.on_signal is not None:
            try:
                self.on_signal(signum)
            except Exception:
                pass

    def wait(self, tracker: Tracker) -> tuple[int, bool]:
        """Wait for the child; returns (exit code, whether it ended by a signal).

        Each exited child is first seen without reaping it (``waitid(WNOWAIT)``), then reaped and
        its rusage added while the tracker cannot read the tree, so a zombie's CPU time is never
        counted both from /proc and from ``wait4``.
        """
        tree = tracker.tree
        in_main = threading.current_thread() is threading.main_thread()
        forwarded = [s for s in self.FORWARD if signal.getsignal(s) is not signal.SIG_IGN]
        old = {s: signal.signal(s, self._forward) for s in forwarded} if in_main else {}
        try:
            while True:
                try:
                    info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)
                except ChildProcessError:  # our child is gone without a status: should not happen
                    return 1, bool(self.signalled)
                if info is None:
                    continue
                if info.si_pid != self.pid and _started_by_us(info.si_pid):
                    _leave_to_its_owner(info.si_pid)
                    continue
                with tracker.exclusive():
                    try:
                        pid, status, ru = os.wait4(info.si_pid, os.WNOHANG)
                    except ChildProcessError:  # reaped meanwhile by whoever started it
                        continue
                    if pid:
                        tree.add_reaped(ru.ru_utime + ru.ru_stime)
                if pid == self.pid:
                    code = os.waitstatus_to_exitcode(status)
                    if code < 0:
                        code = 128 - code
                    self._reap_orphans(tracker)
                    return code, bool(self.signalled) or os.WIFSIGNALED(status)
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            self._restore_tty()

    @staticmethod
    def _reap_orphans(tracker: Tracker) -> None:
        """Reap adopted orphans that already exited (never wait for live ones, never take a
        process one of our own threads started)."""
        while True:
            with tracker.exclusive():
                try:
                    info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
                except ChildProcessError:
                    return
                if info is None or _started_by_us(info.si_pid):
                    return
                try:
                    pid, status, ru = os.wait4(info.si_pid, os.WNOHANG)
                except ChildProcessError:
                    continue
                if pid == 0:
                    return
                tracker.tree.add_reaped(ru.ru_utime + ru.ru_stime)

    def _restore_tty(self) -> None:
        if self._tty_fd is None:
            return
        old = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        try:
            os.tcsetpgrp(self._tty_fd, os.getpgrp())
        except OSError:
            pass
        finally:
            signal.signal(signal.SIGTTOU, old)


def _started_by_us(pid: int) -> bool:
    """Whether an exited child is one a thread of ours started (importing MLflow runs `uname`
    and `git`), not the command or an orphan of its tree: ours stay in our process group, the
    command runs in its own group, and its orphans in that group or a session of their own."""
    try:
        return os.getpgid(pid) == os.getpgrp()
    except OSError:
        return False


def _leave_to_its_owner(pid: int, patience_s: float = 10.0) -> None:
    """Wait (briefly) for the thread that started ``pid`` to reap it: taking its exit status
    would make that thread's wait fail (ECHILD). After ``patience_s`` we reap it ourselves so a
    forgotten zombie cannot stall the command's own end."""
    import time

    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        time.sleep(0.005)
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return  # its owner reaped it
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def run_status(exit_code: int, signalled: bool) -> str:
    """MLflow run status for a command's outcome."""
    if signalled or exit_code >= 128:
        return "KILLED"
    return "FAILED" if exit_code != 0 else "FINISHED"
