"""Test-only start-up hook for every Python process of a gpu_check test (this folder is first on
PYTHONPATH there; never anywhere else):

- ``WATTSUP_SIM_GPU_ROOT`` set: mlflow_wattsup sees an NVIDIA driver (its control device is made
  a file that exists), so it imports ``pynvml``, which is the simulator beside this file;
- ``WATTSUP_TEST_BLOCK_IMPORTS=mlflow,...``: importing those packages fails as if they were not
  installed (the lent GPU machine has no MLflow).
"""

import importlib.abc
import os
import sys

_blocked = [m for m in os.environ.get("WATTSUP_TEST_BLOCK_IMPORTS", "").split(",") if m]


class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in _blocked):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)", name=name)
        return None


if _blocked:
    sys.meta_path.insert(0, _Block())

if os.environ.get("WATTSUP_SIM_GPU_ROOT"):
    try:
        import mlflow_wattsup.meters.nvml as _nvml

        _nvml.NVIDIA_CONTROL_DEVICE = os.devnull
    except Exception:  # the repository is not on the path: nothing to simulate for
        pass
