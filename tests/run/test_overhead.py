"""overhead_cpu_s: the wrapper's own CPU plus its reaped children's, less the measured command's
as wait4 reported it."""

import os
import sys
from types import SimpleNamespace

from mlflow_wattsup.run.overhead import cpu_now_s, overhead_cpu_s

BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass"


def _burn_child() -> float:
    pid = os.posix_spawn(sys.executable, [sys.executable, "-S", "-c", BURN], dict(os.environ))
    _, status, ru = os.wait4(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return ru.ru_utime + ru.ru_stime


def test_the_commands_cpu_is_not_overhead():
    before = cpu_now_s()
    command_s = _burn_child()  # the measured command, reaped by the runner
    helper_s = _burn_child()  # a process of the wrapper's own (git, a runtime's inspect)
    assert command_s >= 0.4 and helper_s >= 0.4
    tracker = SimpleNamespace(tree=SimpleNamespace(reaped_cpu_s=command_s))
    mid = cpu_now_s()
    got = overhead_cpu_s(tracker, before)
    after = cpu_now_s()
    # the helper's CPU counts, the command's does not; our own CPU between the reads is all else
    assert mid - before - command_s <= got <= after - before - command_s
    assert got >= helper_s


def test_a_tree_meter_reports_what_it_reaped():
    from mlflow_wattsup.meters.proctree import ProcessTreeMeter

    tree = ProcessTreeMeter(children_of=os.getpid())
    tree.add_reaped(1.5)
    tree.add_reaped(0.25)
    assert tree.reaped_cpu_s == 1.75
