"""Built-in data that needs no download, every generator in one place.

* :mod:`~genfield.datasets.builtin.images`: scikit-image's bundled faces and photographs (crops), and
  letters and digits rendered from matplotlib's typefaces;
* :mod:`~genfield.datasets.builtin.primitives`: the one random-primitive generator (trimesh solids)
  that the shapes and the multi-view scenes are made of;
* :mod:`~genfield.datasets.builtin.shapes`: random solids and their boolean combinations;
* :mod:`~genfield.datasets.builtin.views`: scenes of coloured primitives, ray-cast to posed images.

CT phantoms (random ellipses) stay with the CT signal type, in :mod:`genfield.datasets.ct`.
Names are imported on use (``from genfield.datasets.builtin import builtin_faces`` loads only the
image module), so the built-in images do not pay for trimesh.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOMES = {
    "images": (
        "COLOUR_PHOTOS",
        "FACE_SPLITS",
        "GLYPH_CHARACTERS",
        "GLYPH_COUNTS",
        "GLYPH_FONTS",
        "GREY_PHOTOS",
        "Glyphs",
        "HELD_OUT_PHOTOS",
        "NUM_FACES",
        "NaturalCrops",
        "builtin_faces",
        "builtin_glyphs",
        "builtin_natural",
        "font_file",
        "load_photo",
        "natural_photos",
    ),
    "primitives": ("PRIMITIVES", "PrimitiveStyle", "primitive", "random_primitive", "random_pose"),
    "shapes": ("ProceduralShapes", "random_shape"),
    "views": ("builtin_views", "random_primitives", "raycast_rgba"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
