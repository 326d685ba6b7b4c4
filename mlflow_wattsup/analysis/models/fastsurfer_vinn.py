"""FastSurfer 2.x's networks, our own definitions at FastSurfer's configurations, for model cost.

Written from the architecture of FastSurfer's classes (Deep-MI/FastSurfer 2.3/2.4,
``FastSurferCNN/models/networks.py`` and ``sub_module.py``, ``HypVINN/models/networks.py``,
``CerebNet/models``) and their configs; same layers, same parameter counts, not their code:

* **FastSurferVINN** (asegdkt): an input block of 4 convolutions (7 slices -> 32 filters, 3x3) at
  the image's resolution, a resampling to the network's 1 mm 256x256 grid, four encoder levels, a
  bottleneck and four decoder levels of competitive dense blocks (4 convolutions, 71 filters,
  maxout), resampling back, an output block over the concatenation (103 -> 71) and a 1x1
  classifier: 79 classes (coronal, axial) or 51 (sagittal); 1,854,632 / 1,852,616 parameters.
* **HypVINN**: the same with two input blocks (T1 and T2, 7 slices each, 64 filters) fused by two
  learnt weights, 80 filters, 27 / 17 classes: 2,581,301 / 2,580,491 parameters.
* **CerebNet**: FastSurfer 1.x's FastSurferCNN (:mod:`.fastsurfer_cnn`: 64 filters of 5x5) on
  7 slices of a 128^3 cerebellum patch, 28 / 17 classes: 1,795,891 / 1,795,176 parameters.

The resampling is bilinear interpolation (no parameters, not counted as MACs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mlflow_wattsup.analysis.models.fastsurfer_cnn import FastSurferCNN

PLANES = ("coronal", "sagittal", "axial")
# per network: (input channels per modality, modalities, interpol filters, filters, classes cor/sag/ax)
CONFIGS = {
    "asegdkt": dict(channels=7, modalities=1, interpol=32, filters=71, classes=(79, 51, 79)),
    "hypvinn": dict(channels=7, modalities=2, interpol=64, filters=80, classes=(27, 17, 27)),
}
CEREBNET_CLASSES = (28, 17, 28)
CEREBNET_PATCH = 128  # CerebNet's DATA.PATCH_SIZE: slices per view and their side
BASE_GRID = 256  # MODEL.HEIGHT/WIDTH at BASE_RES 1.0 mm


class Dense4(nn.Module):
    """Competitive dense block of FastSurfer 2.x: four kxk convolutions, batch norms, PReLU,
    maxout between successive outputs. ``mode``: ``input`` (batch-norm the raw input, the first
    output is not compared with it), ``inner`` (maxout with the block input) or ``output``
    (takes the concatenation of decoder output and input-block skip)."""

    def __init__(self, in_ch: int, filters: int, mode: str = "inner", kernel: int = 3):
        super().__init__()
        pad = kernel // 2
        self.mode = mode
        self.bn_in = nn.BatchNorm2d(in_ch) if mode == "input" else None
        self.convs = nn.ModuleList(
            [nn.Conv2d(in_ch if i == 0 else filters, filters, kernel, padding=pad) for i in range(4)]
        )
        self.bns = nn.ModuleList([nn.BatchNorm2d(filters) for _ in range(4)])
        self.prelu = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "input":
            y = self.bns[0](self.convs[0](self.bn_in(x)))
            prev = y
        else:
            y = self.bns[0](self.convs[0](self.prelu(x)))
            prev = torch.maximum(x, y) if self.mode == "inner" else y
        for i in (1, 2):
            y = self.bns[i](self.convs[i](self.prelu(prev)))
            prev = torch.maximum(prev, y)
        return self.bns[3](self.convs[3](self.prelu(prev)))


class VINN(nn.Module):
    """FastSurferVINN (``modalities=1``) or HypVINN (``modalities=2``) for one view."""

    def __init__(
        self, channels: int, modalities: int, interpol: int, filters: int, classes: int, grid: int = BASE_GRID
    ):
        super().__init__()
        self.grid = grid
        self.inputs = nn.ModuleList([Dense4(channels, interpol, "input") for _ in range(modalities)])
        self.mod_weights = (
            nn.Parameter(torch.full((modalities,), 1.0 / modalities)) if modalities > 1 else None
        )
        self.encoders = nn.ModuleList(
            [Dense4(interpol, filters, "input")] + [Dense4(filters, filters) for _ in range(3)]
        )
        self.bottleneck = Dense4(filters, filters)
        self.decoders = nn.ModuleList([Dense4(filters, filters) for _ in range(4)])
        self.output = Dense4(filters + interpol, filters, "output")
        self.classifier = nn.Conv2d(filters, classes, 1)
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.tensor_split(x, len(self.inputs), dim=1)
        skips0 = [blk(p) for blk, p in zip(self.inputs, parts, strict=True)]
        if self.mod_weights is not None:
            w = torch.softmax(self.mod_weights, 0)
            skip0 = sum(wi * s for wi, s in zip(w, skips0, strict=True))
        else:
            skip0 = skips0[0]
        size = skip0.shape[2:]
        h = F.interpolate(skip0, size=(self.grid, self.grid), mode="bilinear", align_corners=False)
        skips = []
        for enc in self.encoders:
            s = enc(h)
            h, idx = self.pool(s)
            skips.append((s, idx))
        h = self.bottleneck(h)
        for dec, (s, idx) in zip(self.decoders, reversed(skips), strict=True):
            h = dec(torch.maximum(self.unpool(h, idx, output_size=s.shape), s))
        h = F.interpolate(h, size=tuple(size), mode="bilinear", align_corners=False)
        return self.classifier(self.output(torch.cat((h, skip0), 1)))


def build(net: str, plane: str, grid: int = BASE_GRID) -> nn.Module:
    """Our definition of FastSurfer's ``net`` (asegdkt | hypvinn | cerebnet) for ``plane``."""
    i = PLANES.index(plane)
    if net == "cerebnet":
        return FastSurferCNN(7, CEREBNET_CLASSES[i])
    c = CONFIGS[net]
    return VINN(c["channels"], c["modalities"], c["interpol"], c["filters"], c["classes"][i], grid)


def input_shape(net: str, size: int) -> tuple[int, int, int, int]:
    """One forward pass: batch 1, slices (x modalities), side."""
    if net == "cerebnet":
        return (1, 7, CEREBNET_PATCH, CEREBNET_PATCH)
    c = CONFIGS[net]
    return (1, c["channels"] * c["modalities"], size, size)


def slices_per_view(net: str, size: int) -> int:
    return CEREBNET_PATCH if net == "cerebnet" else size


def slice_macs(net: str, plane: str, size: int) -> int:
    """MACs of one forward pass, counted by torch's FlopCounterMode on the meta device (shapes
    only: instant, no memory): convolutions (2 FLOPs per MAC), as FastSurfer's own classes give."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = build(net, plane).eval()
        x = torch.empty(input_shape(net, size))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return int(counter.get_total_flops()) // 2


def plane_costs(net: str, size: int) -> tuple[dict[str, int], dict[str, int]]:
    """(MACs of one slice, parameters) per plane; ``size``: the conformed volume's side."""
    macs, params = {}, {}
    for plane in PLANES:
        with torch.device("meta"):
            params[plane] = sum(p.numel() for p in build(net, plane).parameters())
        macs[plane] = slice_macs(net, plane, size)
    return macs, params
