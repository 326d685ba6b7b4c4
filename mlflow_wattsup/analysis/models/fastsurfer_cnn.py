"""A FastSurferCNN-architecture 2D network (Henschel et al., NeuroImage 2020), our own definition.

Published configuration: multi-slice input (7 slices of 256x256), four encoder levels, a
bottleneck and four decoder levels of *competitive dense blocks* (maxout instead of
concatenation), 64 filters of 5x5 (and a 1x1 at the end of each block), max-pool/unpool with
indices, and a 1x1 classifier over 79 classes: 1,799,206 parameters and 30.8 GMAC per 256x256
slice. Used to report the model cost of a FastSurfer run when FastSurfer's own classes cannot be
imported (tagged as such), and, smaller, by ``projects/segmentation``.
"""

from __future__ import annotations

import torch
from torch import nn


class DenseBlock(nn.Module):
    """Competitive dense block: (PReLU -> conv kxk -> BN -> maxout) x2, PReLU -> conv 1x1 -> BN.

    ``first`` blocks take the raw input: batch-norm it, and skip the first maxout (the channel
    counts differ)."""

    def __init__(
        self, in_channels: int, filters: int = 64, kernel: int = 5, first: bool = False, out_bn: bool = True
    ):
        super().__init__()
        pad = kernel // 2
        self.first = first
        self.bn0 = nn.BatchNorm2d(in_channels) if first else None
        self.conv0 = nn.Conv2d(in_channels, filters, kernel, padding=pad)
        self.conv1 = nn.Conv2d(filters, filters, kernel, padding=pad)
        self.conv2 = nn.Conv2d(filters, filters, 1)
        self.bn1 = nn.BatchNorm2d(filters)
        self.bn2 = nn.BatchNorm2d(filters)
        self.bn3 = nn.BatchNorm2d(filters) if out_bn else None
        self.prelu = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.first:
            x1 = self.bn1(self.conv0(self.bn0(x)))
        else:
            x1 = torch.maximum(x, self.bn1(self.conv0(self.prelu(x))))
        x2 = torch.maximum(x1, self.bn2(self.conv1(self.prelu(x1))))
        out = self.conv2(self.prelu(x2))
        return self.bn3(out) if self.bn3 is not None else out


class FastSurferCNN(nn.Module):
    """``in_channels`` slices in, ``num_classes`` logits out, ``levels`` pooling levels."""

    def __init__(
        self, in_channels: int = 7, num_classes: int = 79, filters: int = 64, kernel: int = 5, levels: int = 4
    ):
        super().__init__()
        self.encoders = nn.ModuleList(
            [DenseBlock(in_channels, filters, kernel, first=True)]
            + [DenseBlock(filters, filters, kernel) for _ in range(levels - 1)]
        )
        self.bottleneck = DenseBlock(filters, filters, kernel)
        self.decoders = nn.ModuleList([DenseBlock(filters, filters, kernel) for _ in range(levels)])
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        self.classifier = nn.Conv2d(filters, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc in self.encoders:
            skip = enc(x)
            x, idx = self.pool(skip)
            skips.append((skip, idx))
        x = self.bottleneck(x)
        for dec, (skip, idx) in zip(self.decoders, reversed(skips), strict=False):
            x = dec(torch.maximum(self.unpool(x, idx, output_size=skip.shape), skip))
        return self.classifier(x)
