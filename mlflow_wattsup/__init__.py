"""mlflow-wattsup: the compute cost of a run (energy, carbon, runtime, model cost, quality) as
MLflow metrics, params and tags.

Layers, each importing only from those above it:

1. :mod:`mlflow_wattsup.meters` - hardware readers (RAPL, NVML, process tree, estimator)
2. :mod:`~mlflow_wattsup.carbon` and the other pure computations
3. :mod:`~mlflow_wattsup.tracker` - sampling, integration, attribution, stages
4. the MLflow layer - :mod:`~mlflow_wattsup.sink`, :mod:`~mlflow_wattsup.recording`,
   :mod:`~mlflow_wattsup.api`, :mod:`~mlflow_wattsup.cli`

``import mlflow_wattsup`` is cheap; MLflow is imported when :func:`track` is first used.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "track", "log_model_cost", "log_dice", "model_cost", "dice_files"]

_LAZY = {
    "track": "api",
    "log_model_cost": "log",
    "log_dice": "log",
    "model_cost": "flops",
    "dice_files": "dice",  # the function dice() lives in mlflow_wattsup.dice
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'mlflow_wattsup' has no attribute {name!r}")
