"""Meshes: reading, normalising into the field domain, and the inside test and distance.

A shape is a triangle mesh, normalised into the field domain: its bounding box is centred at the
origin and its longest side scaled to ``2 (1 - padding)`` (1.8 with the default ``padding=0.1``),
so a margin of 0.1 on each side of the longest axis stays empty and near-surface samples of the
surface still fall in the cube [-1, 1]^3. Points are labelled with

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
"""

from __future__ import annotations

import os
from pathlib import Path

import igl
import numpy as np
import torch
import trimesh

from genfield.datasets.files import one_line
from genfield.errors import InputError
from genfield.fields.coords import grid_coords

#: File extensions a :class:`MeshFolder` lists (lower case; matching ignores case).
MESH_EXTENSIONS: tuple[str, ...] = (".obj", ".ply", ".off", ".stl", ".glb", ".gltf")


class UnreadableMeshWarning(UserWarning):
    """A mesh file could not be read (or holds no usable triangles) and was skipped."""


class NonWatertightMeshWarning(UserWarning):
    """A mesh has boundary edges: inside/outside near its holes is a best guess."""


# --------------------------------------------------------------------------------------------------
# Reading and normalising meshes
# --------------------------------------------------------------------------------------------------


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
        raise InputError(f"cannot read mesh {path}: {one_line(exc)}") from exc
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
