"""The forward-map protocol: the differentiable maps from a field to what is observed of it.

A forward map is called as ``forward_map(field_fn, queries)`` where

* ``field_fn`` maps points of the field domain ``(..., M, d)`` to field values ``(..., M, c)``
  (a closure over one signal's parameters, or over a batch of them), and
* ``queries`` is ``(..., N, q)``: what each observation asks for (a point, a CT ray, a camera ray).

It returns the predicted observations ``(..., N, c_obs)``. Every map is written over arbitrary leading
dimensions, so the same code runs on a whole meta-batch at once and inside ``torch.func.vmap``.
Fitting, evaluation and figures all call these maps; there is no second implementation anywhere.

The maps:

* :class:`~genfield.forward.point.PointMap`: the observation is the field value at a point (pixels,
  SDF and occupancy samples).
* :class:`~genfield.forward.ct.ParallelBeamProjection`: line integrals along parallel-beam rays (CT).
* :class:`~genfield.forward.volume.VolumeRenderer`: emission-absorption volume rendering along rays.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import torch

FieldFn = Callable[[torch.Tensor], torch.Tensor]


@runtime_checkable
class ForwardMap(Protocol):
    """What every forward map provides."""

    name: str

    def __call__(self, field_fn: FieldFn, queries: torch.Tensor) -> torch.Tensor: ...
