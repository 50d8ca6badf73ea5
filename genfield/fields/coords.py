"""Coordinate conventions shared by every field, dataset and forward map.

Every field is defined on the domain [-1, 1]^d. For images and CT slices, coordinate 0 runs along
rows (top to bottom) and coordinate 1 along columns (left to right): the ``"ij"`` order of
``torch.meshgrid``. Samples sit at pixel (voxel) centres, so an H x W image has row coordinates
``-1 + (2 i + 1) / H``. Shapes and scenes use world coordinates (x, y, z) inside the same cube.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange


def axis_coords(n: int, device: torch.device | str | None = None, dtype=None) -> torch.Tensor:
    """Centres of ``n`` equal cells tiling [-1, 1]."""
    return (
        torch.arange(n, device=device, dtype=dtype or torch.get_default_dtype()) * 2 + 1
    ) / n - 1


def grid_coords(
    shape: Sequence[int], device: torch.device | str | None = None, dtype=None
) -> torch.Tensor:
    """Cell-centre coordinates of a grid of ``shape``, flattened to ``(prod(shape), len(shape))``.

    The flattening order is C order, so ``values.reshape(prod(shape), c)`` of an image of shape
    ``(*shape, c)`` lines up with the returned coordinates.
    """
    axes = [axis_coords(n, device=device, dtype=dtype) for n in shape]
    grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)
    return rearrange(grid, "... d -> (...) d")


def to_unit_cube(coords: torch.Tensor) -> torch.Tensor:
    """Map the field domain [-1, 1]^d to [0, 1]^d (the input range of tiny-cuda-nn encodings)."""
    return (coords + 1) * 0.5
