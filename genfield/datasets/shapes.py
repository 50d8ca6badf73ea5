"""Shapes: folders of meshes -> occupancy and signed-distance samples, and the shape split.

The concerns live in their own modules, re-exported here (the public entry point):

* :mod:`~genfield.datasets.meshes`: reading and normalising meshes, the inside test (generalized
  winding number) and the distance (libigl);
* :mod:`~genfield.datasets.shape_samples`: DeepSDF-style labelled samples, cached per mesh
  (:class:`ShapeCollection`);
* :mod:`~genfield.datasets.shape_split`: :class:`ShapeSplit`;
* this module: :class:`MeshFolder`, a lazy folder of mesh files (recursively).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trimesh

from genfield.datasets.files import (
    SkipUnreadable,
    UnreadableFileError,
    list_files,
    normalize_extensions,
    one_line,
)
from genfield.datasets.meshes import (
    MESH_EXTENSIONS,
    NonWatertightMeshWarning,
    UnreadableMeshWarning,
    inside,
    load_mesh,
    normalize_mesh,
    normalize_points,
    occupancy_grid,
    signed_distance,
    unsigned_distance,
    winding_number,
    winding_number_exact,
)
from genfield.datasets.shape_samples import (
    CACHE_VERSION,
    SamplingSpec,
    ShapeCollection,
    ShapeSignal,
    sample_mesh,
    shape_seed,
)
from genfield.datasets.shape_split import ShapeSplit
from genfield.errors import InputError


def shape_name(relative: Path) -> str:
    """The name of a mesh file from its path relative to the folder.

    ShapeNet v2's ``<synset>/<id>/models/model_normalized.obj`` is named ``"<synset>/<id>"``;
    any other file by its relative path without the extension (``chairs/a.ply`` -> ``"chairs/a"``).
    """
    parts = relative.parts
    if len(parts) >= 3 and parts[-2] == "models" and relative.stem == "model_normalized":
        return "/".join(parts[:-2])
    return relative.with_suffix("").as_posix()


class MeshFolder(ShapeCollection):
    """A lazy dataset of the mesh files in a folder (recursively), sampled and cached.

    The constructor only lists files (sorted, so the order is the same everywhere); an item is
    read, normalised (see the module docstring), sampled and cached on first access. A file that
    cannot be read is skipped with an :class:`UnreadableMeshWarning` naming it, and the item becomes
    the next readable mesh in order (wrapping round); with ``strict=True`` it raises
    :class:`~genfield.errors.InputError` instead. Two files that would share a name (``a.obj`` and
    ``a.ply``) keep their extension in it.

    The cache key of a file is its resolved path, modification time and size: editing a mesh in
    place invalidates its entry. (A ``.gltf``'s external buffers are not part of the key.)

    Args:
        root: the folder.
        strict: raise on an unreadable mesh instead of skipping it.
        n_uniform, n_near, near_std, n_surface, padding: see :class:`SamplingSpec`.
        seed: the sampling seed.
        cache_dir: where samples are cached, or ``None`` to resample on every access.
        extensions: the file endings to list (matching ignores case).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        strict: bool = False,
        n_uniform: int = 16384,
        n_near: int = 16384,
        near_std: float | Sequence[float] = (0.01, 0.05),
        n_surface: int = 4096,
        padding: float = 0.1,
        seed: int = 0,
        cache_dir: str | os.PathLike | None = None,
        extensions: Sequence[str] = MESH_EXTENSIONS,
    ) -> None:
        spec = SamplingSpec(n_uniform, n_near, near_std, n_surface, padding)
        super().__init__(spec, seed, cache_dir)
        self.root, self.strict = Path(root), strict
        if not self.root.is_dir():
            raise InputError(f"mesh folder {self.root} does not exist or is not a folder")
        self.extensions = normalize_extensions(extensions)
        self.files = [Path(f) for f in list_files(self.root, self.extensions)]
        if not self.files:
            raise InputError(
                f"no mesh files under {self.root} (accepted extensions: {', '.join(self.extensions)})"
            )
        names = [shape_name(f) for f in self.files]
        clashes = {n for n in names if names.count(n) > 1}
        self.names = [f.as_posix() if n in clashes else n for f, n in zip(self.files, names, strict=True)]
        self._skip = SkipUnreadable("mesh", UnreadableMeshWarning, strict)

    def path(self, index: int) -> Path:
        return self.root / self.files[index]

    def describe(self, index: int) -> str:
        return f"{self.names[index]!r} ({self.path(index)})"

    def source_key(self, index: int) -> dict[str, Any]:
        path = self.path(index)
        try:
            stat = path.stat()
        except OSError as exc:
            raise InputError(f"cannot read mesh {path}: {one_line(exc)}") from exc
        return {"path": str(path.resolve()), "mtime_ns": stat.st_mtime_ns, "size": stat.st_size}

    def load_normalized(self, index: int) -> trimesh.Trimesh:
        return normalize_mesh(load_mesh(self.path(index)), self.spec.padding)

    def _read(self, index: int) -> ShapeSignal:
        try:
            return self.signal(index)
        except InputError as error:  # unparsable, empty, flat or non-finite: the file is unusable
            raise UnreadableFileError(str(error)) from error

    def __getitem__(self, index: int) -> ShapeSignal:
        return self._skip.item(index, len(self), self._read, self.root)

    def __repr__(self) -> str:
        return f"MeshFolder({str(self.root)!r}, {len(self)} meshes, {self.spec})"


__all__ = [
    "CACHE_VERSION",
    "MESH_EXTENSIONS",
    "MeshFolder",
    "NonWatertightMeshWarning",
    "SamplingSpec",
    "normalize_points",
    "ShapeCollection",
    "ShapeSignal",
    "ShapeSplit",
    "UnreadableMeshWarning",
    "inside",
    "load_mesh",
    "normalize_mesh",
    "occupancy_grid",
    "sample_mesh",
    "shape_name",
    "shape_seed",
    "signed_distance",
    "unsigned_distance",
    "winding_number",
    "winding_number_exact",
]
