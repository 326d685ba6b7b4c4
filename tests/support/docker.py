"""Real container runtimes for tests: a private ``dockerd``, rootful Podman with private storage,
and images made here from local files (nothing is pulled: there is no registry).

``Dockerd`` runs Debian's ``dockerd`` (20.10) without systemd: its own ``--data-root``,
``--exec-root``, socket (``-H unix://...``) and ``--pidfile``, no iptables, no bridge (containers
run with ``--network none``); it is stopped by its PID. ``PodmanStore`` gives ``podman`` global
options for private storage (``--root``, ``--runroot``, ``--tmpdir``) with ``runc`` (``crun``
refuses this machine's hybrid cgroups) and the cgroupfs manager (no systemd).

Images: ``busybox_rootfs`` (Debian's ``busybox-static`` and its applet links), and
``fastsurfer_rootfs``: a stand-in for FastSurfer's own image, laid out as it is (``/fastsurfer``,
``Docker/entrypoint.sh`` then ``run_fastsurfer.sh``, ``/venv/bin/python3``), whose
``run_fastsurfer.sh`` is the same stub the native tests run (support/stubs/run_fastsurfer.py),
interpreted by this machine's own Python copied in with the packages the stub imports
(numpy, nibabel) and the shared libraries they load; ``freesurfer_rootfs``: the same for
FreeSurfer's image (``recon-all``, support/stubs/recon_all.py). ``.ci/run`` installs the Debian
packages.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
import time
from pathlib import Path

from support.paths import STUBS

INSTALL = "apt-get install -y --no-install-recommends docker.io podman runc busybox-static"
BUSYBOX = "/bin/busybox"
# Debian's client, not whatever else is first on PATH: the tests talk to Debian's daemon
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else (shutil.which("docker") or "docker")
PODMAN = shutil.which("podman") or "/usr/bin/podman"


def _which(name: str) -> str | None:
    return shutil.which(name) or next(
        (str(p) for d in ("/usr/sbin", "/sbin", "/usr/bin") if (p := Path(d) / name).exists()), None
    )


def docker_unavailable() -> str | None:
    """Why a private dockerd cannot run here, or None."""
    if os.name != "posix" or os.geteuid() != 0:
        return "a private dockerd needs root"
    missing = [b for b in ("dockerd", "containerd", "runc") if _which(b) is None]
    if missing or not os.path.exists(DOCKER) or not os.path.exists(BUSYBOX):
        return f"Docker is not installed ({', '.join(missing) or 'docker or busybox'} missing): {INSTALL}"
    return None


def podman_unavailable() -> str | None:
    if os.name != "posix" or os.geteuid() != 0:
        return "rootful Podman needs root"
    if _which("podman") is None or _which("runc") is None or not os.path.exists(BUSYBOX):
        return f"Podman is not installed: {INSTALL}"
    return None


class Dockerd:
    """A private Docker daemon in ``base`` (a short path: the socket's must fit 108 bytes)."""

    def __init__(self, base: str | Path | None = None, *, pid_namespace: bool = False):
        self.base = Path(base or tempfile.mkdtemp(prefix="wdk-", dir="/tmp"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.sock = self.base / "sock"
        self.pidfile = self.base / "dockerd.pid"
        self.log = self.base / "dockerd.log"
        self.pid_namespace = pid_namespace
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    @property
    def env(self) -> dict[str, str]:
        """The environment a client needs to talk to this daemon."""
        env = {k: v for k, v in os.environ.items() if k not in ("DOCKER_CONTEXT", "DOCKER_CONFIG")}
        env["DOCKER_HOST"] = self.host
        return env

    def start(self, timeout_s: float = 90.0) -> float:
        """Start it and wait until it answers; returns the seconds it took."""
        t0 = time.monotonic()
        cmd = [
            _which("dockerd") or "dockerd",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            "--data-root",
            str(self.base / "data"),
            "--exec-root",
            str(self.base / "exec"),
            "--pidfile",
            str(self.pidfile),
            "-H",
            self.host,
        ]
        if self.pid_namespace:
            # its processes live in a PID namespace of their own: seen from here, the daemon's
            # PIDs are another machine's (as with a remote DOCKER_HOST)
            cmd = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child=SIGTERM", *cmd]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
        deadline = t0 + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd exited ({self.proc.returncode}): {self._tail()}")
            if self.sock.exists():
                r = subprocess.run(
                    [DOCKER, "version", "--format", "{{.Server.Version}}"],
                    env=self.env,
                    capture_output=True,
                    text=True,
                    timeout=30,
                )
                if r.returncode == 0:
                    return time.monotonic() - t0
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"dockerd did not answer in {timeout_s:.0f} s: {self._tail()}")

    def _tail(self) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return "(no log)"

    def docker(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run([DOCKER, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])}: {r.stderr.strip()}")
        return r

    def running(self) -> list[str]:
        """Ids of the running containers (``docker ps -q``)."""
        return self.docker("ps", "-q", "--no-trunc").stdout.split()

    def stop(self) -> None:
        """Remove every container, then stop the daemon by its PID (SIGTERM, SIGKILL after 30 s)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                ids = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
                if ids:
                    self.docker("rm", "-f", *ids, check=False, timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.base, ignore_errors=True)


class PodmanStore:
    """Private storage for rootful Podman (``podman`` + :attr:`options` + subcommand)."""

    def __init__(self, base: str | Path | None = None):
        self.base = Path(base or tempfile.mkdtemp(prefix="wpm-", dir="/tmp"))
        for d in ("root", "run", "tmp"):
            (self.base / d).mkdir(parents=True, exist_ok=True)

    @property
    def options(self) -> list[str]:
        return [
            "--root",
            str(self.base / "root"),
            "--runroot",
            str(self.base / "run"),
            "--tmpdir",
            str(self.base / "tmp"),
            "--runtime",
            _which("runc") or "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]

    def podman(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        r = subprocess.run([PODMAN, *self.options, *args], capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:3])}: {r.stderr.strip()}")
        return r

    def running(self) -> list[str]:
        return self.podman("ps", "-q", "--no-trunc").stdout.split()

    def close(self) -> None:
        ids = self.podman("ps", "-aq", check=False).stdout.split()
        if ids:
            self.podman("rm", "-f", *ids, check=False)
        # the overlay storage may still be mounted: unmount before deleting
        subprocess.run([PODMAN, *self.options, "system", "reset", "-f"], capture_output=True, timeout=120)
        shutil.rmtree(self.base, ignore_errors=True)


def containers_conf_problem() -> str | None:
    """Rootful Podman here needs ``[containers] default_ulimits = []`` (else setrlimit fails)."""
    for path in ("/etc/containers/containers.conf", "/usr/share/containers/containers.conf"):
        try:
            if "default_ulimits" in Path(path).read_text():
                return None
        except OSError:
            continue
    return "/etc/containers/containers.conf lacks `[containers] default_ulimits = []` (.ci/run writes it)"


# -- images ----------------------------------------------------------------------------------------


class _Rootfs:
    """A root filesystem written straight into a tar (for ``docker import``)."""

    def __init__(self, path: Path):
        self.path = path
        self.tar = tarfile.open(path, "w")
        self.dirs: set[str] = set()

    def _parents(self, name: str) -> None:
        parts = name.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.dirs:
                self.dirs.add(d)
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                self.tar.addfile(info)

    def file(self, name: str, source: str | Path, mode: int | None = None) -> None:
        name = name.strip("/")
        self._parents(name)
        info = self.tar.gettarinfo(os.path.realpath(source), arcname=name)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        if mode is not None:
            info.mode = mode
        with open(os.path.realpath(source), "rb") as f:
            self.tar.addfile(info, f)

    def text(self, name: str, content: str, mode: int = 0o644) -> None:
        name = name.strip("/")
        self._parents(name)
        data = content.encode()
        info = tarfile.TarInfo(name)
        info.size, info.mode = len(data), mode
        self.tar.addfile(info, io.BytesIO(data))

    def link(self, name: str, target: str) -> None:
        name = name.strip("/")
        self._parents(name)
        info = tarfile.TarInfo(name)
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        self.tar.addfile(info)

    def tree(self, name: str, source: Path, skip: tuple[str, ...] = ()) -> None:
        for dirpath, dirnames, filenames in os.walk(source):
            dirnames[:] = [d for d in dirnames if d not in skip]
            rel = os.path.relpath(dirpath, source)
            for fn in filenames:
                src = os.path.join(dirpath, fn)
                if os.path.isfile(src):
                    self.file(f"{name}/{rel}/{fn}" if rel != "." else f"{name}/{fn}", src)

    def busybox(self) -> None:
        self.file("bin/busybox", BUSYBOX, 0o755)
        applets = subprocess.run(
            [BUSYBOX, "--list"], capture_output=True, text=True, check=True
        ).stdout.split()
        for a in applets:
            if a != "busybox":
                self.link(f"bin/{a}", "busybox")
        self.text("tmp/.keep", "")

    def close(self) -> Path:
        self.tar.close()
        return self.path


def busybox_rootfs(folder: Path) -> Path:
    """A tar of a root filesystem with Debian's static busybox (``/bin/sh`` and every applet)."""
    fs = _Rootfs(Path(folder) / "busybox-rootfs.tar")
    fs.busybox()
    return fs.close()


def _libraries(files: list[str]) -> set[str]:
    """The shared libraries ``files`` load (ldd), the dynamic loader included."""
    libs: set[str] = set()
    for chunk in range(0, len(files), 50):
        r = subprocess.run(["ldd", *files[chunk : chunk + 50]], capture_output=True, text=True)
        for line in r.stdout.splitlines():
            line = line.strip()
            if "=>" in line:
                path = line.split("=>", 1)[1].split("(")[0].strip()
            else:
                path = line.split("(")[0].strip()
            if path.startswith("/") and os.path.exists(path):
                libs.add(path)
    return libs


STUB_PACKAGES = (
    "numpy",
    "numpy.libs",
    "nibabel",
    "packaging",
    "typing_extensions.py",
    "importlib_resources",
    "zipp",
)
_SKIP = (
    "test",
    "tests",
    "idlelib",
    "tkinter",
    "turtledemo",
    "ensurepip",
    "lib2to3",
    "site-packages",
    "config-3.11-x86_64-linux-gnu",
)


def _python(fs: _Rootfs) -> str:
    """This machine's Python in the image, at its own path (it finds its standard library from
    there), with the packages the stubs import and the shared libraries all of it loads; returns
    the interpreter's path."""
    exe = os.path.realpath(sys.executable)
    prefix = sys.base_prefix
    stdlib = Path(sysconfig.get_paths(vars={"base": prefix, "installed_base": prefix})["stdlib"])
    fs.file(exe, exe, 0o755)
    fs.tree(str(stdlib), stdlib, skip=_SKIP)
    site = Path(sysconfig.get_paths()["purelib"])
    packed = []
    for name in STUB_PACKAGES:
        src = site / name
        if src.is_dir():
            fs.tree(f"{stdlib}/site-packages/{name}", src, skip=("tests",))
            packed.append(src)
        elif src.is_file():
            fs.file(f"{stdlib}/site-packages/{name}", src)
    binaries = [exe] + [str(p) for d in [stdlib / "lib-dynload", *packed] for p in Path(d).rglob("*.so*")]
    for lib in _libraries(binaries):
        if not lib.startswith(str(site)):
            fs.file(lib, lib, 0o755)
    return exe


def fastsurfer_rootfs(folder: Path) -> Path:
    """A tar of a stand-in for FastSurfer's Docker image (see the module doc)."""
    fs = _Rootfs(Path(folder) / "fastsurfer-rootfs.tar")
    fs.busybox()
    exe = _python(fs)
    # as in FastSurfer's image: its environment's interpreter, named as FastSurfer calls it
    fs.link("venv/bin/python3", exe)
    fs.link("venv/bin/python3.10", exe)  # run_fastsurfer.sh's default `python3.10 -s`
    stub = (STUBS / "run_fastsurfer.py").read_text()
    fs.text("fastsurfer/run_fastsurfer.sh", "#!/venv/bin/python3\n" + stub, 0o755)
    # FastSurfer's entrypoint: activates its environment and runs the command (not exec'd)
    fs.text("fastsurfer/Docker/entrypoint.sh", '#!/bin/sh\nexport PATH="/venv/bin:$PATH"\n"$@"\n', 0o755)
    for net, pattern in (
        ("asegdkt", "aparc_vinn_{}_v2.0.0.pkl"),
        ("cerebnet", "CerebNet_{}_v1.0.0.pkl"),
        ("hypvinn", "HypVINN_{}_v1.1.0.pkl"),
    ):
        for plane in ("coronal", "sagittal", "axial"):
            fs.text(f"fastsurfer/checkpoints/{pattern.format(plane)}", f"{net} {plane} (stand-in)\n")
    return fs.close()


def freesurfer_rootfs(folder: Path) -> Path:
    """A tar of a stand-in for FreeSurfer's Docker image: ``recon-all`` (the stub the native tests
    run, support/stubs/recon_all.py) in ``/usr/local/freesurfer/bin``, no licence (the user
    mounts one), no entrypoint."""
    fs = _Rootfs(Path(folder) / "freesurfer-rootfs.tar")
    fs.busybox()
    exe = _python(fs)
    stub = (STUBS / "recon_all.py").read_text()
    fs.text("usr/local/freesurfer/bin/recon-all", f"#!{exe}\n" + stub, 0o755)
    return fs.close()


FREESURFER_IMAGE_CHANGES = (
    "ENV PATH=/usr/local/freesurfer/bin:/bin",
    "ENV FREESURFER_HOME=/usr/local/freesurfer",
)
FASTSURFER_IMAGE_CHANGES = (
    'ENTRYPOINT ["/fastsurfer/Docker/entrypoint.sh","/fastsurfer/run_fastsurfer.sh"]',
    "ENV PATH=/venv/bin:/bin",
    "WORKDIR /fastsurfer",
)


def import_image(
    importer: list[str],
    tar: Path,
    tag: str,
    changes: tuple[str, ...] = ("ENV PATH=/bin",),
    env: dict | None = None,
) -> str:
    """``docker import`` / ``podman import`` of a rootfs tar as ``tag``."""
    args = [*importer, "import"]
    for c in changes:
        args += ["-c", c]
    r = subprocess.run([*args, str(tar), tag], env=env, capture_output=True, text=True, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"import {tag}: {r.stderr.strip()}")
    return tag


def cgroup_cpu_s(parent: str) -> float:
    """CPU seconds of a cgroup, read by the test itself from the kernel: v1 ``cpuacct.usage``
    where the cpuacct controller is mounted (a parent's includes its removed children's), else
    v2 ``cpu.stat`` ``usage_usec``; 0 when the cgroup does not exist (yet)."""
    rel = parent.strip("/")
    if Path("/sys/fs/cgroup/cpuacct/cpuacct.usage").exists():
        f = Path("/sys/fs/cgroup/cpuacct") / rel / "cpuacct.usage"
        return int(f.read_text()) / 1e9 if f.exists() else 0.0
    f = Path("/sys/fs/cgroup") / rel / "cpu.stat"
    if not f.exists():
        return 0.0
    return next(int(x.split()[1]) / 1e6 for x in f.read_text().splitlines() if x.startswith("usage_usec "))


def remove_cgroup(parent: str) -> None:
    """Remove an (empty) cgroup made for a test, and the empty cgroups below it (Podman leaves its
    ``conmon`` cgroup there), under every hierarchy."""
    roots = [p for p in Path("/sys/fs/cgroup").iterdir() if p.is_dir()] + [Path("/sys/fs/cgroup")]
    for root in roots:
        top = root / parent.strip("/")
        if not top.is_dir():
            continue
        for dirpath, _, _ in sorted(os.walk(top), key=lambda w: -len(w[0])):  # deepest first
            try:
                os.rmdir(dirpath)
            except OSError:
                pass
