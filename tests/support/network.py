"""The network guard for tests: every Python process started with :func:`guarded_env` loads
support/netguard/sitecustomize.py, which refuses and records any connection or DNS lookup
other than to the allowed local ports."""

import os

from support.paths import NETGUARD


def guarded_env(tmp_path, allow_ports=(), **extra):
    log = tmp_path / "netguard.log"
    env = dict(
        os.environ,
        WATTSUP_NETGUARD="1",
        WATTSUP_NETGUARD_LOG=str(log),
        WATTSUP_NETGUARD_ALLOW=",".join(map(str, allow_ports)),
        PYTHONPATH=os.pathsep.join([str(NETGUARD), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        WATTSUP_SPOOL_DIR=str(tmp_path / "spool"),
    )
    env.pop("MLFLOW_DISABLE_TELEMETRY", None)  # we must not phone home even when the user did not opt out
    env.update(extra)
    return env, log
