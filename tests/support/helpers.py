"""Shared helpers for tests that run the ``wattsup`` command."""

import os
import subprocess
import sys

from support.paths import NETGUARD

WATTSUP = [sys.executable, "-m", "mlflow_wattsup"]


def wattsup(*args, env=None, timeout=120, **kw):
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([*WATTSUP, *args], env=e, capture_output=True, text=True, timeout=timeout, **kw)


def only_run(client, experiment):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} was not created"
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def busy_sh(iterations: int) -> str:
    """A dash loop: ~0.17 s of CPU per 100,000 iterations, ~1 ms to start."""
    return f"i=0; while [ $i -lt {iterations} ]; do i=$((i+1)); done"


PERL_CHUNK = "$s=(times)[0]+(times)[1]; 1 while ((times)[0]+(times)[1]-$s < 0.1);"


def perl_burn(chunks: int, processes: int) -> str:
    """A shell script burning ``chunks`` x 0.1 CPU-seconds in ``processes`` perl processes.

    The work is defined in CPU time, not instructions (instruction throughput on a shared VM
    varies by 10%), and each chunk overshoots to the same clock-tick boundary whichever process
    runs it. Perl starts in ~2.5 ms, so 30 processes add ~2.5% of real extra work.
    """
    per = chunks // processes
    body = f"perl -e 'for (1..{per}) {{ {PERL_CHUNK} }}'"
    return body if processes == 1 else f"for n in $(seq {processes}); do {body}; done"


def parse_times(text: str) -> float:
    """Children's user+system seconds from the second line of the shell's ``times``."""

    def secs(tok):
        m, _, s = tok.rstrip("s").partition("m")
        return int(m) * 60 + float(s)

    user, sys_ = text.strip().splitlines()[1].split()
    return secs(user) + secs(sys_)


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
