"""Callbacks for the training loops people already have: PyTorch Lightning
(:class:`~mlflow_wattsup.run.callbacks.lightning.LightningCallback`) and Hugging Face Transformers
(:class:`~mlflow_wattsup.run.callbacks.transformers.TransformersCallback`), both on the one
framework-neutral measurement of :mod:`~mlflow_wattsup.run.callbacks.measure`.

Nothing here imports a framework: each callback module imports its own (with absolute imports, so
``mlflow_wattsup.run.callbacks.lightning`` never shadows the ``lightning`` package) and is loaded
only when ``mlflow_wattsup.LightningCallback`` / ``mlflow_wattsup.TransformersCallback`` is used.
See ``docs/callbacks.md``.
"""
