"""Fields stored on a grid of cell values, and the transpose of reading them.

A grid of ``prod(shape)`` cell values, cell centres as in :mod:`genfield.fields.coords`, is a field on
``[-1, 1]^d`` through multilinear interpolation (``grid_sample`` with ``align_corners=False`` and
zero padding: beyond the outer centres the field fades to 0 over half a cell). Reading it at points
is linear in the cell values, ``f(x_m) = sum_j phi_j(x_m) g_j``; :func:`splat` is its transpose,
``g_j = sum_m phi_j(x_m) v_m``, a scatter-add of each value onto the ``2^d`` cells around its point.
Forward maps restricted to grid fields are matrices; their adjoints (:meth:`ForwardMap.adjoint`)
end in :func:`splat`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from genfield.errors import InputError
from genfield.forward.base import FieldFn


def grid_field(grid: torch.Tensor) -> FieldFn:
    """The multilinear interpolant of grids ``(S, *shape, C)`` (``len(shape)`` 2 or 3) as a field.

    The returned ``field_fn`` maps points ``(S, ..., d)`` (coordinates in the order of the grid's
    axes) to ``(S, ..., C)``.
    """
    d = grid.dim() - 2
    if d not in (2, 3):
        raise InputError(f"grid field needs a grid (S, H, W, C) or (S, D, H, W, C), got {tuple(grid.shape)}")
    planes = torch.movedim(grid, -1, 1)  # (S, C, *shape)

    def field_fn(points: torch.Tensor) -> torch.Tensor:
        flat = points.flip(-1).reshape(points.shape[0], *([1] * (d - 1)), -1, d)  # grid_sample: (x, y, z)
        out = F.grid_sample(planes, flat, mode="bilinear", padding_mode="zeros", align_corners=False)
        return out.reshape(*out.shape[:2], -1).transpose(1, 2).reshape(*points.shape[:-1], grid.shape[-1])

    return field_fn


def splat(points: torch.Tensor, values: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """The transpose of reading a :func:`grid_field`: scatter-add values onto the grid cells.

    Args:
        points: ``(..., M, d)`` with ``d = len(shape)``, coordinates in the order of the grid's axes.
        values: ``(..., M, C)``, one value per point.
        shape: the grid's shape.

    Returns:
        ``(..., *shape, C)``: cell ``j`` gets ``sum_m phi_j(x_m) v_m`` with the multilinear weights
        ``phi_j`` of :func:`grid_field`; corners outside the grid are dropped (zero padding).
    """
    shape = tuple(int(n) for n in shape)
    if points.shape[-1] != len(shape):
        raise InputError(
            f"splat onto a grid of shape {shape} needs {len(shape)}-d points, got {points.shape[-1]}"
        )
    lead = torch.broadcast_shapes(points.shape[:-2], values.shape[:-2])
    points = points.expand(*lead, *points.shape[-2:]).reshape(-1, *points.shape[-2:])
    values = values.expand(*lead, *values.shape[-2:]).reshape(-1, *values.shape[-2:])
    n_batch, n_cells, c = values.shape[0], math.prod(shape), values.shape[-1]
    # per axis: the two neighbouring cells (clamped), their weights (0 outside the grid)
    axes = []
    for i, n in enumerate(shape):
        position = ((points[..., i] + 1) * n - 1) / 2  # cell j's centre sits at position j
        low = position.floor()
        frac = position - low
        low = low.long()
        stride = math.prod(shape[i + 1 :])
        options = []
        for index, weight in ((low, 1 - frac), (low + 1, frac)):
            weight = weight * ((index >= 0) & (index < n))
            options.append((index.clamp(0, n - 1) * stride, weight))
        axes.append(options)
    flats, weights = [], []
    for corner in itertools.product(*axes):  # the 2^d corners
        flats.append(sum(index for index, _ in corner))
        weights.append(math.prod(weight for _, weight in corner))
    flat = torch.stack(flats, dim=-1)  # (B, M, 2^d)
    weight = torch.stack(weights, dim=-1)
    flat = flat + torch.arange(n_batch, device=flat.device)[:, None, None] * n_cells
    spread = values[..., None, :] * weight[..., None]  # (B, M, 2^d, C)
    out = values.new_zeros(n_batch * n_cells, c).index_add(0, flat.reshape(-1), spread.reshape(-1, c))
    return out.reshape(*lead, *shape, c)
