"""The pictures: image grids, CT panels, marching-cubes meshes, turntables, curves.

:mod:`~genfield.viz.figures`, :mod:`~genfield.viz.meshes`, :mod:`~genfield.viz.video`,
:mod:`~genfield.viz.plots`. The forward maps (the physics every layer uses) moved to
:mod:`genfield.forward`; the names below and ``genfield.viz.ct`` / ``genfield.viz.volume`` /
``genfield.viz.forward_maps`` re-export them for one release.
"""

from genfield.forward import ForwardMap, PointMap, build_forward_map

__all__ = ["ForwardMap", "PointMap", "build_forward_map"]
