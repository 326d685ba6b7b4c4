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

__all__ = ["__version__", "track"]


def __getattr__(name):
    if name == "track":
        from .api import track

        return track
    raise AttributeError(f"module 'mlflow_wattsup' has no attribute {name!r}")
