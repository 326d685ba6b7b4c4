"""Agreement of two pipelines of one study (``wattsup study --agreement RUN:REFERENCE``),
e.g. FastSurfer against FreeSurfer, subject by subject and across the cohort.

After the children have run, for every subject whose RUN child and REFERENCE child both ended
FINISHED (the reference child on the same device if it has one, else its only device):

- the RUN child gets its comparison with the reference child's subject directory
  (:func:`~mlflow_wattsup.run.subject_stats.log_agreement`: its own volumes and thickness,
  the per-structure differences and their means, Dice of the two DKT+aseg segmentations unless
  the run already scored Dice against a reference of its own), and the tags
  ``wattsup.study.reference_run`` (the reference child's run id) and ``wattsup.study.subject_dir``;
- the REFERENCE child gets its own volumes and thickness (no reference), and
  ``wattsup.study.subject_dir``.

A child's subject directory comes from its own parameters: ``sd`` or ``subjects_dir``, joined
with ``sid`` (or ``subject``); a relative one is taken from the folder the study was started in.
On resume, a RUN child already compared with the same reference run, and a REFERENCE child whose
values were logged, are not read again. A subject whose RUN or REFERENCE child did not finish is
named in the report's notes (and on stderr), never silently left out.

The parent's ``study/report.md`` gets, under the cost table, per pair (and per device of RUN when
it ran on several) the agreement across subjects: per structure N, means, mean difference, Pearson
r and ICC(2,1) (:func:`~mlflow_wattsup.analysis.agreement_stats.cross_subject`), also as
``study/agreement_<run>_vs_<reference>[_<device>].csv``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow_wattsup.analysis.agreement_stats import AgreementTable, cross_subject
from mlflow_wattsup.report import agreement_table
from mlflow_wattsup.run.subject_stats import log_agreement
from mlflow_wattsup.sink import keys
from mlflow_wattsup.study.plan import Child, Pipeline, PlanError

if TYPE_CHECKING:
    from mlflow_wattsup.sink.transport import Store

#: (subjects folder parameter, subject id parameter) of an entry point, in order of preference:
#: FastSurfer's ``sd``/``sid``, FreeSurfer's ``subjects_dir``/``sid``
SUBJECT_DIR_PARAMS = (("sd", "sid"), ("subjects_dir", "sid"), ("sd", "subject"), ("subjects_dir", "subject"))
FINISHED = "FINISHED"
#: a run that has these metrics scored Dice against a reference of its own (the projects' ``reference``)
OWN_DICE_METRIC = "dice_labels_n"
_FILE_OK = re.compile(r"[^A-Za-z0-9_.-]")


def subject_dir_params(p: Pipeline) -> tuple[str, str] | None:
    return next(((d, s) for d, s in SUBJECT_DIR_PARAMS if d in p.declared and s in p.declared), None)


def parse_pairs(specs: Iterable[str], pipelines: list[Pipeline]) -> list[tuple[str, str]]:
    """``RUN:REFERENCE`` strings -> (run pipeline, reference pipeline) names; :class:`PlanError`
    (one line) for an unknown name, a pipeline without a subject directory parameter, or a
    pipeline given two references."""
    by = {p.name: p for p in pipelines}
    pairs: list[tuple[str, str]] = []
    for spec in specs:
        a, sep, b = (x.strip() for x in spec.partition(":"))
        if not sep or not a or not b or a == b:
            raise PlanError(
                f"--agreement {spec!r}: give RUN:REFERENCE, two different pipeline names of the study "
                "(e.g. fastsurfer:freesurfer)"
            )
        for name in (a, b):
            if name not in by:
                raise PlanError(
                    f"--agreement {spec}: no pipeline named {name!r} (the study has {', '.join(by)})"
                )
            if subject_dir_params(by[name]) is None:
                raise PlanError(
                    f"--agreement {spec}: pipeline {name} has no subject directory parameters "
                    "(sd or subjects_dir, with sid or subject): its stats files cannot be found"
                )
        if any(x == a for x, _ in pairs):
            raise PlanError(f"--agreement {spec}: {a} already has a reference; give one per pipeline")
        pairs.append((a, b))
    return pairs


def subject_dir(c: Child, base: Path) -> Path | None:
    """The child's subject directory from its parameters (None when one is empty)."""
    d, s = subject_dir_params(c.pipeline) or ("", "")
    declared = c.pipeline.declared

    def value(name: str) -> str:
        v = c.params.get(name)
        if v is None and name in declared:
            v = declared[name].default
        return str(v or "").strip()

    root, sid = value(d), value(s)
    if not root or not sid:
        return None
    path = Path(root).expanduser()
    return (path if path.is_absolute() else base / path) / sid


