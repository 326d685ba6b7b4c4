"""Tests that start real services (a one-node SLURM cluster, headless Chromium, `mlflow server`,
Docker and Podman daemons, PostgreSQL): each is marked ``integration`` here, so that
``pytest -m "not integration and not slow"`` is the fast suite."""

import pytest


def pytest_collection_modifyitems(items):
    here = __file__.rsplit("/", 1)[0]
    for item in items:
        if str(item.path).startswith(here):
            item.add_marker(pytest.mark.integration)
