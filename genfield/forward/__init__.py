"""Forward maps, the physics layer: from a field to what is observed of it.

Datasets, both routes (meta-learning and neural processes), evaluation and figures call these maps;
they import only :mod:`genfield.fields` and :mod:`genfield.errors`, so every other layer can use them.

* :mod:`~genfield.forward.base`: the :class:`ForwardMap` protocol and ``FieldFn``.
* :mod:`~genfield.forward.point`: :class:`PointMap` (pixels, SDF and occupancy samples).
* :mod:`~genfield.forward.ct`: the parallel-beam projector, its adjoint and filtered back-projection.
* :mod:`~genfield.forward.volume`: camera rays and the emission-absorption volume renderer.
"""

from __future__ import annotations

from typing import Any

from genfield.errors import unknown_name
from genfield.forward.base import FieldFn, ForwardMap
from genfield.forward.ct import ParallelBeamProjection
from genfield.forward.point import PointMap
from genfield.forward.volume import VolumeRenderer

#: The forward maps by name.
FORWARD_MAPS = {"point": PointMap, "ct": ParallelBeamProjection, "volume": VolumeRenderer}


def build_forward_map(name: str, **options: Any) -> ForwardMap:
    """Build a forward map by name: ``point``, ``ct`` (parallel beam) or ``volume``."""
    if name not in FORWARD_MAPS:
        raise unknown_name("forward map", name, list(FORWARD_MAPS))
    return FORWARD_MAPS[name](**options)


__all__ = [
    "FORWARD_MAPS",
    "FieldFn",
    "ForwardMap",
    "ParallelBeamProjection",
    "PointMap",
    "VolumeRenderer",
    "build_forward_map",
]
