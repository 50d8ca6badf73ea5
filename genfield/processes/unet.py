"""A small U-Net over feature grids: the convolutional trunk of the local-feature encoders.

ConvCNP (Gordon et al. 2020) puts a set's evidence on a grid and runs a CNN over it, so every query
reads features that summarise its neighbourhood at several scales; on images that, not a global code,
is what lets a neural process beat interpolation. This trunk is the U-Net of Ronneberger et al.
(2015) at a small size: per level two 3x3 convolutions with GroupNorm and SiLU, average-pool down,
nearest-neighbour up, skip connections by concatenation. Any grid side works (odd sides are padded
to the next multiple of ``2^levels`` and cropped back). Grids are 2-D (images, CT slices) or 3-D
(``dims=3``: occupancy and signed distance over a volume, as in Convolutional Occupancy Networks,
Peng et al. 2020), with 3x3 or 3x3x3 kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from genfield.errors import InputError

CONV = {2: nn.Conv2d, 3: nn.Conv3d}
POOL = {2: F.avg_pool2d, 3: F.avg_pool3d}


def _block(in_channels: int, out_channels: int, dims: int) -> nn.Sequential:
    groups = max(1, out_channels // 16)
    conv = CONV[dims]
    return nn.Sequential(
        conv(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.SiLU(),
        conv(out_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.SiLU(),
    )


class UNet(nn.Module):
    """``(S, in_channels, *shape) -> (S, out_channels, *shape)``, ``shape`` ``(H, W)`` or ``(D, H, W)``.

    Args:
        in_channels: channels of the input grid.
        out_channels: channels of the output grid (a 1x1 convolution after the last block).
        channels: channels per level, finest first; ``len(channels) - 1`` poolings.
        dims: 2 or 3, the grid's spatial dimensions.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: tuple[int, ...] = (32, 64, 128),
        dims: int = 2,
    ) -> None:
        super().__init__()
        if dims not in CONV:
            raise InputError(f"U-Net grids are 2-D or 3-D, got dims={dims}")
        channels = tuple(int(c) for c in channels)
        self.levels, self.dims = len(channels) - 1, int(dims)
        self.down = nn.ModuleList()
        previous = in_channels
        for c in channels:
            self.down.append(_block(previous, c, dims))
            previous = c
        self.up = nn.ModuleList(
            _block(channels[i + 1] + channels[i], channels[i], dims) for i in reversed(range(self.levels))
        )
        self.out = CONV[dims](channels[0], out_channels, 1)

    def forward(self, grid: torch.Tensor) -> torch.Tensor:
        return self.out(self.features(grid))

    def features(self, grid: torch.Tensor) -> torch.Tensor:
        """The last block's features ``(S, channels[0], *shape)``, before the output convolution (for
        further heads on the same trunk)."""
        shape = grid.shape[2:]
        if len(shape) != self.dims:
            raise InputError(f"this U-Net takes {self.dims}-D grids, got a grid of shape {tuple(grid.shape)}")
        multiple = 2**self.levels
        padding = [p for side in reversed(shape) for p in (0, -side % multiple)]  # last axis first
        x = F.pad(grid, padding)
        skips = []
        for index, block in enumerate(self.down):
            if index:
                x = POOL[self.dims](x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, reversed(skips[:-1])):
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            x = block(torch.cat([x, skip], dim=1))
        return x[(..., *(slice(0, side) for side in shape))]
