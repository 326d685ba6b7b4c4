"""End-to-end check of ``projects/fastsurfer`` against FastSurfer 2.x's own code (cannot run in CI).

FastSurfer's code from its public repository, its dependencies from PyPI in a separate venv, its
own network classes with random weights saved in its own checkpoint format (no weights can be
downloaded), a real T1 (Colin27 from Debian's ``mricron-data``), on CPU, through ``mlflow run``.
Then the run is checked against what FastSurfer itself logged.

Exact steps (as run on this project's 2-core machines, 2026-11):

1. FastSurfer's source, stable branch (2.3.0): ``git clone https://github.com/Deep-MI/FastSurfer``
   (here: a stored snapshot, ``git -C <gitdir> archive stable``; binary images can be left out),
   to ``$FS_HOME`` (default ``/work/fastsurfer``); make the scripts executable.
2. Its environment, separate from ours:
   ``python3 -m venv /work/venvs/fastsurfer`` then
   ``/work/venvs/fastsurfer/bin/pip install torch==2.4.1 torchvision==0.19.1 'numpy>=1.25,<2' h5py lapy
   matplotlib 'nibabel>=5.1' pandas pyyaml requests scikit-image scikit-learn 'scipy>=1.10.1,!=1.13.0'
   simpleitk tensorboard torchio tqdm yacs`` (FastSurfer 2.3 pins torch 2.4; PyPI's 2.4.1 wheel is
   the CUDA build, which runs on CPU; its nvidia-* packages come along).
3. A T1: ``apt-get install -y mricron-data`` -> ``/usr/share/mricron/templates/ch2.nii.gz``
   (Colin27 with skull, 181x217x181, 1 mm).
4. ``python benchmarks/fastsurfer_e2e.py checkpoints``: nine checkpoints (asegdkt FastSurferVINN,
   HypVINN, CerebNet; coronal/sagittal/axial) built with FastSurfer's own ``build_model`` at its own
   configs, random weights, saved as FastSurfer saves them (``model_state``, ``optimizer_state``,
   ``epoch``, ``best_metric`` as numpy.float64, ``config``) into ``$FS_HOME/checkpoints``.
5. ``nice -n 19 python benchmarks/fastsurfer_e2e.py run`` (background it: ~30 min of 2 free cores
   for the asegdkt network alone): ``mlflow run projects/fastsurfer --env-manager local`` with
   ``py=/work/venvs/fastsurfer/bin/python``, ``device=cpu``, ``threads=2``, ``no_hypothal=true``,
   ``no_cereb=true``, into ``sqlite:///$OUT/mlflow.db``, subjects in ``$OUT/subjects``.
6. ``python benchmarks/fastsurfer_e2e.py check``: prints wall time, every stage, and compares the
   logged plane durations with FastSurfer's own ``... finished in <s> seconds`` lines, ``params/*``
   with the tensor counts of the checkpoints (read with FastSurfer's venv), ``macs/*``.

Measured 2026-11-27 (FastSurfer stable 2.3.0, torch 2.4.1+cu121 wheel on CPU, numpy 1.26; 2 shared
cores, under nice 19): the three asegdkt planes ran, FastSurfer logged 3672.6343 / 849.5891 /
688.9774 s (coronal / sagittal / axial; coronal starved by other jobs) and the run logged exactly
those as ``stage/<plane>/duration_s``; ``view_aggregation`` 17.0 s; ``asegdkt`` 5245.6 s; the
run 5245.9 s wall, 2203.7 CPU s, 4.434 Wh (estimate: no RAPL here). Then FastSurfer itself stopped
in ``reduce_to_aseg.py`` (``assert labels.max() != 0`` in ``flip_wm_islands``): random weights give
no white-matter component, so bias field and segstats never run with random checkpoints (exit 1,
run FAILED; this run logged no model cost, which a failed run now logs for the networks whose
planes all finished; ``check`` computes it: params/asegdkt 5,561,880 = the tensors
of FastSurfer's own checkpoints, macs/asegdkt 34.95 T).

Environment: ``FS_HOME`` (FastSurfer), ``FS_PY`` (its interpreter), ``E2E_OUT`` (default
``/work/fs_e2e``), ``E2E_T1``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FS_HOME = Path(os.environ.get("FS_HOME", "/work/fastsurfer"))
FS_PY = os.environ.get("FS_PY", "/work/venvs/fastsurfer/bin/python")
OUT = Path(os.environ.get("E2E_OUT", "/work/fs_e2e"))
T1 = os.environ.get("E2E_T1", "/usr/share/mricron/templates/ch2.nii.gz")
SID = "colin27"
EXPERIMENT = "fastsurfer-e2e"

MAKE_CHECKPOINTS = r"""
import sys
from pathlib import Path
import numpy as np
import torch
root = Path(sys.argv[1]); sys.path.insert(0, str(root)); torch.manual_seed(0)

