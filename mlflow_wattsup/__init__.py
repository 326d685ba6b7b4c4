"""mlflow-wattsup: the compute cost of a run (energy, carbon, runtime, model cost, quality) as
MLflow metrics, params and tags.

The package's folders are its layers; a module imports only from its own folder and the folders
listed before it (``tests/test_layers.py`` reads this order and enforces it):

1. :mod:`~mlflow_wattsup.meters` - hardware readers (RAPL, NVML, process tree, estimator) and the
   value types they return (:mod:`~mlflow_wattsup.meters.units`); no MLflow
2. :mod:`~mlflow_wattsup.analysis` - pure computations over numbers, arrays and files: carbon,
   model cost, Dice, FreeSurfer/FastSurfer log parsers, importers' readers; no MLflow
3. :mod:`~mlflow_wattsup.tracking` - sampling, integration, attribution, stages, running a
   command; no MLflow
4. :mod:`~mlflow_wattsup.sink` - the key contract and everything we write to a tracking store
5. :mod:`~mlflow_wattsup.report` - reading runs back: comparison tables, descriptions, plots, links
6. :mod:`~mlflow_wattsup.run` - one measured run: lifecycle, recording, ``track()``, training,
   importing, the joined distributed run, the one-shot loggers, the run-context plugin
7. :mod:`~mlflow_wattsup.backends` - where MLflow Project runs execute (this machine, SLURM)
8. :mod:`~mlflow_wattsup.study` - a cohort x pipelines x devices as a parent run and its children
9. :mod:`~mlflow_wattsup.projects` - the entry points of the MLflow Projects in ``projects/``
10. :mod:`~mlflow_wattsup.cli` - the ``wattsup`` command line

``import mlflow_wattsup`` is cheap; MLflow is imported when :func:`track` or :func:`autolog` is
first used.
"""

import importlib

__version__ = "0.1.0"

#: the layers, lowest first: a module imports only from its own folder and those before it
LAYERS = ("meters", "analysis", "tracking", "sink", "report", "run", "backends", "study", "projects", "cli")

#: the training-loop callbacks (docs/callbacks.md) import their framework on first use
__all__ = [
    "__version__",
    "track",
    "autolog",
    "log_model_cost",
    "log_dice",
    "model_cost",
    "dice_files",
    "LightningCallback",
    "TransformersCallback",
]

_LAZY = {
    "track": "run.track",
    "autolog": "run.autolog",
    "log_model_cost": "run.log",
    "log_dice": "run.log",
    "model_cost": "analysis.flops",
    "dice_files": "analysis.dice",
    "LightningCallback": "run.callbacks.lightning",
    "TransformersCallback": "run.callbacks.transformers",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
