"""SLURM's own energy accounting of the job step we run in (``sstat`` / ``sacct``), and whether the
node's energy is the job's (``scontrol``).

Where a cluster runs an energy plugin (``AcctGatherEnergyType=acct_gather_energy/{rapl,ipmi,gpu,
pm_counters,xcc,rsmi}``) SLURM meters the *node* and charges each job step the node's energy over
the step's life: ``ConsumedEnergyRaw`` (joules, an integer) and ``ConsumedEnergy`` (the same with
a unit prefix K, M, G, T, P, which ``sacct``/``sstat`` print with a divisor of 1000: ``1.50K`` is
1500 J). SLURM's own documentation: "Only in the case of an exclusive job allocation does this
value reflect the job's real energy consumption". Hence :class:`Allocation`, from the job's
``OverSubscribe`` (``NO`` = ``--exclusive``; ``USER``/``MCS`` = shared only with the same user's
or group's jobs; ``OK``/``YES`` = shared) and the partition's (``EXCLUSIVE``).

While a step runs, ``sstat`` reports it (updated every ``JobAcctGatherFrequency``, 30 s by
default); once it has ended, ``sacct`` (which needs ``slurmdbd``). :meth:`SlurmAccounting.read`
asks ``sstat`` first, ``sacct`` when ``sstat`` has no row. A run's figure is the difference of two
readings (:func:`run_energy`).

**Zero or absent means "not collected"**, never 0 J: without an energy plugin SLURM reports 0
(``ConsumedEnergyRaw`` empty or ``0``); a step whose value did not change over a run (between two
``JobAcctGatherFrequency`` updates) is "not updated", not 0 J either.

The parsing functions are pure (tested on the field formats SLURM documents); the commands run
through a ``run`` callable so tests can feed recorded answers. No MLflow here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

SOURCE = "slurm"
NOT_COLLECTED = "not collected"
#: sacct and sstat print energy with a divisor of 1000 (memory fields use 1024; energy does not)
ENERGY_PREFIX = {"": 1.0, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15}
ENERGY_FIELDS = ("JobID", "ConsumedEnergyRaw", "ConsumedEnergy")
#: SLURM_STEP_ID of a batch script's step in SLURM's environment (SLURM_BATCH_SCRIPT), and its name
BATCH_STEP_IDS = ("4294967294", "batch")

Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


class SlurmFormatError(ValueError):
    """A field SLURM printed is not in a format it documents; ``str(exc)`` names it."""


def parse_energy_j(text: str, field: str = "ConsumedEnergy") -> float | None:
    """Joules from a ``ConsumedEnergy(Raw)`` field: ``""`` -> None (not reported), ``"0"`` -> 0.0,
    ``"12345"`` -> 12345.0, ``"1.50K"`` -> 1500.0, ``"37.97M"`` -> 37970000.0. Raises
    :class:`SlurmFormatError` for anything else."""
    s = text.strip()
    if s == "":
        return None
    prefix = s[-1].upper() if s[-1].isalpha() else ""
    number = s[:-1] if prefix else s
    if prefix not in ENERGY_PREFIX:
        raise SlurmFormatError(f"{field}={text!r}: unknown unit prefix {prefix!r} (SLURM uses K, M, G, T, P)")
    try:
        value = float(number)
    except ValueError:
        raise SlurmFormatError(f"{field}={text!r} is not a number of joules") from None
    if value < 0 or value != value:
        raise SlurmFormatError(f"{field}={text!r} is not a number of joules")
    return value * ENERGY_PREFIX[prefix]


def parse_parsable2(text: str, fields: Sequence[str]) -> list[dict[str, str]]:
    """Rows of ``sacct``/``sstat`` ``--parsable2 --noheader --format=<fields>`` output ('|' between
    fields, none at the end), as dicts by field name. Lines with another field count are skipped
    (a header line, a warning)."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        values = line.split("|")
        if len(values) == len(fields):
            rows.append(dict(zip(fields, values, strict=True)))
    return rows


