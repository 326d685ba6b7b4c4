"""mlflow-wattsup: the compute cost of a run (energy, carbon, runtime, model cost, quality) as
MLflow metrics, params and tags.

The package's folders are its layers, each importing only from those above it:

1. :mod:`mlflow_wattsup.meters` - hardware readers (RAPL, NVML, process tree, estimator) and the
   value types they return (:mod:`~mlflow_wattsup.meters.units`)
2. :mod:`mlflow_wattsup.analysis` - pure computations over numbers, arrays and files: carbon,
   model cost, Dice, FreeSurfer/FastSurfer log parsers, importers' readers
3. :mod:`mlflow_wattsup.tracking` - sampling, integration, attribution, stages, running a command
4. :mod:`mlflow_wattsup.mlflow_layer` - everything that talks to MLflow: the run lifecycle, the
   sink, the key contract, ``track()``, the ``wattsup`` CLI, the projects, reports and importers

``import mlflow_wattsup`` is cheap; MLflow is imported when :func:`track` is first used. The
module paths of earlier releases (``mlflow_wattsup.report``, ``mlflow_wattsup.dice``, ...) still
import, as aliases of their new homes.
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

__all__ = ["__version__", "track", "log_model_cost", "log_dice", "model_cost", "dice_files"]

_LAZY = {
    "track": "mlflow_layer.api",
    "log_model_cost": "mlflow_layer.log",
    "log_dice": "mlflow_layer.log",
    "model_cost": "analysis.flops",
    "dice_files": "analysis.dice",
}

#: modules of earlier releases -> where they live now (``import mlflow_wattsup.report`` keeps working)
_MOVED = {
    **{m: f"analysis.{m}" for m in ("carbon", "flops", "dice", "labels", "models", "pipelines", "importers")},
    **{m: f"tracking.{m}" for m in ("tracker", "runner")},
    **{
        m: f"mlflow_layer.{m}"
        for m in (
            "api",
            "log",
            "report",
            "plots",
            "plugin",
            "projects",
            "sink",
            "recording",
            "importing",
            "training",
            "cli",
        )
    },
}


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolves ``mlflow_wattsup.<old>[.<sub>]`` to the module at its new path (the same object)."""

    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if len(parts) < 2 or parts[0] != __name__ or parts[1] not in _MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        parts = spec.name.split(".")
        module = importlib.import_module(".".join([__name__, _MOVED[parts[1]], *parts[2:]]))
        self._real_spec = module.__spec__  # the import machinery overwrites it with the alias's
        return module

    def exec_module(self, module):
        module.__spec__ = self._real_spec  # nothing to run: the real module ran under its own name


if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _MovedFinder())  # before the path finder, which would load a second copy


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
