"""The point map: observations are field values at points (pixels, SDF and occupancy samples)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch

from genfield.errors import InputError
from genfield.forward.base import FieldFn, ForwardMap, PairedFieldFn
from genfield.forward.grid import splat


@dataclass
class PointMap(ForwardMap):
    """Observe the field at points: ``y_n = f(x_n)``. Queries are points of the field domain.

    One sample per query with weight 1, so a carried quantity is observed as it is, whatever the
    power (:meth:`~genfield.forward.base.ForwardMap.observe_carrying`).
    """

    name: str = "point"
    linear: ClassVar[bool] = True
    measurement: ClassVar[str] = "field value"

    def __call__(self, field_fn: FieldFn, queries: torch.Tensor) -> torch.Tensor:
        return field_fn(queries)

    def validate_queries(self, queries: torch.Tensor, role: str = "the") -> None:
        """Queries are ``(..., N, d)`` points inside the field domain ``[-1, 1]^d`` (a host sync)."""
        if queries.dim() < 2:
            raise InputError(
                f"point forward map: {role} queries must be (..., N, d) points; "
                f"got shape {tuple(queries.shape)}"
            )
        worst = queries.abs().amax() if queries.numel() else queries.new_zeros(())
        if not bool(worst <= 1 + 1e-6):
            raise InputError(
                f"point forward map: {role} queries must be (..., N, d) points in the field domain "
                f"[-1, 1]^d; found |coordinate| = {float(worst):.4g}"
            )

    def observe_carrying(
        self, paired_fn: PairedFieldFn, queries: torch.Tensor, power: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return paired_fn(queries)

    def propagate_variance(
        self, field_fn: FieldFn, variance_fn: FieldFn, queries: torch.Tensor
    ) -> torch.Tensor:
        """The variance field at the points (the identity)."""
        return variance_fn(queries)

    def adjoint(self, values: torch.Tensor, queries: torch.Tensor, grid_shape: Sequence[int]) -> torch.Tensor:
        """Scatter-add each value onto the grid cells around its point (multilinear weights)."""
        return splat(queries, values, grid_shape)
