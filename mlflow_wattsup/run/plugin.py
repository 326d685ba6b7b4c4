"""The ``mlflow.run_context_provider`` plugin - hardware and configuration tags on every
run created by ``mlflow.start_run()``.

Tags: CPU model and logical CPUs, GPU models and driver, total RAM, which meters are readable here
(``wattsup.meters``), the configured region, intensity and PUE (``wattsup.config.*``, from the
``WATTSUP_*`` environment), and our version. Everything is detected once per process and cached:
a run costs a dict copy, no subprocess, no file read. ``WATTSUP_DISABLE_PLUGIN=1`` turns it off.

MLflow applies context providers only to runs made by ``mlflow.start_run()``, not to those
``mlflow run`` creates; the tracker sets the same tags itself on every run it attaches to.

MLflow imports this module (the entry point) while ``import mlflow`` runs, in every process that
imports MLflow: with ``WATTSUP_AUTOLOG=1`` set, that is where autolog is turned on
(:func:`mlflow_wattsup.run.autolog.from_environment`); unset, nothing more is imported.
"""

from __future__ import annotations

import os
import sys

from mlflow.tracking.context.abstract_context import RunContextProvider

from mlflow_wattsup.run.machine import machine_tags


class WattsupRunContextProvider(RunContextProvider):
    def in_context(self) -> bool:
        return os.environ.get("WATTSUP_DISABLE_PLUGIN", "").lower() not in ("1", "true", "yes")

    def tags(self) -> dict[str, str]:
        try:
            return dict(machine_tags())
        except Exception:  # never break someone's start_run
            return {}


def _autolog_from_env() -> None:
    if os.environ.get("WATTSUP_AUTOLOG", "").strip().lower() not in ("", "0", "false", "no", "off"):
        try:
            from mlflow_wattsup.run.autolog import from_environment

            from_environment()
        except Exception as exc:  # never break `import mlflow`
            print(f"wattsup: autolog: WATTSUP_AUTOLOG ignored ({type(exc).__name__}: {exc})", file=sys.stderr)


_autolog_from_env()