def save(model, cfg_dump, path):
    opt = torch.optim.Adam(model.parameters())
    torch.save({"model_state": model.state_dict(), "optimizer_state": opt.state_dict(), "epoch": 0,
                "best_metric": np.float64(0.0), "config": cfg_dump}, path)
    print(path.name, sum(p.numel() for p in model.parameters()))

(root / "checkpoints").mkdir(exist_ok=True)
from FastSurferCNN.models.networks import build_model as fs_build
from FastSurferCNN.run_prediction import set_up_cfgs as fs_cfgs
for plane in ("coronal", "sagittal", "axial"):
    cfg = fs_cfgs(root / f"FastSurferCNN/config/FastSurferVINN_{plane}.yaml", 1)
    save(fs_build(cfg), cfg.dump(), root / f"checkpoints/aparc_vinn_{plane}_v2.0.0.pkl")
from HypVINN.models.networks import build_model as hv_build
from HypVINN.run_prediction import set_up_cfgs as hv_cfgs
for plane in ("coronal", "sagittal", "axial"):
    cfg = hv_cfgs(str(root / f"HypVINN/config/HypVINN_{plane}_v1.1.0.yaml"), None, 1)
    save(hv_build(cfg), cfg.dump(), root / f"checkpoints/HypVINN_{plane}_v1.1.0.pkl")
from CerebNet.config.cerebnet import get_cfg_cerebnet
from CerebNet.models.networks import build_model as cb_build
cfg = get_cfg_cerebnet()
for plane in ("coronal", "sagittal", "axial"):
    params = {k.lower(): v for k, v in dict(cfg.MODEL).items()}
    params["plane"] = plane
    if plane == "sagittal":
        params["num_classes"] = params["num_classes_sag"]
    save(cb_build(params), cfg.dump(), root / f"checkpoints/CerebNet_{plane}_v1.0.0.pkl")