@dataclass
class Match:
    """One RUN child and the REFERENCE child of the same subject it is compared with."""

    run: Child
    reference: Child


def _label(c: Child, with_device: bool) -> str:
    return f"{c.pipeline.name} {c.device}" if with_device else c.pipeline.name


class StudyAgreement:
    """The pairs of one study: who is compared with whom, the logging on the children, the
    parent's tables. ``store``: the study's tracking store."""

    def __init__(
        self,
        store: Store,
        experiment_id: str,
        pairs: list[tuple[str, str]],
        children: list[Child],
        log: Callable[[str], None],
        base: str | Path | None = None,
    ):
        self.store, self.experiment_id = store, str(experiment_id)
        self.pairs, self.children, self.log = list(pairs), children, log
        self.base = Path(base or Path.cwd()).absolute()

    # -- which child against which ---------------------------------------------------------------

    def matches(self, pair: tuple[str, str]) -> list[Match]:
        a, b = pair
        refs: dict[str, list[Child]] = {}
        for c in self.children:
            if c.pipeline.name == b:
                refs.setdefault(c.subject.id, []).append(c)
        out = []
        for c in self.children:
            if c.pipeline.name != a or c.subject.id not in refs:
                continue
            mine = refs[c.subject.id]
            same = [r for r in mine if r.device == c.device]
            out.append(Match(c, (same or sorted(mine, key=lambda r: r.device))[0]))
        return out

    def _runs(self, run_ids: Iterable[str]) -> dict:
        """Run objects by id (search_runs, 100 ids a query)."""
        ids = sorted(set(run_ids))
        out = {}
        for i in range(0, len(ids), 100):
            flt = "attributes.run_id IN (" + ", ".join(f"'{r}'" for r in ids[i : i + 100]) + ")"
            out.update({r.info.run_id: r for r in self.store.search_runs([self.experiment_id], flt)})
        return out

    @staticmethod
    def _state(latest: dict, c: Child) -> tuple[str, str]:
        return latest.get(c.key, ("", "NOT RUN"))

    def _why_not(self, latest: dict, m: Match) -> str | None:
        """Why a match cannot be compared (a child that did not finish), or None."""
        whys = []
        for c in (m.run, m.reference):
            _, st = self._state(latest, c)
            if st != FINISHED:
                whys.append(f"{c.pipeline.name} ({c.device}) {st}")
        if not whys:
            return None
        return (
            f"{m.run.subject.id}: {' and '.join(whys)}: {m.run.pipeline.name} ({m.run.device}) not compared"
        )

    # -- logging on the children ---------------------------------------------------------------------

    def _log(self, c: Child, run_id: str, reference: Child | None, reference_run: str, dice: bool) -> bool:
        from mlflow_wattsup.run.log import target_run

        mine = subject_dir(c, self.base)
        ref = subject_dir(reference, self.base) if reference is not None else None
        name = f"{c.pipeline.name} {c.subject.id} ({c.device})"
        if mine is None or (reference is not None and ref is None):
            empty = c if mine is None else reference
            self.log(
                f"  agreement: {name}: {empty.pipeline.name}'s subject directory parameter is empty: not compared"
            )
            return False
        try:
            with target_run(run_id, store=self.store) as sink:
                out = log_agreement(sink, mine, ref, dice=dice)
                tags = {keys.STUDY_SUBJECT_DIR: str(mine)}
                if reference is not None:
                    tags[keys.STUDY_REFERENCE_RUN] = reference_run
                    if not dice:
                        tags[keys.agree_tag("dice")] = (
                            "n/a: the run scored Dice against its own reference (dice/*), kept"
                        )
                sink.set_tags(tags)
        except Exception as exc:  # the store, not the files: a resumed study tries again
            self.log(f"  agreement: {name}: {type(exc).__name__}: {_first_line(exc)}")
            return False
        if "error" in out:
            self.log(f"  agreement: {name}: {out['error']}")
        return True

    def compare(self, latest: dict) -> None:
        """Log the comparisons (and the references' own values) not logged yet; ``latest`` maps a
        child's key to (run id, status) of its latest attempt. Never raises (the children's
        measurements come first): a store error is said, and a resumed study tries again."""
        try:
            self._compare(latest)
        except Exception as exc:
            self.log(f"agreement: not logged ({type(exc).__name__}: {_first_line(exc)}); run the study again")

    def _compare(self, latest: dict) -> None:
        done, skipped, notes = 0, 0, []
        pending: list[tuple[Child, str, Child | None, str, bool]] = []
        involved = {}
        for pair in self.pairs:
            for m in self.matches(pair):
                for c in (m.run, m.reference):
                    run_id, st = self._state(latest, c)
                    if st == FINISHED:
                        involved[run_id] = c
        runs = self._runs(involved)
        valued: set[str] = set()
        for pair in self.pairs:
            for m in self.matches(pair):
                why = self._why_not(latest, m)
                if why:
                    notes.append(why)
                    continue
                a_id, b_id = self._state(latest, m.run)[0], self._state(latest, m.reference)[0]
                run = runs.get(a_id)
                if run is None:
                    continue
                if run.data.tags.get(keys.STUDY_REFERENCE_RUN) == b_id:
                    skipped += 1
                    valued.add(a_id)
                    continue
                # Dice already there and not ours: the pipeline's own, against the user's reference
                dice = keys.STUDY_REFERENCE_RUN in run.data.tags or OWN_DICE_METRIC not in run.data.metrics
                pending.append((m.run, a_id, m.reference, b_id, dice))
                valued.add(a_id)
        for run_id, c in involved.items():
            run = runs.get(run_id)
            if run_id in valued or run is None or keys.STUDY_SUBJECT_DIR in run.data.tags:
                continue
            if any(c.pipeline.name == b for _, b in self.pairs):
                pending.append((c, run_id, None, "", False))
                valued.add(run_id)
        for c, run_id, ref, ref_run, dice in pending:
            done += bool(self._log(c, run_id, ref, ref_run, dice) and ref is not None)
        self.log(
            f"agreement ({', '.join(f'{a} vs {b}' for a, b in self.pairs)}): {done} subject(s) compared now, "
            f"{skipped} compared before, {len(notes)} not comparable"
        )
        for n in notes[:10]:
            self.log(f"  {n}")
        if len(notes) > 10:
            self.log(f"  ... and {len(notes) - 10} more (study/report.md)")

    # -- the parent's report ----------------------------------------------------------------------

    def tables(self, latest: dict) -> list[tuple[str, AgreementTable]]:
        """(file stem, table) per pair, and per RUN device when RUN ran on several."""
        runs = self._runs(run_id for run_id, st in latest.values() if st == FINISHED)
        out = []
        for a, b in self.pairs:
            matches = self.matches((a, b))
            a_devices = sorted({m.run.device for m in matches})
            b_devices = {c.device for c in self.children if c.pipeline.name == b}
            for device in a_devices:
                values: dict = {}
                notes = []
                la = _label(matches[0].run, False) if len(a_devices) == 1 else f"{a} {device}"
                lb = b
                for m in (m for m in matches if m.run.device == device):
                    why = self._why_not(latest, m)
                    if why:
                        notes.append(why)
                        continue
                    lb = _label(m.reference, len(b_devices) > 1)
                    for c, label in ((m.run, la), (m.reference, lb)):
                        run = runs.get(self._state(latest, c)[0])
                        got = _values(run) if run is not None else None
                        if got is None:
                            warn = run.data.tags.get(keys.WARNING_AGREEMENT) if run is not None else None
                            notes.append(
                                f"{c.subject.id}: {c.pipeline.name} ({c.device}) logged no volumes or thickness"
                                + (f" ({warn})" if warn else "")
                            )
                        else:
                            values.setdefault(c.subject.id, {})[label] = got
                table = cross_subject(values, la, lb)
                table.extra_notes = notes
                stem = f"agreement_{_file(a)}_vs_{_file(b)}" + (f"_{device}" if len(a_devices) > 1 else "")
                out.append((stem, table))
        return out

    def write(self, parent: str, out: Path, latest: dict, report_md: str) -> str:
        """Tag the parent, write the CSV tables into ``out`` and the blocks under ``report_md``
        into ``out/report.md``; returns the report's markdown."""
        self.store.client.set_tag(parent, keys.STUDY_AGREEMENT, ",".join(f"{a}:{b}" for a, b in self.pairs))
        blocks = []
        try:
            tables = self.tables(latest)
        except Exception as exc:  # the cost table and plots still go out
            self.log(f"agreement: no table ({type(exc).__name__}: {_first_line(exc)})")
            return report_md
        for stem, table in tables:
            (out / f"{stem}.csv").write_text(agreement_table.to_csv(table), encoding="utf-8")
            blocks.append(agreement_table.to_markdown(table))
        md = "\n\n".join([report_md.rstrip("\n")] + blocks if report_md else blocks).rstrip("\n")
        (out / "report.md").write_text(md + "\n", encoding="utf-8")
        return md


def _values(run) -> dict[str, dict[str, float]] | None:
    """{measure: {structure: value}} of the volumes and thickness a run logged, or None."""
    per = agreement_table.logged_values(run.data.metrics)
    return per if any(per.values()) else None


def _file(name: str) -> str:
    return _FILE_OK.sub("_", name)


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else ""
