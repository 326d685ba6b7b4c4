"""A pipeline's command run in a container image (``docker://REF``, ``podman://REF``), built the
way a pipeline's own documentation runs it, and checked before anything starts.

The command is an ordinary ``docker run``: :mod:`.containers` attributes the container to the
run (its cgroup) and stops it with the run. What it adds:

* ``--rm`` (nothing left behind), ``--network none`` (the images carry their models: a download
  would be measured, and fails offline), ``--user UID:GID`` (outputs owned by the caller, as the
  pipelines' docs ask), the data folders mounted at their own paths (so every path given to the
  pipeline, and every path in its logs, is the same inside and out), ``--cpuset-cpus`` (the CPUs
  the run may use: the container does not inherit our affinity), ``--gpus device=N`` for a GPU
  run (Docker; Podman through CDI: ``--device nvidia.com/gpu=N``), and ``--init`` (Docker: a
  minimal init as PID 1 passes a stop signal on; a shell as PID 1 would ignore it).
* :func:`check_image`: the runtime is installed, answers, and has the image locally (a pull
  during the run would be measured, and fails offline), in a second or two.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

SCHEMES = {"docker://": "docker", "podman://": "podman"}


@dataclass(frozen=True)
class Image:
    """``runtime`` (docker, podman) and ``ref`` (e.g. ``deepmi/fastsurfer:cpu-v2.3.3``)."""

    runtime: str
    ref: str

    def __str__(self) -> str:
        return f"{self.runtime}://{self.ref}"


def parse_image(value: str | None) -> Image | None:
    """``docker://REF`` / ``podman://REF`` as an :class:`Image`; None for anything else (a path)."""
    if not value:
        return None
    v = value.strip()
    for scheme, runtime in SCHEMES.items():
        if v.startswith(scheme):
            ref = v[len(scheme) :]
            if not ref or any(c.isspace() for c in ref):
                raise ValueError(
                    f"{value!r}: no image reference after {scheme}; e.g. {scheme}deepmi/fastsurfer:latest"
                )
            return Image(runtime, ref)
    return None


def check_image(image: Image, env: dict[str, str] | None = None, timeout_s: float = 60.0) -> str:
    """The runtime's client (absolute path) once it has said it holds ``image``; ValueError with
    the reason and the fix otherwise."""
    env = dict(os.environ if env is None else env)
    cli = shutil.which(image.runtime, path=env.get("PATH"))
    if cli is None:
        raise ValueError(f"{image.runtime} is not on PATH: install it, or use a native installation")
    try:
        r = subprocess.run(
            [cli, "image", "inspect", "--format", "{{.Id}}", image.ref],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise ValueError(
            f"{image.runtime} did not answer in {timeout_s:.0f} s: is its daemon running?"
        ) from None
    if r.returncode != 0:
        err = (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
        if "no such" in err.lower() or "not known" in err.lower() or "unknown" in err.lower():
            raise ValueError(
                f"the image is not on this machine ({err}): `{image.runtime} pull {image.ref}` first "
                "(a pull during the run would be measured, and fails offline)"
            )
        raise ValueError(f"`{image.runtime} image inspect {image.ref}` failed: {err}")
    return cli


def run_command(
    image: Image,
    cli: str,
    args: Sequence[str],
    *,
    mounts: Iterable[str],
    cpus: Iterable[int] | None = None,
    gpu: str | None = None,
    read_only: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
) -> list[str]:
    """``<cli> run ... REF ARGS``: see the module doc. ``mounts``: host folders mounted at the
    same path (``read_only`` ones, folders or files, read-only); ``gpu``: the device to give it
    (index or UUID); ``env``: variables set in the container."""
    cmd = [cli, "run", "--rm", "--network", "none"]
    if image.runtime == "docker":
        cmd.append("--init")
    if hasattr(os, "getuid"):
        cmd += ["--user", f"{os.getuid()}:{os.getgid()}"]
    if cpus:
        cmd += ["--cpuset-cpus", ",".join(map(str, sorted(cpus)))]
    if gpu is not None:
        cmd += (
            ["--gpus", f"device={gpu}"]
            if image.runtime == "docker"
            else ["--device", f"nvidia.com/gpu={gpu}"]
        )
    for k, v in (env or {}).items():
        cmd += ["-e", f"{k}={v}"]
    rw = {os.path.abspath(p) for p in mounts}
    ro = {os.path.abspath(p) for p in read_only} - rw
    for m in sorted(rw | ro):
        cmd += ["-v", f"{m}:{m}" + (":ro" if m in ro else "")]
    return [*cmd, image.ref, *args]
