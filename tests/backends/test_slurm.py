"""The SLURM backend as MLflow loads it: one class each for the backend and its submitted run,
defined once at module level, with MLflow's interface, and a module that imports without MLflow
(the real cluster runs are in tests/integration/test_slurm_backend.py)."""

import inspect
import subprocess
import sys

from mlflow_wattsup.backends import slurm


def test_importing_the_backend_module_does_not_import_mlflow():
    code = "import sys, mlflow_wattsup.backends.slurm; print('mlflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_entry_point_returns_the_module_level_class_every_time():
    a, b = slurm.slurm_backend(), slurm.slurm_backend()
    assert type(a) is type(b) is slurm.SlurmBackend
    assert slurm.SlurmSubmittedRun.__module__ == slurm.__name__ == slurm.SlurmBackend.__module__


def abstract_names(cls) -> set[str]:
    return {n for n, v in vars(cls).items() if getattr(v, "__isabstractmethod__", False)}


def test_the_classes_have_mlflows_interface():
    from mlflow.projects.backend.abstract_backend import AbstractBackend
    from mlflow.projects.submitted_run import SubmittedRun

    assert abstract_names(AbstractBackend) == {"run"}
    assert inspect.signature(slurm.SlurmBackend.run) == inspect.signature(AbstractBackend.run)
    names = abstract_names(SubmittedRun)
    assert names == {"wait", "get_status", "cancel", "run_id"}
    for name in names:
        ours = inspect.getattr_static(slurm.SlurmSubmittedRun, name)
        theirs = inspect.getattr_static(SubmittedRun, name)
        assert isinstance(ours, property) == isinstance(theirs, property), name
