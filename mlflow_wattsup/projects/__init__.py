"""The entry points of the MLflow Projects in ``projects/`` and the root demo.

Each entry point validates every parameter first (one-line error, exit code 2), then measures its
work into the run ``mlflow run`` created (``MLFLOW_RUN_ID``) or a new one when run directly.
"""
