"""What pruning saves on deepbet's brain network, dense kernels on this machine, same run.

    python benchmarks/pruning.py [--size 256] [--reps 5] [--threads 2]

deepbet's pretrained brain-extraction network (a traced LinkNet3d, 2.1 M parameters; the one that
dominates a brain_extraction run: it sees a size^3 crop, 256^3 in deepbet) is loaded fresh per
setting and pruned: dense; L1 unstructured 0.25, 0.5, 0.75 (weights zeroed in place, shapes
unchanged); L1 channels 0.25, 0.5, 0.75 (channels between paired convs removed). Each setting's
forward pass on one random size^3 volume runs ``reps`` times, settings interleaved round-robin (so
a burst of load from other processes hits all settings alike). Per setting: params and nonzero
params, MACs (dense count) and MACs nonzero (torch FlopCounterMode, per op x fraction of nonzero
weight entries), the best (least disturbed by other processes: this project's machines are
shared) wall and CPU seconds of a forward pass, and both as a ratio to dense.

Energy: without RAPL (as on this project's VMs) mlflow-wattsup estimates CPU energy as W per
thread x CPU seconds, so the estimated energy ratio IS the CPU-seconds ratio; with RAPL, run the
sweep itself (docs/sweeps.md) to measure it. Expectation the numbers test: unstructured pruning
leaves wall and CPU ratios at ~1.0 (the dense kernels multiply the zeros), channel pruning lowers
both roughly with its MACs.
"""

from __future__ import annotations

import argparse
import time


def load():
    import torch
    from deepbet.utils import DATA_PATH

    return torch.jit.load(f"{DATA_PATH}/models/model.pt").eval()


SETTINGS = [
    ("dense", None, 0.0),
    ("unstructured 0.25", "prune", 0.25),
    ("unstructured 0.5", "prune", 0.5),
    ("unstructured 0.75", "prune", 0.75),
    ("channels 0.25", "channels", 0.25),
    ("channels 0.5", "channels", 0.5),
    ("channels 0.75", "channels", 0.75),
]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    from mlflow_wattsup.analysis.flops import counting
    from mlflow_wattsup.analysis.pruning import prune_channels, prune_unstructured, weight_counts

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(1, 1, args.size, args.size, args.size)
    models, facts = {}, {}
    for name, kind, amount in SETTINGS:
        m = load()
        if kind == "prune":
            prune_unstructured(m, amount)
        elif kind == "channels":
            prune_channels(m, amount)
        with torch.no_grad(), counting(m) as c:
            m(x)  # also the warm-up pass
        facts[name] = (*weight_counts(m), c.macs, c.macs_nonzero)
        models[name] = m
    wall = {n: [] for n in models}
    cpu = {n: [] for n in models}
    for _ in range(args.reps):
        for name, m in models.items():
            w0, c0 = time.perf_counter(), time.process_time()
            with torch.no_grad():
                m(x)
            wall[name].append(time.perf_counter() - w0)
            cpu[name].append(time.process_time() - c0)
    base_w, base_c = min(wall["dense"]), min(cpu["dense"])
    print(
        f"deepbet brain network, {args.size}^3, {args.threads} threads, best of {args.reps}, torch {torch.__version__}"
    )
    print(
        "| setting | params | params nonzero | GMAC | GMAC nonzero | wall s | wall / dense | CPU s | CPU / dense |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in models:
        params, nonzero, macs, macs_nz = facts[name]
        w, c = min(wall[name]), min(cpu[name])
        print(
            f"| {name} | {params:,} | {nonzero:,} | {macs / 1e9:.1f} | {macs_nz / 1e9:.1f} | {w:.2f} | "
            f"{w / base_w:.2f} | {c:.2f} | {c / base_c:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
