"""A study's plan - which child runs (subject x pipeline x device), each with the
parameters of its MLflow Project entry point.

A pipeline is ``NAME=PROJECT_DIR[#ENTRY_POINT]`` (entry point ``main`` by default; NAME defaults
to the folder's name, plus ``.ENTRY`` when not ``main``). Parameters are filled in this order:

1. from the subject and device, by the entry point's own parameter names: ``t1`` <- the subject's
   T1, ``sid``/``subject`` <- its id, ``reference``/``reference_mask`` <- its reference (when it has
   one), ``device`` <- the device;
2. the user's ``KEY=VALUE`` (every pipeline that declares KEY) and ``NAME.KEY=VALUE`` (that
   pipeline only), which win; ``{subject}``, ``{t1}``, ``{reference}``, ``{device}``,
   ``{pipeline}`` and ``{workdir}`` (the study's folder) are substituted in the values.

An entry point without a ``device`` parameter runs on the CPU only: it gets no gpu children.

A child's identity (what a resumed study matches) is its subject, pipeline, device and the
SHA-256 of its project, entry point and filled-in parameters (``params_hash``).

Sweeps (``study/sweep.py``) add one child per combination of swept values: ``plan(...,
sweeps={pipeline: [{name: value}, ...]})``; the values are filled in like ``-P`` (and win).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_wattsup.study.subjects import Subject

BINDINGS = {
    "t1": "t1",
    "sid": "id",
    "subject": "id",
    "reference": "reference",
    "reference_mask": "reference",
}
DEVICES = ("cpu", "gpu")


class PlanError(ValueError):
    """A pipeline, parameter or device the study cannot use; ``str(exc)`` is one line."""


@dataclass
class Pipeline:
    name: str
    project_dir: Path
    entry_point: str = "main"
    params: dict[str, str] = field(default_factory=dict)  # the user's, this pipeline's
    _entry: object = None

    @classmethod
    def parse(cls, spec: str) -> Pipeline:
        name, sep, rest = spec.partition("=")
        if not sep:
            name, rest = "", spec
        uri, _, entry = rest.partition("#")
        entry = entry or "main"
        path = Path(uri).expanduser().absolute()
        if not (path / "MLproject").is_file():
            raise PlanError(
                f"pipeline {spec!r}: {path} is not an MLflow Project folder (no MLproject file); "
                "give NAME=PROJECT_DIR[#ENTRY_POINT]"
            )
        name = name or (path.name if entry == "main" else f"{path.name}.{entry}")
        if "|" in name or "'" in name:
            raise PlanError(f"pipeline {spec!r}: a name cannot contain | or '")
        return cls(name, path, entry)

    @property
    def entry(self):
        if self._entry is None:
            from mlflow.projects.utils import load_project

            project = load_project(str(self.project_dir))
            try:
                self._entry = project.get_entry_point(self.entry_point)
            except Exception as exc:
                raise PlanError(f"pipeline {self.name}: {str(exc).splitlines()[0]}") from None
        return self._entry

    @property
    def declared(self) -> dict:
        return self.entry.parameters


@dataclass
class Child:
    subject: Subject
    pipeline: Pipeline
    device: str
    params: dict[str, str]
    params_hash: str
    sweep: dict[str, str] = field(default_factory=dict)  # swept parameter -> this child's value

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.subject.id, self.pipeline.name, self.device, self.params_hash)

    @property
    def run_name(self) -> str:
        swept = "".join(f" {k}={v}" for k, v in self.sweep.items())
        return f"{self.pipeline.name} {self.subject.id} {self.device}{swept}"


def assign_params(pipelines: list[Pipeline], assignments: list[str]) -> None:
    """``KEY=VALUE`` / ``NAME.KEY=VALUE`` strings onto the pipelines that declare KEY."""
    by_name = {p.name: p for p in pipelines}
    if len(by_name) != len(pipelines):
        raise PlanError("two pipelines have the same name: name them, NAME=PROJECT_DIR[#ENTRY_POINT]")
    for a in assignments:
        key, sep, value = a.partition("=")
        if not sep or not key:
            raise PlanError(f"parameter {a!r}: give KEY=VALUE or PIPELINE.KEY=VALUE")
        name, dot, pkey = key.partition(".")
        if dot and name in by_name:
            targets, key = [by_name[name]], pkey
        else:
            targets = [p for p in pipelines if key in p.declared]
        if not targets:
            raise PlanError(
                f"parameter {a!r}: no pipeline declares {key!r} "
                f"({'; '.join(f'{p.name}: ' + ', '.join(p.declared) for p in pipelines)})"
            )
        for p in targets:
            if key not in p.declared:
                raise PlanError(
                    f"parameter {a!r}: pipeline {p.name} ({p.entry_point}) has no parameter {key!r} "
                    f"(it has {', '.join(p.declared) or 'none'})"
                )
            p.params[key] = value


def child_params(
    p: Pipeline, subject: Subject, device: str, workdir: Path, swept: dict[str, str] | None = None
) -> dict[str, str]:
    fill = {
        "subject": subject.id,
        "t1": str(subject.t1),
        "reference": str(subject.reference or ""),
        "device": device,
        "pipeline": p.name,
        "workdir": str(workdir),
    }
    out: dict[str, str] = {}
    for name in p.declared:
        if name == "device":
            out[name] = device
        elif name in BINDINGS:
            value = getattr(subject, BINDINGS[name])
            if value is not None:
                out[name] = str(value)
    for key, value in {**p.params, **(swept or {})}.items():
        try:
            out[key] = value.format(**fill)
        except (KeyError, IndexError, ValueError):
            raise PlanError(
                f"parameter {p.name}.{key}={value!r}: only {{{'}, {'.join(fill)}}} can be filled in"
            ) from None
    missing = [n for n, par in p.declared.items() if par.default is None and n not in out]
    if missing:
        raise PlanError(
            f"pipeline {p.name}: entry point {p.entry_point} needs {', '.join(missing)}: give "
            + " ".join(f"-P {p.name}.{m}=..." for m in missing)
        )
    return out


def params_hash(p: Pipeline, params: dict[str, str]) -> str:
    blob = json.dumps([str(p.project_dir), p.entry_point, params], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def plan(
    subjects: list[Subject],
    pipelines: list[Pipeline],
    devices: list[str],
    workdir: Path,
    sweeps: dict[str, list[dict[str, str]]] | None = None,
) -> list[Child]:
    bad = [d for d in devices if d not in DEVICES]
    if bad or not devices:
        raise PlanError(f"device {bad[0] if bad else '(none)'!r}: give cpu and/or gpu")
    out = []
    for p in pipelines:
        mine = devices if "device" in p.declared else [d for d in devices if d == "cpu"]
        if not mine:
            raise PlanError(f"pipeline {p.name} has no device parameter, so it runs on cpu: add --device cpu")
        for swept in (sweeps or {}).get(p.name) or [{}]:
            for device in mine:
                for s in subjects:
                    params = child_params(p, s, device, workdir, swept)
                    out.append(Child(s, p, device, params, params_hash(p, params), dict(swept)))
    return out


def spec_sha256(
    dataset_sha: str, pipelines: list[Pipeline], devices: list[str], sweeps: list | None = None
) -> str:
    """What a study asks for: the dataset, the pipelines with their parameters, the devices, and
    the sweeps (when there are any: a study without keeps the id it always had)."""
    spec = [dataset_sha, [[p.name, str(p.project_dir), p.entry_point, p.params] for p in pipelines], devices]
    blob = json.dumps(spec + [sweeps] if sweeps else spec, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()
