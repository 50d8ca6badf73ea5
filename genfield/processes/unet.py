"""A small U-Net over feature grids: the convolutional trunk of the local-feature encoders.

ConvCNP (Gordon et al. 2020) puts a set's evidence on a grid and runs a CNN over it, so every query
reads features that summarise its neighbourhood at several scales; on images that, not a global code,
is what lets a neural process beat interpolation. This trunk is the U-Net of Ronneberger et al.
(2015) at a small size: per level two 3x3 convolutions with GroupNorm and SiLU, average-pool down,
nearest-neighbour up, skip connections by concatenation. Any grid side works (odd sides are padded
to the next multiple of ``2^levels`` and cropped back).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    groups = max(1, out_channels // 16)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.SiLU(),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.SiLU(),
    )


class UNet(nn.Module):
    """``(S, in_channels, H, W) -> (S, out_channels, H, W)``.

    Args:
        in_channels: channels of the input grid.
        out_channels: channels of the output grid (a 1x1 convolution after the last block).
        channels: channels per level, finest first; ``len(channels) - 1`` poolings.
    """

    def __init__(
        self, in_channels: int, out_channels: int, channels: tuple[int, ...] = (32, 64, 128)
    ) -> None:
        super().__init__()
        channels = tuple(int(c) for c in channels)
        self.levels = len(channels) - 1
        self.down = nn.ModuleList()
        previous = in_channels
        for c in channels:
            self.down.append(_block(previous, c))
            previous = c
        self.up = nn.ModuleList(
            _block(channels[i + 1] + channels[i], channels[i]) for i in reversed(range(self.levels))
        )
        self.out = nn.Conv2d(channels[0], out_channels, 1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(grid))

    def features(self, grid: torch.Tensor) -> torch.Tensor:
        """The last block's features ``(S, channels[0], H, W)``, before the output convolution (for
        further heads on the same trunk)."""
        height, width = grid.shape[-2:]
        multiple = 2**self.levels
        pad_h, pad_w = -height % multiple, -width % multiple
        x = F.pad(grid, (0, pad_w, 0, pad_h))
        skips = []
        for index, block in enumerate(self.down):
            if index:
                x = F.avg_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        return x[..., :height, :width]