def parse_scontrol(text: str) -> dict[str, str]:
    """``scontrol show job -o`` / ``show partition -o`` (one record: ``Key=Value`` separated by
    spaces; a word without ``=`` belongs to the value before it)."""
    out: dict[str, str] = {}
    last = None
    for token in text.split():
        key, eq, value = token.partition("=")
        if eq and key and (key[0].isupper() or key[0].isdigit()):
            out[key] = value
            last = key
        elif last is not None:
            out[last] += " " + token
    return out


def step_id(environ: Mapping[str, str]) -> str | None:
    """``<job>.<step>`` of the step this process runs in (``<job>.batch`` for a batch script), or
    None outside a SLURM job. A job array task is its own job (``SLURM_JOB_ID``)."""
    job = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if not job:
        return None
    step = environ.get("SLURM_STEP_ID") or environ.get("SLURM_STEPID")
    if not step or step in BATCH_STEP_IDS:
        step = "batch"
    return f"{job}.{step}"


@dataclass(frozen=True)
class StepReading:
    """SLURM's accounting of one step at one moment: ``energy_j`` (J) is ``ConsumedEnergyRaw``, or
    None when not collected (0, empty, no row, the command failed: ``note`` says which); ``via``:
    ``sstat`` or ``sacct``."""

    step: str
    energy_j: float | None
    via: str
    note: str = ""


@dataclass(frozen=True)
class Allocation:
    """Whether the node's energy is the job's. ``kind``: ``exclusive`` (``--exclusive``, or an
    ``OverSubscribe=EXCLUSIVE`` partition), ``user-exclusive`` / ``mcs-exclusive`` (shared only with
    the same user's / group's jobs), ``shared``, or ``unknown``; ``oversubscribe``: what scontrol
    said (``OverSubscribe=NO``)."""

    kind: str
    oversubscribe: str = ""

    @property
    def rule(self) -> str:
        """The share rule in words (what the node's energy means for this job)."""
        said = f" ({self.oversubscribe})" if self.oversubscribe else ""
        if self.kind == "exclusive":
            return f"exclusive{said}: the node's energy is the job's"
        if self.kind in ("user-exclusive", "mcs-exclusive"):
            who = "user's" if self.kind == "user-exclusive" else "group's"
            return f"{self.kind}{said}: the node's energy includes the same {who} other jobs on it"
        if self.kind == "shared":
            return f"shared{said}: the node's energy includes other jobs on the node, it is not the job's"
        return f"unknown{said}: whether other jobs shared the node is not known"


def allocation_from(job: Mapping[str, str], partition: Mapping[str, str] | None = None) -> Allocation:
    """The allocation of ``scontrol show job -o`` fields (and its partition's, when given)."""
    over = job.get("OverSubscribe", job.get("Shared", "")).upper()
    said = f"OverSubscribe={over}" if over else ""
    part = (partition or {}).get("OverSubscribe", "").upper()
    if over == "NO" or part.startswith("EXCLUSIVE"):
        return Allocation("exclusive", said or f"partition OverSubscribe={part}")
    if over == "USER":
        return Allocation("user-exclusive", said)
    if over == "MCS":
        return Allocation("mcs-exclusive", said)
    if over in ("OK", "YES", "FORCE") or over.startswith("FORCE"):
        return Allocation("shared", said)
    return Allocation("unknown", said)


@dataclass(frozen=True)
class SlurmEnergy:
    """SLURM's figure for a run: ``energy_j`` (J) the step's ``ConsumedEnergyRaw`` at the end
    minus at the start, None when not collected; ``source``: ``slurm`` or ``not collected``;
    ``detail``: how it was read, or why there is none; ``allocation``: the share rule."""

    energy_j: float | None
    source: str
    detail: str
    allocation: Allocation


def run_energy(start: StepReading, end: StepReading, allocation: Allocation) -> SlurmEnergy:
    """The step's energy between two readings; never a 0 that only means "not collected"."""
    if end.energy_j is None:
        why = end.note or "ConsumedEnergyRaw is empty"
        return SlurmEnergy(None, NOT_COLLECTED, f"step {end.step}: {why}", allocation)
    base = start.energy_j if start.energy_j is not None else 0.0
    delta = end.energy_j - base
    if delta <= 0:
        return SlurmEnergy(
            None,
            NOT_COLLECTED,
            f"step {end.step}: ConsumedEnergyRaw did not change during the run ({end.energy_j:.0f} J; "
            "SLURM updates it every JobAcctGatherFrequency, 30 s by default)",
            allocation,
        )
    since = "the step's start" if start.energy_j is None else f"{base:.0f} J at the run's start"
    return SlurmEnergy(
        delta,
        SOURCE,
        f"step {end.step}: ConsumedEnergyRaw {end.energy_j:.0f} J ({end.via}) at the run's end - {since}",
        allocation,
    )


