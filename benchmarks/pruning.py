"""What pruning saves on deepbet's brain network, dense kernels on this machine, same run.

    python benchmarks/pruning.py [--model deepbet|unet2d] [--size 256] [--reps 5] [--threads 2]

deepbet's pretrained brain-extraction network (a traced LinkNet3d, 2.1 M parameters; the one that
dominates a brain_extraction run: it sees a size^3 crop, 256^3 in deepbet) is loaded fresh per
setting and pruned: dense; L1 unstructured 0.25, 0.5, 0.75 (weights zeroed in place, shapes
unchanged); L1 channels 0.25, 0.5, 0.75 (channels between paired convs removed). Each setting's
forward pass on one random size^3 volume runs ``reps`` times, settings interleaved round-robin (so
a burst of load from other processes hits all settings alike). Per setting: params and nonzero
params, MACs (dense count) and MACs nonzero (torch FlopCounterMode, per op x fraction of nonzero
weight entries), the best (least disturbed by other processes: this project's machines are
shared) wall and CPU seconds of a forward pass, and both as a ratio to dense.

``--model unet2d``: the same settings on a 2D U-Net (mateuszbuda/brain-segmentation-pytorch's
layout: conv-BN-ReLU-conv-BN-ReLU blocks, 32 to 512 features; random weights, timing only) on a
batch of 8 3 x size x size slices: a network whose every block is a prunable pair and whose
convolutions are compute-bound, for contrast with deepbet's memory-bound 3D convolutions.

Energy: without RAPL (as on this project's VMs) mlflow-wattsup estimates CPU energy as W per
thread x CPU seconds, so the estimated energy ratio IS the CPU-seconds ratio; with RAPL, run the
sweep itself (docs/sweeps.md) to measure it. What to expect (measured, docs/sweeps.md):
unstructured pruning leaves wall and CPU time at ~1.0x dense at every level (the dense kernels
multiply the zeros); channel removal lowers them roughly with the MACs on the compute-bound 2D
U-Net, but hardly on deepbet, whose small 3D convolutions are memory-bound (and below ~8 input
channels fall back to PyTorch's slow 3D kernel).
"""

from __future__ import annotations

import argparse
import time


def load(model: str):
    import torch

    if model == "unet2d":
        torch.manual_seed(0)
        return unet2d().eval()
    from deepbet.utils import DATA_PATH

    return torch.jit.load(f"{DATA_PATH}/models/model.pt").eval()


def unet2d(cin: int = 3, cout: int = 1, f: int = 32):
    import torch
    from torch import nn

    def block(a, b):
        return nn.Sequential(
            nn.Conv2d(a, b, 3, padding=1, bias=False),
            nn.BatchNorm2d(b),
            nn.ReLU(inplace=True),
            nn.Conv2d(b, b, 3, padding=1, bias=False),
            nn.BatchNorm2d(b),
            nn.ReLU(inplace=True),
        )

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = nn.ModuleList(
                [block(cin, f), block(f, 2 * f), block(2 * f, 4 * f), block(4 * f, 8 * f)]
            )
            self.pool = nn.MaxPool2d(2, 2)
            self.bottleneck = block(8 * f, 16 * f)
            self.up = nn.ModuleList(
                [nn.ConvTranspose2d(2 ** (i + 1) * f, 2**i * f, 2, stride=2) for i in (3, 2, 1, 0)]
            )
            self.dec = nn.ModuleList([block(2 ** (i + 1) * f, 2**i * f) for i in (3, 2, 1, 0)])
            self.out = nn.Conv2d(f, cout, 1)

        def forward(self, x):
            skips = []
            for e in self.enc:
                x = e(x)
                skips.append(x)
                x = self.pool(x)
            x = self.bottleneck(x)
            for up, dec, skip in zip(self.up, self.dec, reversed(skips), strict=True):
                x = dec(torch.cat((up(x), skip), dim=1))
            return torch.sigmoid(self.out(x))

    return UNet()


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
    p.add_argument("--model", choices=["deepbet", "unet2d"], default="deepbet")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import torch

    from mlflow_wattsup.analysis.flops import counting
    from mlflow_wattsup.analysis.pruning import prune_channels, prune_unstructured, weight_counts

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == "unet2d":
        x = torch.rand(8, 3, args.size, args.size)
    else:
        x = torch.rand(1, 1, args.size, args.size, args.size)
    models, facts = {}, {}
    for name, kind, amount in SETTINGS:
        m = load(args.model)
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
    what = (
        f"deepbet brain network, 1 x {args.size}^3"
        if args.model == "deepbet"
        else f"2D U-Net, 8 x 3 x {args.size}^2"
    )
    print(f"{what}, {args.threads} threads, best of {args.reps}, torch {torch.__version__}")
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
