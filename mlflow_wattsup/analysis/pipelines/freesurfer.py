"""recon-all log formats (``$SUBJECTS_DIR/<sid>/scripts/recon-all.log``).

* ``#@# <Stage name> <date>`` starts a stage (e.g. ``#@# Talairach Tue Mar 30 12:00:01 EDT 2021``);
  it runs until the next marker or the end of recon-all.
* ``@#@FSTIME <YYYY:MM:DD:hh:mm:ss> <command> N <nargs> e <wall s> S <sys s> U <user s> P <cpu%>
  M <max RSS KB> ...`` - one line per FreeSurfer binary, written by its own timer.
* ``#@#%# recon-all-run-time-hours <h>`` at the end; ``scripts/recon-all.done`` holds
  ``START_TIME``/``END_TIME``/``RUNTIME_HOURS``.
* The log is appended to by default (``AppendLog``): each call adds a block starting
  ``# New invocation of recon-all <date>`` (the caller reads from the log's current end).

FSTIME records come from ``fs_time`` (GNU ``/usr/bin/time``: ``e``/``S``/``U`` include the
command's waited-for children). In 8.x some scripts run under fs_time call fs_time again
(``rca-surfreg`` -> ``mris_register``): the inner record is written first and lies within the
outer one's time span. :func:`nesting` finds those so each CPU second is counted once. The sum is
FreeSurfer's own *partial* figure: commands not run through fs_time (shell steps, python) and
systems without GNU time give no record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

_MARKER = re.compile(r"^#@#\s+(?P<stage>.+?)\s+(?P<date>(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)\s.*)$")
_MARKER_NODATE = re.compile(r"^#@#\s+(?P<stage>\S.*?)\s*$")
_FSTIME = re.compile(
    r"^@#@FSTIME\s+(?P<when>\d{4}:\d{2}:\d{2}:\d{2}:\d{2}:\d{2})\s+(?P<cmd>\S+)\s+N\s+(?P<n>\d+)\s+"
    r"e\s+(?P<e>[\d.]+)\s+S\s+(?P<S>[\d.]+)\s+U\s+(?P<U>[\d.]+)\s+P\s+(?P<P>[\d.]+)%\s+M\s+(?P<M>\d+)"
)
_NEW_INVOCATION = re.compile(r"^#\s*New invocation of recon-all\b")
_RUNTIME = re.compile(r"^#@#%#\s+recon-all-run-time-hours\s+(?P<h>[\d.]+)")

DIRECTIVES = ("all", "autorecon1", "autorecon2", "autorecon3")


@dataclass(frozen=True)
class NewInvocation:
    """``# New invocation of recon-all <date>``: a call of recon-all starts appending here."""


@dataclass(frozen=True)
class StageMarker:
    stage: str
    date_text: str  # as written (local time with a zone abbreviation): kept, not parsed


@dataclass(frozen=True)
class FsTime:
    """One ``@#@FSTIME`` line: a FreeSurfer binary's own timing."""

    when: datetime
    command: str
    wall_s: float
    sys_s: float
    user_s: float
    cpu_percent: float
    max_rss_kb: int

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    @property
    def span(self) -> tuple[float, float]:
        """(start, end) in seconds since the epoch of the naive local start time."""
        t0 = self.when.timestamp()
        return t0, t0 + self.wall_s


def nesting(times: list[FsTime]) -> list[bool]:
    """For records in log order, whether each one ran inside a later record (counted in it).

    Start stamps have 1 s resolution (the true start is in ``[stamp, stamp + 1)``). A later record
    ``O`` holds an earlier ``I`` when ``O`` certainly started before ``I`` ended
    (``O.stamp + 1 <= I.stamp + I.wall``), not after ``I`` started (``O.stamp <= I.stamp``), ended no
    earlier (within the stamp's second) and used no less CPU. Commands run one after the other can
    never meet the first condition; a nested command shorter than ~1 s cannot be told apart and
    is counted as top-level."""
    nested = [False] * len(times)
    for j, outer in enumerate(times):
        o0, o1 = outer.span
        for i in range(j):
            if nested[i]:
                continue
            i0, i1 = times[i].span
            if o0 + 1.0 <= i1 and o0 <= i0 and o1 + 1.0 >= i1 and times[i].cpu_s <= outer.cpu_s + 0.01:
                nested[i] = True
    return nested


def parse_line(line: str) -> StageMarker | FsTime | NewInvocation | float | None:
    """A stage marker, an FSTIME record, a new invocation, the final run time in hours (float),
    or None."""
    line = line.rstrip("\n")
    if _NEW_INVOCATION.match(line):
        return NewInvocation()
    if line.startswith("@#@FSTIME"):
        m = _FSTIME.match(line)
        if not m:
            return None
        return FsTime(
            datetime.strptime(m["when"], "%Y:%m:%d:%H:%M:%S"),
            m["cmd"],
            float(m["e"]),
            float(m["S"]),
            float(m["U"]),
            float(m["P"]),
            int(m["M"]),
        )
    if line.startswith("#@#%#"):
        m = _RUNTIME.match(line)
        return float(m["h"]) if m else None
    if line.startswith("#@# "):
        m = _MARKER.match(line) or _MARKER_NODATE.match(line)
        if m:
            return StageMarker(m["stage"].strip(), m.groupdict().get("date") or "")
    return None
