"""A FastSurfer installation for tests: the stub run_fastsurfer.sh, checkpoints in FastSurfer's
own format (``model_state``, ``optimizer_state``, ``epoch``, ``best_metric`` as numpy.float64,
``config``; our definitions of its networks, random weights), and a stand-in for FastSurfer's own
Python environment (an interpreter that can import the modules FastSurfer needs)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from support.paths import STUBS

PLANES = ("coronal", "sagittal", "axial")
FILES = {
    "asegdkt": "aparc_vinn_{}_v2.0.0.pkl",
    "cerebnet": "CerebNet_{}_v1.0.0.pkl",
    "hypvinn": "HypVINN_{}_v1.1.0.pkl",
}
# FastSurfer's own parameter counts (its classes at its configs), per plane
PARAMS = {
    "asegdkt": (1854632, 1852616, 1854632),
    "hypvinn": (2581301, 2580491, 2581301),
    "cerebnet": (1795891, 1795176, 1795891),
}


def make_checkpoints(folder: Path) -> Path:
    """Nine checkpoints as FastSurfer saves them (FastSurferCNN/utils/checkpoint.py)."""
    import numpy as np
    import torch

    from mlflow_wattsup.analysis.models.fastsurfer_vinn import build

    folder.mkdir(parents=True, exist_ok=True)
    for net, pattern in FILES.items():
        for plane in PLANES:
            model = build(net, plane)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            ckpt = {
                "model_state": model.state_dict(),
                "optimizer_state": opt.state_dict(),
                "epoch": 69,
                "best_metric": np.float64(0.913),
                "config": f"MODEL:\n  MODEL_NAME: {net}\n",
            }
            torch.save(ckpt, folder / pattern.format(plane))
    return folder


def install(home: Path, checkpoints: Path | None) -> Path:
    """The stub as ``home/run_fastsurfer.sh``, ``home/checkpoints`` linked to ``checkpoints``."""
    home.mkdir(parents=True, exist_ok=True)
    script = home / "run_fastsurfer.sh"
    script.write_text(f"#!{sys.executable}\n" + (STUBS / "run_fastsurfer.py").read_text())
    script.chmod(0o755)
    if checkpoints is not None:
        (home / "checkpoints").symlink_to(checkpoints, target_is_directory=True)
    return home


def fake_env(folder: Path) -> Path:
    """An interpreter that imports what FastSurfer imports (empty stand-ins for the packages our
    own environment lacks): FastSurfer's environment, for the pre-flight check."""
    site = folder / "site"
    for mod in ("yacs", "SimpleITK", "h5py", "skimage"):
        (site / mod).mkdir(parents=True, exist_ok=True)
        (site / mod / "__init__.py").write_text("")
    py = folder / "bin" / "python3.10"
    py.parent.mkdir(parents=True, exist_ok=True)
    py.write_text(
        f'#!/bin/sh\nPYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" "$@"\n'
    )
    py.chmod(0o755)
    return py


def env_path(py: Path) -> str:
    return f"{py.parent}{os.pathsep}{os.environ.get('PATH', '')}"
