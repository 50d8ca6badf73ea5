"""Multi-view radiance data: the public entry point, re-exporting the modules of each concern.

* :mod:`~genfield.datasets.scenes`: :class:`ViewSignal` (the posed images of one scene), the
  camera convention, :class:`SceneFolder` (one folder of scenes, lazy);
* :mod:`~genfield.datasets.nerf_synthetic`: NeRF-synthetic (Blender) scenes and folders;
* :mod:`~genfield.datasets.srn`: SRN scenes and category folders;
* :mod:`~genfield.datasets.view_split`: :class:`ViewSplit`, context views and target rays;
* :mod:`~genfield.datasets.builtin.views`: built-in ray-cast scenes (:func:`builtin_views`).
"""

from genfield.datasets.builtin.views import builtin_views, random_primitives, raycast_rgba
from genfield.datasets.nerf_synthetic import (
    NERF_SYNTHETIC_BOUNDS,
    NERF_SYNTHETIC_SCALE,
    NerfSyntheticFolder,
    NerfSyntheticScene,
)
from genfield.datasets.scenes import SPLITS, SceneFolder, ViewSignal
from genfield.datasets.srn import OPENCV_TO_OPENGL, SRNFolder, SRNScene
from genfield.datasets.view_split import ViewSplit
from genfield.forward.volume import look_at

__all__ = [
    "NERF_SYNTHETIC_BOUNDS",
    "NERF_SYNTHETIC_SCALE",
    "OPENCV_TO_OPENGL",
    "SPLITS",
    "NerfSyntheticFolder",
    "NerfSyntheticScene",
    "SRNFolder",
    "SRNScene",
    "SceneFolder",
    "ViewSignal",
    "ViewSplit",
    "builtin_views",
    "look_at",
    "random_primitives",
    "raycast_rgba",
]