def _run(cmd: Sequence[str], timeout_s: float = 15.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout_s)


class SlurmAccounting:
    """Reads one step's accounting. ``step``: ``<job>.<step>``; ``run``: runs a command and
    returns its CompletedProcess (tests pass recorded answers)."""

    def __init__(self, step: str, run: Runner | None = None):
        self.step = step
        self.job = step.split(".", 1)[0]
        self._run = run or _run

    def _query(self, cmd: Sequence[str]) -> tuple[list[dict[str, str]], str]:
        try:
            p = self._run(cmd)
        except (OSError, subprocess.SubprocessError) as exc:
            return [], f"{cmd[0]} failed: {exc}"
        if p.returncode != 0:
            err = (p.stderr or p.stdout or "").strip().splitlines()
            return [], f"{cmd[0]} exited {p.returncode}" + (f": {err[-1]}" if err else "")
        rows = [r for r in parse_parsable2(p.stdout, ENERGY_FIELDS) if r["JobID"] == self.step]
        return rows, "" if rows else f"{cmd[0]} has no row for step {self.step}"

    def read(self) -> StepReading:
        """The step's ``ConsumedEnergyRaw`` now: ``sstat`` while it runs, else ``sacct``."""
        fmt = "--format=" + ",".join(ENERGY_FIELDS)
        notes = []
        for via, cmd in (
            ("sstat", ["sstat", "--noheader", "--parsable2", fmt, "-j", self.step]),
            ("sacct", ["sacct", "--noheader", "--parsable2", fmt, "-j", self.step]),
        ):
            rows, note = self._query(cmd)
            if not rows:
                notes.append(note)
                continue
            row = rows[0]
            try:
                energy = parse_energy_j(row["ConsumedEnergyRaw"], "ConsumedEnergyRaw")
                if energy is None:
                    energy = parse_energy_j(row["ConsumedEnergy"])
            except SlurmFormatError as exc:
                return StepReading(self.step, None, via, f"{via}: {exc}")
            if not energy:  # 0 or empty: SLURM has no energy plugin here
                return StepReading(
                    self.step,
                    None,
                    via,
                    f"{via} reports ConsumedEnergyRaw={row['ConsumedEnergyRaw'] or 'empty'} (no "
                    "AcctGatherEnergyType plugin on this cluster)",
                )
            return StepReading(self.step, energy, via)
        return StepReading(self.step, None, "none", "; ".join(notes))

    def allocation(self) -> Allocation:
        """Exclusive or shared, from ``scontrol show job`` (and its partition)."""
        try:
            p = self._run(["scontrol", "show", "job", "-o", self.job])
        except (OSError, subprocess.SubprocessError):
            return Allocation("unknown")
        if p.returncode != 0:
            return Allocation("unknown")
        job = parse_scontrol(p.stdout.splitlines()[0] if p.stdout.strip() else "")
        partition = None
        alloc = allocation_from(job)
        if alloc.kind != "exclusive" and job.get("Partition"):
            try:
                q = self._run(["scontrol", "show", "partition", "-o", job["Partition"].split(",")[0]])
                if q.returncode == 0 and q.stdout.strip():
                    partition = parse_scontrol(q.stdout.splitlines()[0])
            except (OSError, subprocess.SubprocessError):
                partition = None
            alloc = allocation_from(job, partition)
        return alloc


def open_slurm(environ: Mapping[str, str] | None = None, run: Runner | None = None) -> SlurmAccounting | None:
    """The accounting of the step we run in; None outside a SLURM job or without ``sstat``/``sacct``
    (``run`` given: the commands are assumed to exist)."""
    env = os.environ if environ is None else environ
    step = step_id(env)
    if step is None:
        return None
    if run is None and not (shutil.which("sstat") or shutil.which("sacct")):
        return None
    return SlurmAccounting(step, run)