"""

COUNT_CHECKPOINT = r"""
import sys, torch
ck = torch.load(sys.argv[1], map_location="cpu", weights_only=False)
print(sum(v.numel() for k, v in ck["model_state"].items() if "running_" not in k and "num_batches" not in k))
"""


def env() -> dict[str, str]:
    e = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONPATH=str(REPO))
    e["MLFLOW_TRACKING_URI"] = f"sqlite:///{OUT}/mlflow.db"
    e["MLFLOW_EXPERIMENT_NAME"] = EXPERIMENT
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    return e


def checkpoints() -> None:
    subprocess.run([FS_PY, "-c", MAKE_CHECKPOINTS, str(FS_HOME)], check=True)


def run() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    cmd = [
        str(Path(sys.executable).parent / "mlflow"), "run", str(REPO / "projects" / "fastsurfer"),
        "--env-manager", "local",
        "-P", f"t1={T1}", "-P", f"sid={SID}", "-P", f"sd={OUT / 'subjects'}", "-P", "device=cpu",
        "-P", "threads=2", "-P", f"fastsurfer_home={FS_HOME}", "-P", f"py={FS_PY}",
        "-P", "no_hypothal=true", "-P", "no_cereb=true",
    ]  # fmt: skip
    t0 = time.time()
    code = subprocess.run(cmd, env=env()).returncode
    print(f"mlflow run exit {code}, wall {time.time() - t0:.1f} s")
    return code


def check() -> int:
    from mlflow.tracking import MlflowClient

    os.environ.update(env())
    client = MlflowClient()
    exp = client.get_experiment_by_name(EXPERIMENT)
    [latest] = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
    m, tags = latest.data.metrics, latest.data.tags
    print(
        f"run {latest.info.run_id} status {latest.info.status} (wattsup.status {tags.get('wattsup.status')})"
    )

    def num(key: str, fmt: str = ".1f") -> str:
        return format(m[key], fmt) if key in m else "-"

    print(f"wall duration_s {num('duration_s')}  cpu_time_s {num('cpu_time_s')}  energy_kwh "
          f"{num('energy_kwh', '.6f')} (cpu source {tags.get('wattsup.source.cpu')})")  # fmt: skip
    print(f"device {tags.get('wattsup.device')} / FastSurfer said {tags.get('wattsup.fastsurfer.device')}; "
          f"cpus {tags.get('wattsup.cpus')}; modules {tags.get('wattsup.fastsurfer.modules')}")  # fmt: skip
    stages = sorted({k.split("/")[1] for k in m if k.startswith("stage/") and k.endswith("/duration_s")})
    for s in stages:
        print(
            f"  stage {s:18s} {m[f'stage/{s}/duration_s']:10.4f} s  cpu {m[f'stage/{s}/cpu_time_s']:9.1f} s"
        )
    # this run's part of the appended log: from the last "Version:" line on
    text = (OUT / "subjects" / SID / "scripts" / "deep-seg.log").read_text()
    text = text[text.rfind("Version: ") :]
    ok = True
    for plane, secs in re.findall(
        r"(Coronal|Sagittal|Axial) inference on .* finished in ([\d.]+) seconds", text
    ):
        got = m.get(f"stage/{plane.lower()}/duration_s")
        same = got is not None and abs(got - float(secs)) < 1e-6
        ok &= same
        print(
            f"  {plane.lower():9s} FastSurfer logged {float(secs):.4f} s, we logged {got}: {'equal' if same else 'DIFFERENT'}"
        )
    for net in ("asegdkt", "cerebnet", "hypvinn"):
        if f"params/{net}" in m:
            files = sorted((FS_HOME / "checkpoints").glob({"asegdkt": "aparc_vinn_*", "cerebnet": "CerebNet_*",
                                                            "hypvinn": "HypVINN_*"}[net]))  # fmt: skip
            counted = sum(
                int(subprocess.check_output([FS_PY, "-c", COUNT_CHECKPOINT, str(f)])) for f in files
            )
            same = counted == m[f"params/{net}"]
            ok &= same
            print(f"  params/{net} {m[f'params/{net}']:.0f} vs tensors in its checkpoints {counted}: "
                  f"{'equal' if same else 'DIFFERENT'}; macs/{net} {m[f'macs/{net}']:.4g}")  # fmt: skip
    print(f"params {m.get('params')}, macs {m.get('macs')}, source {tags.get('wattsup.params_source')}, "
          f"{tags.get('wattsup.flops_input_shape')}")  # fmt: skip
    if "params" not in m:  # a run stopped early logs no model cost: the same computation, here
        from mlflow_wattsup.analysis.models.fastsurfer_cost import model_cost

        cost = model_cost(["asegdkt"], {}, FS_HOME, OUT / "subjects" / SID / "mri" / "orig.mgz")
        for k, v in sorted(cost.metrics.items()):
            print(f"  (computed now) {k} {v}")
        counted = sum(
            int(subprocess.check_output([FS_PY, "-c", COUNT_CHECKPOINT, str(f)]))
            for f in sorted((FS_HOME / "checkpoints").glob("aparc_vinn_*"))
        )
        print(f"  asegdkt checkpoints' tensors counted by FastSurfer's torch: {counted}")
        ok &= counted == cost.metrics["params/asegdkt"]
    return 0 if ok else 1


if __name__ == "__main__":
    step = sys.argv[1] if len(sys.argv) > 1 else "check"
    sys.exit({"checkpoints": checkpoints, "run": run, "check": check}[step]() or 0)
