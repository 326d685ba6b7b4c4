"""Fixtures of the project tests: a FastSurfer installation (the stub, checkpoints in FastSurfer's
own format, FastSurfer's interpreter) - see support/fastsurfer_env.py."""

import pytest
from support.fastsurfer_env import env_path, fake_env, install, make_checkpoints


@pytest.fixture(scope="session")
def fs_checkpoints(tmp_path_factory):
    pytest.importorskip("torch")
    return make_checkpoints(tmp_path_factory.mktemp("fastsurfer-checkpoints"))


@pytest.fixture
def fastsurfer_py(tmp_path, monkeypatch):
    """FastSurfer's default interpreter name (python3.10) on PATH, able to import its packages."""
    py = fake_env(tmp_path / "fastsurfer-env")
    monkeypatch.setenv("PATH", env_path(py))
    return py


@pytest.fixture
def fastsurfer_home(tmp_path, fs_checkpoints, fastsurfer_py):
    return install(tmp_path / "FastSurfer", fs_checkpoints)
