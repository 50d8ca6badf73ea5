"""The point map: observations are field values at points (pixels, SDF and occupancy samples)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from genfield.forward.base import FieldFn


@dataclass
class PointMap:
    """Observe the field at points: ``y_n = f(x_n)``. Queries are points of the field domain."""

    name: str = "point"

    def __call__(self, field_fn: FieldFn, queries: torch.Tensor) -> torch.Tensor:
        return field_fn(queries)
