"""Parameter sweeps in a study: ``--sweep [PIPELINE.]NAME=V1,V2,...``.

A sweep gives a pipeline's parameter NAME several values; the study runs one child per value (per
subject and device), each with ``-P NAME=V``. Several sweeps multiply: a pipeline gets one child
per combination of the values of the sweeps that apply to it, and none more for sweeps of other
pipelines. ``NAME`` alone sweeps every pipeline that declares NAME; ``PIPELINE.NAME`` only that
one. Values are taken as written (``0.5`` and ``.5`` are two values) and may use the same
``{subject}``, ``{device}``... placeholders as ``-P``.

Children carry their swept values as tags (``wattsup.sweep.<NAME>``); the values are part of the
child's parameters, so of its ``params_hash``: a resumed study matches each value's children.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from mlflow_wattsup.sink import keys
from mlflow_wattsup.study.plan import BINDINGS, Pipeline, PlanError


@dataclass(frozen=True)
class Sweep:
    pipelines: tuple[str, ...]  # the pipelines it applies to
    name: str
    values: tuple[str, ...]
    spec: str  # as the user wrote it


def parse(specs: list[str], pipelines: list[Pipeline]) -> list[Sweep]:
    """``[PIPELINE.]NAME=V1,V2,...`` strings -> sweeps; :class:`PlanError` (one line) for a name no
    pipeline declares, a value list with an empty or repeated value, a parameter swept twice or
    also given with ``-P``, or one the study fills in itself (device, t1, subject...)."""
    by_name = {p.name: p for p in pipelines}
    out: list[Sweep] = []
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise PlanError(
                f"--sweep {spec!r}: give [PIPELINE.]NAME=V1,V2,... (e.g. --sweep prune=0,0.25,0.5)"
            )
        head, dot, tail = key.partition(".")
        if dot and head in by_name:
            targets, name = [by_name[head]], tail
            undeclared = [p for p in targets if name not in p.declared]
            if undeclared:
                raise PlanError(
                    f"--sweep {spec!r}: pipeline {head} ({undeclared[0].entry_point}) has no parameter "
                    f"{name!r} (it has {', '.join(undeclared[0].declared) or 'none'})"
                )
        else:
            name = key
            targets = [p for p in pipelines if name in p.declared]
            if not targets:
                raise PlanError(
                    f"--sweep {spec!r}: no pipeline declares {name!r} "
                    f"({'; '.join(f'{p.name}: ' + ', '.join(p.declared) for p in pipelines)})"
                )
        if name == "device":
            raise PlanError(
                f"--sweep {spec!r}: devices are a study dimension of their own: use --device cpu --device gpu"
            )
        if name in BINDINGS:
            raise PlanError(f"--sweep {spec!r}: {name} is filled from each subject; it cannot be swept")
        values = [v.strip() for v in text.split(",")]
        if not text.strip() or any(not v for v in values):
            raise PlanError(f"--sweep {spec!r}: give one or more values, comma separated, none empty")
        dup = sorted({v for v in values if values.count(v) > 1})
        if dup:
            raise PlanError(f"--sweep {spec!r}: value {dup[0]!r} is given twice")
        for p in targets:
            if (p.name, name) in seen:
                raise PlanError(
                    f"--sweep {spec!r}: pipeline {p.name} already sweeps {name!r}; give one --sweep per parameter"
                )
            if name in p.params:
                raise PlanError(
                    f"--sweep {spec!r}: {p.name}.{name} is also given with -P {name}={p.params[name]}; give it one way"
                )
            seen.add((p.name, name))
        out.append(Sweep(tuple(p.name for p in targets), name, tuple(values), spec))
    return out


def combinations(sweeps: list[Sweep], pipelines: list[Pipeline]) -> dict[str, list[dict[str, str]]]:
    """Per pipeline, every combination of the values of the sweeps that apply to it ({name: value}),
    in the order the values were given (the first sweep varies slowest)."""
    out: dict[str, list[dict[str, str]]] = {}
    for p in pipelines:
        mine = [s for s in sweeps if p.name in s.pipelines]
        if mine:
            out[p.name] = [
                dict(zip([s.name for s in mine], combo, strict=True))
                for combo in itertools.product(*(s.values for s in mine))
            ]
    return out


def names(sweeps: list[Sweep]) -> list[str]:
    """The swept parameter names, once each, in the order given."""
    return list(dict.fromkeys(s.name for s in sweeps))


def spec(sweeps: list[Sweep]) -> list:
    """What the study's identity (``spec_sha256``) takes from the sweeps."""
    return [[list(s.pipelines), s.name, list(s.values)] for s in sweeps]


def parent_params(sweeps: list[Sweep]) -> dict[str, str]:
    """The parent run's params: ``wattsup.study.sweep.<pipeline>.<name>`` = ``V1,V2,...``."""
    return {keys.study_sweep_param(p, s.name): ",".join(s.values) for s in sweeps for p in s.pipelines}
