"""Built-in shapes: random primitives and their boolean combinations, with exact meshes.

Shape ``i`` of ``ProceduralShapes(n, seed)`` is drawn from a generator seeded by ``(seed, i)``
alone, so it is the same on every machine and independent of ``n``:

1. draw 1 to ``max_primitives`` primitives (box, sphere, cylinder, capsule, cone, torus) with
   random sizes, a uniformly random rotation and a random offset from the origin
   (:mod:`~genfield.datasets.builtin.primitives`, :data:`SHAPE_STYLE`);
2. fold them left to right with a random boolean operation each (union with probability 1/2,
   difference and intersection 1/4 each), computed by trimesh with the manifold3d engine, whose
   results are closed 2-manifolds; an operation that would empty the shape or leave less than a
   tenth of its volume falls back to the union, so every shape is solid;
3. normalise like every mesh of :mod:`genfield.datasets.shapes` (bounding box centred, longest side
   ``2 (1 - padding)``).

Items are :class:`~genfield.datasets.shapes.ShapeSignal` from the same sampling and caching code
as :class:`~genfield.datasets.shapes.MeshFolder`, and :meth:`ProceduralShapes.export` writes the
meshes to a folder that a ``MeshFolder`` reads back.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from genfield.datasets.builtin.primitives import PRIMITIVES, SHAPE_STYLE, random_primitive
from genfield.datasets.shapes import SamplingSpec, ShapeCollection, normalize_mesh
from genfield.errors import InputError, unknown_name

OPERATIONS: tuple[str, ...] = ("union", "difference", "intersection")
_OP_PROBABILITIES = (0.5, 0.25, 0.25)
#: Bumped whenever the generator changes what shape an index gives (part of the cache key).
GENERATOR_VERSION = 1


def _combine(a: trimesh.Trimesh, b: trimesh.Trimesh, op: str) -> trimesh.Trimesh:
    function = {
        "union": trimesh.boolean.union,
        "difference": trimesh.boolean.difference,
        "intersection": trimesh.boolean.intersection,
    }[op]
    return function([a, b], engine="manifold")


def random_shape(
    rng: np.random.Generator,
    kinds: Sequence[str] = PRIMITIVES,
    max_primitives: int = 3,
) -> tuple[trimesh.Trimesh, list[str]]:
    """A random solid (not normalised) and its recipe, e.g. ``["box", "difference sphere"]``."""
    if max_primitives < 1:
        raise InputError(f"max_primitives must be at least 1, got {max_primitives}")
    count = int(rng.integers(1, max_primitives + 1))
    shape, first = random_primitive(rng, kinds, SHAPE_STYLE)
    recipe = [first]
    for _ in range(count - 1):
        other, kind = random_primitive(rng, kinds, SHAPE_STYLE)
        op = OPERATIONS[int(rng.choice(len(OPERATIONS), p=_OP_PROBABILITIES))]
        result = _combine(shape, other, op)
        if op != "union" and (len(result.faces) == 0 or result.volume < 0.1 * shape.volume):
            op, result = "union", _combine(shape, other, "union")
        shape = result
        recipe.append(f"{op} {kind}")
    return shape, recipe


class ProceduralShapes(ShapeCollection):
    """``n`` random solids (see the module docstring), sampled and cached like mesh folders.

    Shape ``i`` is named ``"shape_{i:05d}"``; its mesh is generated on access (a few boolean
    operations, milliseconds) unless its samples are cached.

    Args:
        n: number of shapes.
        seed: the generator seed (and the sampling seed).
        kinds: the primitives to draw from.
        max_primitives: at most this many primitives per shape.
        n_uniform, n_near, near_std, n_surface, padding: see
            :class:`~genfield.datasets.shapes.SamplingSpec`.
        cache_dir: where samples are cached, or ``None`` to resample on every access.
    """

    def __init__(
        self,
        n: int,
        seed: int = 0,
        kinds: Sequence[str] = PRIMITIVES,
        max_primitives: int = 3,
        n_uniform: int = 16384,
        n_near: int = 16384,
        near_std: float | Sequence[float] = (0.01, 0.05),
        n_surface: int = 4096,
        padding: float = 0.1,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        spec = SamplingSpec(n_uniform, n_near, near_std, n_surface, padding)
        super().__init__(spec, seed, cache_dir)
        if n < 1:
            raise InputError(f"ProceduralShapes needs n >= 1, got {n}")
        if not kinds:
            raise InputError("ProceduralShapes needs at least one primitive kind")
        for kind in kinds:
            if kind not in PRIMITIVES:
                raise unknown_name("primitive", kind, PRIMITIVES)
        if max_primitives < 1:
            raise InputError(f"max_primitives must be at least 1, got {max_primitives}")
        self.kinds, self.max_primitives = tuple(kinds), int(max_primitives)
        self.names = [f"shape_{i:05d}" for i in range(n)]

    def generate(self, index: int) -> tuple[trimesh.Trimesh, list[str]]:
        """Shape ``index`` normalised, and its recipe."""
        rng = np.random.default_rng([self.seed, index])
        mesh, recipe = random_shape(rng, self.kinds, self.max_primitives)
        return normalize_mesh(mesh, self.spec.padding), recipe

    def load_normalized(self, index: int) -> trimesh.Trimesh:
        return self.generate(index)[0]

    def source_key(self, index: int) -> dict[str, Any]:
        return {
            "generator": "procedural",
            "version": GENERATOR_VERSION,
            "seed": self.seed,
            "index": index,
            "kinds": list(self.kinds),
            "max_primitives": self.max_primitives,
        }

    def export(self, folder: str | os.PathLike, file_type: str = "ply") -> list[Path]:
        """Write every normalised mesh to ``folder/<name>.<file_type>``; return the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for index, name in enumerate(self.names):
            path = folder / f"{name}.{file_type.lstrip('.')}"
            self.load_normalized(index).export(path)
            paths.append(path)
        return paths

    def __repr__(self) -> str:
        return f"ProceduralShapes(n={len(self)}, seed={self.seed}, {self.spec})"
