"""The rendering layer and the pictures.

* :mod:`~genfield.viz.forward_maps`: points, CT projection, volume rendering, behind one protocol.
* :mod:`~genfield.viz.ct`: the parallel-beam projector and filtered back-projection.
* :mod:`~genfield.viz.volume`: camera rays and the emission-absorption volume renderer.
* :mod:`~genfield.viz.figures`, :mod:`~genfield.viz.meshes`, :mod:`~genfield.viz.video`,
  :mod:`~genfield.viz.plots`: image grids, CT panels, marching-cubes meshes, turntables, curves.
"""

from genfield.viz.forward_maps import ForwardMap, PointMap, build_forward_map

__all__ = ["ForwardMap", "PointMap", "build_forward_map"]
