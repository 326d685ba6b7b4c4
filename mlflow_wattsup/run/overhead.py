"""What measuring costs: the ``overhead_cpu_s`` metric.

The CPU seconds of the measuring process (every thread: start-up, imports, sampling, writing,
the description) plus those of the processes it ran and reaped (its own helpers, and the
measured command's tree), minus the command's tree as ``wait4`` reported it when it was reaped:
exactly what the wrapper spent beyond the command, up to the moment it is taken (the last values
a run logs; only the final status update and the process's exit come after it).
"""

from __future__ import annotations

import resource


def cpu_now_s() -> float:
    """CPU seconds of this process and of the children it reaped so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def overhead_cpu_s(tracker, since_s: float = 0.0) -> float:
    """``cpu_now_s() - since_s`` less the CPU of the measured tree that ``tracker``'s runner
    reaped (the command and the orphans it left); ``since_s``: :func:`cpu_now_s` when measuring
    began, where the process did other work before (``mlflow run``)."""
    reaped = getattr(getattr(tracker, "tree", None), "reaped_cpu_s", 0.0)
    return max(0.0, cpu_now_s() - since_s - reaped)
