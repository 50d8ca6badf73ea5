"""The one random-primitive generator of the built-in data: trimesh solids of random size and pose.

A primitive is drawn in three steps from one NumPy generator: its kind (uniform over the allowed
kinds), its proportions (:func:`primitive`) and its pose (:func:`random_pose`: a uniformly random
rotation and a uniform offset from the origin). The built-in shapes
(:mod:`~genfield.datasets.builtin.shapes`) and the built-in multi-view scenes
(:mod:`~genfield.datasets.builtin.views`) draw from it with their own :class:`PrimitiveStyle`:
the shapes' primitives are larger and finer (they are combined by boolean operations, and the
result is the ground truth), the scenes' smaller and coarser (they are ray-cast at low resolution).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import trimesh
from trimesh.transformations import random_rotation_matrix, translation_matrix

from genfield.errors import unknown_name

PRIMITIVES: tuple[str, ...] = ("box", "sphere", "cylinder", "capsule", "cone", "torus")

Range = tuple[float, float]


@dataclass(frozen=True)
class PrimitiveStyle:
    """The ranges proportions are drawn from (uniformly), the mesh resolutions, and the pose offset.

    Attributes:
        box: edge lengths.
        sphere: radius (an icosphere of ``sphere_subdivisions``).
        cylinder_radius, cylinder_height, capsule_height, capsule_radius, cone_radius, cone_height:
            as named.
        torus_major: the major radius; torus_minor: the minor radius as a fraction of the major.
        sections: segments around the axis of cylinders and cones; capsule_count: ``(rings,
            segments)`` of capsules; torus_sections: ``(major, minor)`` segments of tori.
        offset: each coordinate of the offset from the origin is uniform in ``[-offset, offset]``.
        offset_first: draw the offset before the rotation (the shapes) or after it (the scenes):
            the order each collection was first published with, kept so that every built-in item
            stays what it was.
    """

    box: Range
    sphere: Range
    sphere_subdivisions: int
    cylinder_radius: Range
    cylinder_height: Range
    capsule_height: Range
    capsule_radius: Range
    capsule_count: tuple[int, int]
    offset: float
    offset_first: bool
    cone_radius: Range = (0.2, 0.5)
    cone_height: Range = (0.4, 1.0)
    torus_major: Range = (0.25, 0.5)
    torus_minor: Range = (0.06, 0.45)
    sections: int = 32
    torus_sections: tuple[int, int] = (48, 16)


#: Primitives of the built-in shapes, in the units of the final cube (about half its side), so
#: that posed primitives overlap and their combinations are not all disjoint unions.
SHAPE_STYLE = PrimitiveStyle(
    box=(0.3, 1.0),
    sphere=(0.25, 0.55),
    sphere_subdivisions=3,
    cylinder_radius=(0.12, 0.4),
    cylinder_height=(0.4, 1.1),
    capsule_height=(0.2, 0.8),
    capsule_radius=(0.1, 0.3),
    capsule_count=(24, 24),
    offset=0.3,
    offset_first=True,
)
#: Primitives of the built-in multi-view scenes (normalised units, scenes inside ``[-0.9, 0.9]^3``).
VIEW_STYLE = PrimitiveStyle(
    box=(0.3, 0.8),
    sphere=(0.2, 0.45),
    sphere_subdivisions=2,
    cylinder_radius=(0.15, 0.35),
    cylinder_height=(0.4, 0.9),
    capsule_height=(0.3, 0.7),
    capsule_radius=(0.12, 0.25),
    capsule_count=(12, 12),
    offset=0.4,
    offset_first=False,
    sections=20,
)


def primitive(kind: str, rng: np.random.Generator, style: PrimitiveStyle = SHAPE_STYLE) -> trimesh.Trimesh:
    """One primitive of ``kind`` with random proportions, centred at the origin (before posing)."""
    u = rng.uniform
    if kind == "box":
        return trimesh.creation.box(extents=u(*style.box, size=3))
    if kind == "sphere":
        return trimesh.creation.icosphere(subdivisions=style.sphere_subdivisions, radius=u(*style.sphere))
    if kind == "cylinder":
        radius, height = u(*style.cylinder_radius), u(*style.cylinder_height)
        return trimesh.creation.cylinder(radius=radius, height=height, sections=style.sections)
    if kind == "capsule":
        height, radius = u(*style.capsule_height), u(*style.capsule_radius)
        return trimesh.creation.capsule(height=height, radius=radius, count=list(style.capsule_count))
    if kind == "cone":
        radius, height = u(*style.cone_radius), u(*style.cone_height)
        return trimesh.creation.cone(radius=radius, height=height, sections=style.sections)
    if kind == "torus":
        major = u(*style.torus_major)
        minor = u(*style.torus_minor) * major
        sections, minor_sections = style.torus_sections
        return trimesh.creation.torus(major, minor, major_sections=sections, minor_sections=minor_sections)
    raise unknown_name("primitive", kind, PRIMITIVES)


def random_pose(rng: np.random.Generator, style: PrimitiveStyle = SHAPE_STYLE) -> np.ndarray:
    """A ``4 x 4`` rigid transform: a uniformly random rotation, then an offset from the origin."""
    if style.offset_first:
        offset = rng.uniform(-style.offset, style.offset, size=3)
        rotation = random_rotation_matrix(rand=rng.random(3))
    else:
        rotation = random_rotation_matrix(rand=rng.random(3))
        offset = rng.uniform(-style.offset, style.offset, size=3)
    return translation_matrix(offset) @ rotation


def random_primitive(
    rng: np.random.Generator, kinds: Sequence[str] = PRIMITIVES, style: PrimitiveStyle = SHAPE_STYLE
) -> tuple[trimesh.Trimesh, str]:
    """A posed primitive of a kind drawn uniformly from ``kinds``, and that kind."""
    kind = kinds[int(rng.integers(len(kinds)))]
    mesh = primitive(kind, rng, style)
    return mesh.apply_transform(random_pose(rng, style)), kind
