"""Shapes: folders of meshes -> occupancy and signed-distance samples, and the shape split.

A shape is a triangle mesh, normalised into the field domain: its bounding box is centred at the
origin and its longest side scaled to ``2 (1 - padding)`` (1.8 with the default ``padding=0.1``),
so a margin of 0.1 on each side of the longest axis stays empty and near-surface samples of the
surface still fall in the cube [-1, 1]^3.

Samples follow DeepSDF (Park et al., 2019) and Occupancy Networks (Mescheder et al., 2019): points
uniform in the cube plus surface points perturbed by Gaussian noise of one or more standard
deviations, each labelled with

* occupancy ``o(x) = [w(x) >= 1/2]`` from the generalized winding number (Jacobson et al., 2013)

  ``w(x) = 1/(4 pi) sum_t Omega_t(x)``, with the solid angle of triangle ``(a, b, c)`` (corners
  relative to ``x``) from Van Oosterom and Strackee: ``tan(Omega/2) = det[a b c] / (|a||b||c| +
  (a.b)|c| + (b.c)|a| + (c.a)|b|)``.

  It is 1 inside and 0 outside a closed, outward-oriented mesh and degrades gracefully on meshes
  with holes (most of ShapeNet), so one inside test serves every mesh; a mesh that is not
  watertight still gets a :class:`NonWatertightMeshWarning` naming it.
* signed distance ``sdf(x) = (1 - 2 o(x)) d(x)``, negative inside, ``d`` the exact distance to the
  nearest triangle.

Both queries are libigl's (``igl.fast_winding_number``, the "fast winding number" of Barill et al.,
2018, and ``igl.signed_distance`` over an axis-aligned bounding-box tree), which parallelises over
the query points with its own threads; trimesh reads the meshes, and its ray-based ``contains``
(which needs a watertight mesh) is not used.

Samples are computed once per mesh and cached on disk (:class:`ShapeCollection`), so later epochs
only read an ``.npz`` file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import igl
import numpy as np
import torch
import trimesh

from genfield.datasets.batch import Observations, SignalBatch
from genfield.errors import InputError
from genfield.fields.coords import grid_coords
from genfield.forward import PointMap

#: File extensions a :class:`MeshFolder` lists (lower case; matching ignores case).
MESH_EXTENSIONS: tuple[str, ...] = (".obj", ".ply", ".off", ".stl", ".glb", ".gltf")

#: Bumped whenever the sampling or labelling code changes what a cache file holds.
CACHE_VERSION = 2


class UnreadableMeshWarning(UserWarning):
    """A mesh file could not be read (or holds no usable triangles) and was skipped."""


class NonWatertightMeshWarning(UserWarning):
    """A mesh has boundary edges: inside/outside near its holes is a best guess."""


@dataclass
class ShapeSignal:
    """One shape with its labelled samples.

    Attributes:
        points: ``(P, 3)`` sample points in [-1, 1]^3; the first ``n_uniform`` are uniform in the
            cube, the rest near the surface.
        sdf: ``(P, 1)`` signed distance to the surface, negative inside.
        occupancy: ``(P, 1)`` bool, inside the shape.
        surface_points: ``(Q, 3)`` points sampled uniformly (by area) on the surface.
        mesh: the normalised mesh (ground truth for Chamfer distance and IoU).
        name: the shape's name (a relative path, or ``"<synset>/<id>"`` for ShapeNet).
        n_uniform: how many of ``points`` are uniform; ``None`` if unknown.
    """

    points: torch.Tensor
    sdf: torch.Tensor
    occupancy: torch.Tensor
    surface_points: torch.Tensor
    mesh: trimesh.Trimesh
    name: str
    n_uniform: int | None = None


@dataclass(frozen=True)
class SamplingSpec:
    """How many samples of which kind a shape gets (everything that changes a cache file).

    Args:
        n_uniform: points uniform in the cube [-1, 1]^3.
        n_near: surface points perturbed by isotropic Gaussian noise, split evenly over the
            standard deviations ``near_std`` (DeepSDF uses two scales); clipped to the cube.
        near_std: the noise standard deviations, in units of the [-1, 1] domain.
        n_surface: points on the surface (sparse point-cloud context, Chamfer references).
        padding: normalisation margin; the longest side becomes ``2 (1 - padding)``.
    """

    n_uniform: int = 16384
    n_near: int = 16384
    near_std: tuple[float, ...] = (0.01, 0.05)
    n_surface: int = 4096
    padding: float = 0.1

    def __post_init__(self) -> None:
        stds = (self.near_std,) if isinstance(self.near_std, int | float) else self.near_std
        object.__setattr__(self, "near_std", tuple(float(s) for s in stds))
        for key in ("n_uniform", "n_near", "n_surface"):
            if int(getattr(self, key)) < 0:
                raise InputError(f"{key} must be non-negative, got {getattr(self, key)}")
        if self.n_uniform + self.n_near < 1:
            raise InputError("n_uniform + n_near must be at least 1")
        if not self.near_std or any(not s > 0 or not math.isfinite(s) for s in self.near_std):
            raise InputError(f"near_std must be positive numbers, got {self.near_std}")
        if not 0 <= self.padding < 1:
            raise InputError(f"padding must be in [0, 1), got {self.padding}")


# --------------------------------------------------------------------------------------------------
# Reading and normalising meshes
# --------------------------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def load_mesh(path: str | os.PathLike) -> trimesh.Trimesh:
    """Read a mesh file with trimesh (a scene's meshes are concatenated, transforms applied).

    Duplicate vertices are merged (STL stores each triangle's corners separately), so that
    :attr:`trimesh.Trimesh.is_watertight` means what it says.

    Raises:
        InputError: the file cannot be parsed, holds no triangles, has non-finite vertices, a
            zero-size bounding box or only coplanar vertices (no inside: a single triangle). The
            message names the file.
    """
    path = Path(path)
    try:
        # process=False first: trimesh's processing silently drops NaN vertices, and we want to see them.
        raw = trimesh.load(path, force="mesh", process=False, skip_materials=True)
    except Exception as exc:  # any parser failure: ValueError, KeyError, struct.error, ...
        raise InputError(f"cannot read mesh {path}: {_one_line(exc)}") from exc
    if not isinstance(raw, trimesh.Trimesh) or len(raw.faces) == 0:
        raise InputError(f"mesh {path} holds no triangles")
    vertices = np.asarray(raw.vertices, dtype=np.float64)
    if not np.isfinite(vertices).all():
        raise InputError(f"mesh {path} has non-finite (NaN or inf) vertex coordinates")
    mesh = trimesh.Trimesh(vertices, np.asarray(raw.faces), process=True)
    if len(mesh.faces) == 0 or float(np.ptp(mesh.vertices, axis=0).max()) <= 0:
        raise InputError(f"mesh {path} is degenerate (no triangle of non-zero area after merging vertices)")
    if _is_flat(mesh.vertices):
        raise InputError(
            f"mesh {path} is flat (all {len(mesh.vertices)} vertices lie in one plane): it encloses no "
            "volume, so occupancy, SDF sign and IoU are undefined"
        )
    return mesh


def _is_flat(vertices: np.ndarray, tolerance: float = 1e-9) -> bool:
    """Whether points lie in one plane: the smallest singular value of the centred points is
    negligible next to the largest (a single triangle, a planar sheet, a mesh that collapsed)."""
    centred = np.asarray(vertices, dtype=np.float64) - np.mean(vertices, axis=0)
    singular = np.linalg.svd(centred, compute_uv=False)
    return len(singular) < 3 or singular[-1] <= tolerance * max(float(singular[0]), 1e-300)


def normalize_points(
    points: np.ndarray, padding: float = 0.1, bounds: np.ndarray | None = None
) -> np.ndarray:
    """Points ``(N, 3)`` with their bounding box (or ``bounds``, ``(2, 3)``) centred and its longest
    side ``2 (1 - padding)``.

    Only the bounding box is used (not the centroid or a bounding sphere), so points (or a mesh)
    exported after normalisation normalise to themselves.
    """
    points = np.asarray(points, dtype=np.float64)
    lo, hi = (points.min(0), points.max(0)) if bounds is None else bounds
    extent = float((hi - lo).max())
    if not extent > 0:
        raise InputError(f"{len(points)} points have no extent (all of them coincide)")
    return (points - (lo + hi) / 2) * (2.0 * (1.0 - padding) / extent)


def normalize_mesh(mesh: trimesh.Trimesh, padding: float = 0.1) -> trimesh.Trimesh:
    """A copy of ``mesh`` normalised by :func:`normalize_points` to the box of the vertices its faces use."""
    vertices = normalize_points(mesh.vertices, padding, mesh.bounds)
    return trimesh.Trimesh(vertices, np.array(mesh.faces), process=False)


# --------------------------------------------------------------------------------------------------
# Inside test and distance (libigl)
# --------------------------------------------------------------------------------------------------


def _mesh_arrays(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray]:
    """Vertices ``(V, 3)`` float64 and faces ``(F, 3)`` int64, C-contiguous, as libigl takes them.

    libigl's bindings do not check their input (an empty or out-of-range face list crashes the
    process), so both are checked here.
    """
    vertices = np.ascontiguousarray(mesh.vertices, dtype=np.float64)
    faces = np.ascontiguousarray(mesh.faces, dtype=np.int64)
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise InputError(f"mesh must have triangles (faces of shape (F, 3), F >= 1), got {faces.shape}")
    if faces.min() < 0 or faces.max() >= len(vertices):
        raise InputError(
            f"mesh face indices must lie in [0, {len(vertices) - 1}], got {faces.min()} to {faces.max()}"
        )
    return vertices, faces


def _query_points(points: torch.Tensor | np.ndarray) -> np.ndarray:
    """Query points as a C-contiguous float64 ``(P, 3)`` array (any dtype, layout or device in)."""
    if isinstance(points, torch.Tensor):
        points = points.detach().cpu().numpy()
    array = np.asarray(points)
    if array.ndim != 2 or array.shape[1] != 3:
        raise InputError(f"query points must have shape (P, 3), got {array.shape}")
    return np.ascontiguousarray(array, dtype=np.float64)


def winding_number(mesh: trimesh.Trimesh, points: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Generalized winding number ``(P,)`` float32 of ``mesh`` at ``points`` ``(P, 3)``.

    ``w(x) = 1/(4 pi) sum_t Omega_t(x)`` (Jacobson et al., 2013), evaluated by libigl's fast
    winding number (Barill et al., 2018): near triangles exactly, far clusters of triangles by a
    truncated multipole (dipole and higher) expansion, with libigl's accuracy parameter
    ``beta = 2``.

    On a closed, outward-oriented mesh it is 1 inside and 0 outside. It needs no watertightness:
    on a mesh with holes or gaps it is a smooth harmonic function that stays close to 1 well inside
    and close to 0 well outside, and passes through 1/2 across a hole, so the threshold 1/2 closes
    the hole smoothly; nested or overlapping shells add up (2 where two overlap). Triangles facing
    inwards flip its sign.
    """
    vertices, faces = _mesh_arrays(mesh)
    query = _query_points(points)
    if len(query) == 0:
        return torch.zeros(0)
    return torch.from_numpy(igl.fast_winding_number(vertices, faces, query)).float()


def winding_number_exact(mesh: trimesh.Trimesh, points: torch.Tensor | np.ndarray) -> torch.Tensor:
    """The generalized winding number ``(P,)`` without the far-field approximation (libigl's exact,
    hierarchical sum over every triangle's solid angle; slower than
    :func:`winding_number`)."""
    vertices, faces = _mesh_arrays(mesh)
    query = _query_points(points)
    if len(query) == 0:
        return torch.zeros(0)
    return torch.from_numpy(igl.winding_number(vertices, faces, query)).float()


def inside(mesh: trimesh.Trimesh, points: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Whether ``points`` ``(P, 3)`` are inside ``mesh``: winding number ``>= 1/2``, bool ``(P,)``.

    Robust on meshes that are not watertight (see :func:`winding_number`): near a hole the answer
    is a best guess, away from it the same as on the closed mesh.
    """
    return winding_number(mesh, points) >= 0.5


def unsigned_distance(mesh: trimesh.Trimesh, points: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Distance ``(P,)`` float32 from ``points`` ``(P, 3)`` to the nearest triangle of ``mesh``
    (exact, in float64, over libigl's axis-aligned bounding-box tree)."""
    vertices, faces = _mesh_arrays(mesh)
    query = _query_points(points)
    if len(query) == 0:
        return torch.zeros(0)
    unsigned = igl.SignedDistanceType.SIGNED_DISTANCE_TYPE_UNSIGNED
    distance, _, _, _ = igl.signed_distance(query, vertices, faces, unsigned)
    return torch.from_numpy(distance).float()


def signed_distance(mesh: trimesh.Trimesh, points: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Signed distance ``(P,)`` from ``points`` ``(P, 3)`` to ``mesh``, negative inside.

    The sign is :func:`inside`'s (the winding number), so a signed distance and an occupancy label
    of the same point always agree, on non-watertight meshes too.
    """
    dist = unsigned_distance(mesh, points)
    return torch.where(inside(mesh, points), -dist, dist)


def occupancy_grid(mesh: trimesh.Trimesh, resolution: int) -> torch.Tensor:
    """Occupancy ``(R, R, R)`` bool at the cell centres :func:`grid_coords` of [-1, 1]^3.

    ``grid[i, j, k]`` is the point ``(x_i, y_j, z_k)``; the inside test is the one the samples use,
    so IoU against a predicted grid measures the method, not the labelling.
    """
    if resolution < 1:
        raise InputError(f"occupancy grid resolution must be at least 1, got {resolution}")
    flags = inside(mesh, grid_coords((resolution,) * 3, dtype=torch.float32))
    return flags.reshape(resolution, resolution, resolution)


# --------------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------------


def sample_mesh(mesh: trimesh.Trimesh, spec: SamplingSpec, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Draw and label the samples of one normalised mesh.

    Returns arrays ``points (P, 3)``, ``sdf (P, 1)``, ``occupancy (P, 1)`` (bool) and
    ``surface_points (Q, 3)``, with ``P = n_uniform + n_near``, uniform points first.
    """
    uniform = rng.uniform(-1.0, 1.0, size=(spec.n_uniform, 3))
    base = _sample_surface(mesh, spec.n_near, rng)
    std = np.repeat(spec.near_std, _even_split(spec.n_near, len(spec.near_std)))
    near = np.clip(base + rng.normal(size=base.shape) * std[:, None], -1.0, 1.0)
    surface = _sample_surface(mesh, spec.n_surface, rng)
    points = np.concatenate([uniform, near]).astype(np.float32)

    occupied = inside(mesh, points)
    dist = unsigned_distance(mesh, points)
    sdf = torch.where(occupied, -dist, dist)
    return {
        "points": points,
        "sdf": sdf.numpy()[:, None],
        "occupancy": occupied.numpy()[:, None],
        "surface_points": surface.astype(np.float32),
    }


def _sample_surface(mesh: trimesh.Trimesh, count: int, rng: np.random.Generator) -> np.ndarray:
    if count == 0:
        return np.zeros((0, 3))
    points, _ = trimesh.sample.sample_surface(mesh, count, seed=rng)
    return np.asarray(points, dtype=np.float64)


def _even_split(n: int, parts: int) -> np.ndarray:
    counts = np.full(parts, n // parts)
    counts[: n % parts] += 1
    return counts


def shape_seed(seed: int, name: str) -> np.random.Generator:
    """The sampling generator of shape ``name``: a function of ``(seed, name)`` only, so a shape's
    samples do not depend on its position in a folder."""
    digest = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng([seed, digest])


# --------------------------------------------------------------------------------------------------
# Datasets: one sampling and caching implementation, several sources of meshes
# --------------------------------------------------------------------------------------------------

_ARRAYS = ("points", "sdf", "occupancy", "surface_points", "vertices", "faces")


class ShapeCollection:
    """Base of the shape datasets: turns a source of normalised meshes into :class:`ShapeSignal`.

    Subclasses give :attr:`names`, :meth:`source_key` (a cheap description of the mesh that
    changes when it does: a file's path, modification time and size) and :meth:`load_normalized`.
    Item ``i`` is read from the cache when an entry for (source key, sampling spec, seed, cache
    version) exists; otherwise the mesh is loaded and sampled, and the entry is written atomically
    (a temporary file in the cache folder, then ``os.replace``), so concurrent workers and
    interrupted runs never leave a half-written entry. Entries for other parameters are left in
    place and simply not matched. ``stats`` counts computations and cache hits in this process.

    Args:
        spec: the sampling parameters.
        seed: the sampling seed (each shape's generator is :func:`shape_seed` of it and the name).
        cache_dir: the cache folder (created if needed), or ``None`` to compute every time.
    """

    names: list[str]

    def __init__(self, spec: SamplingSpec, seed: int = 0, cache_dir: str | os.PathLike | None = None):
        self.spec, self.seed = spec, int(seed)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)
        self.stats = {"computed": 0, "cache_hits": 0}
        self._warned: set[str] = set()

    def source_key(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def load_normalized(self, index: int) -> trimesh.Trimesh:
        raise NotImplementedError

    def describe(self, index: int) -> str:
        """How warnings refer to shape ``index``."""
        return repr(self.names[index])

    def __len__(self) -> int:
        return len(self.names)

    def __iter__(self) -> Iterator[ShapeSignal]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> ShapeSignal:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} shapes")
        return self.signal(index % n)

    def cache_path(self, index: int) -> Path | None:
        """The cache file of shape ``index`` under the current parameters (``None``: no cache)."""
        if self.cache_dir is None:
            return None
        key = {
            "version": CACHE_VERSION,
            "source": self.source_key(index),
            "sampling": asdict(self.spec),
            "seed": self.seed,
        }
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", self.names[index])[-80:]
        return self.cache_dir / f"{stem}-{digest}.npz"

    def signal(self, index: int) -> ShapeSignal:
        """Shape ``index``, from the cache when possible."""
        name = self.names[index]
        path = self.cache_path(index)
        arrays = _read_cache(path) if path is not None else None
        if arrays is None:
            mesh = self.load_normalized(index)
            arrays = sample_mesh(mesh, self.spec, shape_seed(self.seed, name))
            arrays["vertices"] = np.asarray(mesh.vertices, dtype=np.float64)
            arrays["faces"] = np.asarray(mesh.faces, dtype=np.int64)
            arrays["watertight"] = np.array(mesh.is_watertight)
            self.stats["computed"] += 1
            if path is not None:
                _write_cache(path, arrays)
        else:
            self.stats["cache_hits"] += 1
        for key in ("points", "sdf", "surface_points"):
            if not np.isfinite(arrays[key]).all():
                raise InputError(f"shape {self.describe(index)} gave non-finite {key}")
        if not bool(arrays["watertight"]) and name not in self._warned:
            self._warned.add(name)
            warnings.warn(
                f"mesh {self.describe(index)} is not watertight; inside/outside comes from the "
                "generalized winding number (>= 0.5) and is a best guess near its holes",
                NonWatertightMeshWarning,
                3,
            )
        return ShapeSignal(
            points=torch.from_numpy(arrays["points"]),
            sdf=torch.from_numpy(arrays["sdf"]),
            occupancy=torch.from_numpy(arrays["occupancy"]),
            surface_points=torch.from_numpy(arrays["surface_points"]),
            mesh=trimesh.Trimesh(arrays["vertices"], arrays["faces"], process=False),
            name=name,
            n_uniform=self.spec.n_uniform,
        )


def _read_cache(path: Path) -> dict[str, np.ndarray] | None:
    if not path.exists():
        return None
    try:
        with np.load(path) as data:
            return {key: data[key] for key in (*_ARRAYS, "watertight")}
    except Exception as exc:  # truncated or foreign file: recompute and overwrite
        warnings.warn(f"ignoring unreadable cache file {path}: {_one_line(exc)}", stacklevel=3)
        return None


def _write_cache(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically: a temporary file beside the entry, then ``os.replace``. A cache that
    cannot be written (read-only, disk full) costs speed, not the run: it warns and goes on."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    except OSError as exc:
        warnings.warn(f"cannot write cache file {path}: {_one_line(exc)}", stacklevel=3)
        return
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(tmp, path)
    except OSError as exc:
        warnings.warn(f"cannot write cache file {path}: {_one_line(exc)}", stacklevel=3)
    finally:
        Path(tmp).unlink(missing_ok=True)


def _list_meshes(root: Path, extensions: tuple[str, ...]) -> list[Path]:
    """Relative paths of the mesh files under ``root`` (recursively), sorted; hidden entries are
    skipped."""
    found: list[Path] = []
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    stack.append(Path(entry.path))
                elif entry.name.lower().endswith(extensions):
                    found.append(Path(entry.path).relative_to(root))
    return sorted(found)


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
        self.extensions = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
        self.files = _list_meshes(self.root, self.extensions)
        if not self.files:
            raise InputError(
                f"no mesh files under {self.root} (accepted extensions: {', '.join(self.extensions)})"
            )
        names = [shape_name(f) for f in self.files]
        clashes = {n for n in names if names.count(n) > 1}
        self.names = [f.as_posix() if n in clashes else n for f, n in zip(self.files, names, strict=True)]
        self._unreadable: set[int] = set()

    def path(self, index: int) -> Path:
        return self.root / self.files[index]

    def describe(self, index: int) -> str:
        return f"{self.names[index]!r} ({self.path(index)})"

    def source_key(self, index: int) -> dict[str, Any]:
        path = self.path(index)
        try:
            stat = path.stat()
        except OSError as exc:
            raise InputError(f"cannot read mesh {path}: {_one_line(exc)}") from exc
        return {"path": str(path.resolve()), "mtime_ns": stat.st_mtime_ns, "size": stat.st_size}

    def load_normalized(self, index: int) -> trimesh.Trimesh:
        return normalize_mesh(load_mesh(self.path(index)), self.spec.padding)

    def __getitem__(self, index: int) -> ShapeSignal:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} meshes in {self.root}")
        for offset in range(n):
            i = (index + offset) % n
            if i in self._unreadable:
                continue
            try:
                return self.signal(i)
            except InputError as exc:
                if self.strict:
                    raise
                self._unreadable.add(i)
                warnings.warn(f"skipping mesh: {exc}", UnreadableMeshWarning, 2)
        raise InputError(f"none of the {n} mesh files under {self.root} can be read")

    def __repr__(self) -> str:
        return f"MeshFolder({str(self.root)!r}, {len(self)} meshes, {self.spec})"


# --------------------------------------------------------------------------------------------------
# Context / target split
# --------------------------------------------------------------------------------------------------

TARGETS = ("occupancy", "sdf")
CONTEXTS = ("labelled", "surface")


@dataclass
class ShapeSplit:
    """Turn a list of :class:`ShapeSignal` into a :class:`~genfield.datasets.batch.SignalBatch`.

    Targets are labelled points drawn from a signal's samples: a fraction ``uniform_fraction`` of
    them uniform in the cube, the rest near the surface (``None``: drawn from the pooled samples
    in proportion to their counts), with value the occupancy (0. or 1.) or the signed distance.

    The context is either

    * ``"labelled"``: labelled points like the targets. Context and target are prefixes of one
      random order of the drawn points, so the larger contains the smaller (the neural-process
      convention, as in :class:`~genfield.datasets.images.ImageSplit`); ``disjoint=True`` draws
      them without overlap instead; or
    * ``"surface"``: a sparse point cloud of ``n_context`` surface points, observed as the value
      the field takes *on* the surface: 0 for a signed distance and 0.5 for an occupancy
      probability (the decision boundary). Point-cloud completion (Occupancy Networks) conditions
      on exactly this.

    Queries are points ``(S, N, 3)`` observed through a
    :class:`~genfield.forward.point.PointMap`; values are ``(S, N, 1)``. Each signal's metadata
    carries its ``name`` and normalised ``mesh`` (for Chamfer distance and IoU); ``extras`` holds
    ``{"target": ..., "context": ...}``. Every random draw comes from ``generator``, so the same
    seed gives the same batch.
    """

    target: str = "occupancy"
    context: str = "labelled"
    n_context: int = 300
    n_target: int = 2048
    uniform_fraction: float | None = 0.5
    disjoint: bool = False

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"shape target must be one of {TARGETS}, got {self.target!r}")
        if self.context not in CONTEXTS:
            raise InputError(f"shape context must be one of {CONTEXTS}, got {self.context!r}")
        if self.n_context < 1 or self.n_target < 1:
            raise InputError(
                f"n_context and n_target must be positive, got {self.n_context}, {self.n_target}"
            )
        if self.uniform_fraction is not None and not 0 <= self.uniform_fraction <= 1:
            raise InputError(f"uniform_fraction must be in [0, 1], got {self.uniform_fraction}")

    def _draw(self, signal: ShapeSignal, count: int, generator) -> torch.Tensor:
        """Indices of ``count`` distinct labelled points of ``signal``, in random order."""
        total = len(signal.points)
        if signal.n_uniform is None or self.uniform_fraction is None:
            if count > total:
                raise InputError(f"shape {signal.name!r} has {total} samples, {count} requested")
            return torch.randperm(total, generator=generator)[:count]
        n_u = round(self.uniform_fraction * count)
        n_n = count - n_u
        if n_u > signal.n_uniform or n_n > total - signal.n_uniform:
            raise InputError(
                f"shape {signal.name!r} has {signal.n_uniform} uniform and "
                f"{total - signal.n_uniform} near-surface samples; {n_u} and {n_n} requested"
            )
        uniform = torch.randperm(signal.n_uniform, generator=generator)[:n_u]
        near = signal.n_uniform + torch.randperm(total - signal.n_uniform, generator=generator)[:n_n]
        both = torch.cat([uniform, near])
        return both[torch.randperm(count, generator=generator)]

    def _values(self, signal: ShapeSignal) -> torch.Tensor:
        return signal.occupancy.float() if self.target == "occupancy" else signal.sdf

    def __call__(
        self, signals: Sequence[ShapeSignal], generator: torch.Generator | None = None
    ) -> SignalBatch:
        if not signals:
            raise InputError("ShapeSplit needs at least one shape")
        nc, nt = self.n_context, self.n_target
        cq, cv, tq, tv = [], [], [], []
        for sig in signals:
            values = self._values(sig)
            if self.context == "surface":
                if nc > len(sig.surface_points):
                    raise InputError(
                        f"shape {sig.name!r} has {len(sig.surface_points)} surface points, "
                        f"n_context={nc} requested"
                    )
                pick = torch.randperm(len(sig.surface_points), generator=generator)[:nc]
                cq.append(sig.surface_points[pick])
                on_surface = 0.5 if self.target == "occupancy" else 0.0
                cv.append(torch.full((nc, 1), on_surface, dtype=values.dtype))
                target = self._draw(sig, nt, generator)
            else:
                drawn = self._draw(sig, nc + nt if self.disjoint else max(nc, nt), generator)
                context = drawn[:nc]
                target = drawn[nc:] if self.disjoint else drawn[:nt]
                cq.append(sig.points[context])
                cv.append(values[context])
            tq.append(sig.points[target])
            tv.append(values[target])
        return SignalBatch(
            kind="shape",
            forward_map=PointMap(),
            context=Observations(torch.stack(cq), torch.stack(cv)),
            target=Observations(torch.stack(tq), torch.stack(tv)),
            metadata=[{"name": s.name, "mesh": s.mesh} for s in signals],
            extras={"target": self.target, "context": self.context},
        )


__all__ = [
    "CACHE_VERSION",
    "MESH_EXTENSIONS",
    "MeshFolder",
    "NonWatertightMeshWarning",
    "SamplingSpec",
    "ShapeCollection",
    "ShapeSignal",
    "ShapeSplit",
    "UnreadableMeshWarning",
    "inside",
    "load_mesh",
    "normalize_mesh",
    "normalize_points",
    "occupancy_grid",
    "sample_mesh",
    "shape_name",
    "shape_seed",
    "signed_distance",
    "unsigned_distance",
    "winding_number",
    "winding_number_exact",
]
