"""Meshes of shape fields: marching cubes on a grid, export, and a headless shaded preview.

:func:`extract_mesh` evaluates a field on a regular grid of ``resolution^3`` nodes spanning
``[-bound, bound]^3`` (the node at index ``i`` sits at ``-bound + i * 2 bound / (resolution - 1)``,
so the grid's corners are the cube's), in chunks under ``torch.no_grad`` into a float32 numpy volume
(a 256^3 grid is 64 MiB there, and never passes through the network at once), then runs
Lewiner marching cubes (``skimage.measure.marching_cubes``) at ``level``:

* ``kind="sdf"``: signed distance, negative inside; the surface is ``{sdf = level}``.
* ``kind="occupancy"``: occupancy *logits*, inside where the value exceeds ``level``; level 0 is
  probability 0.5. Any field that is larger inside (a radiance field's density, with a level such
  as 10) meshes the same way.

Faces are oriented outward (counter-clockwise seen from outside, so ``mesh.volume > 0``). By
default the volume is padded with one layer of "outside", so a surface cut by the cube's faces is
capped there and the mesh is always closed (watertight), as printing, volumes and inside tests
need. The cap is flat and lies half a grid cell (``bound / (resolution - 1)``) outside the cube,
between the last sample and the pad: clipping it onto the face would collapse the triangles along
the cube's edges and open the surface. Grid nodes that sit on the level (within 1e-5 of the
volume's range) are nudged inside first, since marching cubes leaves holes at such nodes.
Vertices are in world coordinates ``(x, y, z)``; volume index ``[i, j, k]`` is the point
``(x_i, y_j, z_k)``.

:func:`render_mesh_preview` draws a shaded picture without OpenGL: an orthographic camera, back
faces culled, the rest painted far to near (the painter's algorithm) with Lambert shading from a
light beside the camera. That is exact for convex shapes and looks right for the small triangles
of a marching-cubes mesh; it is a preview, not a renderer.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import trimesh
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from skimage.measure import marching_cubes

from genfield.errors import InputError, unknown_name
from genfield.viz.figures import figure_to_array, save_image

KINDS = ("sdf", "occupancy")
MESH_FORMATS = (".ply", ".obj", ".glb", ".stl", ".off")
#: The up axis and the horizontal direction a camera at azimuth 0 sits in, per ``up`` name.
_UP = {"y": (1, 2), "z": (2, 0), "x": (0, 1)}
#: Default preview views: (azimuth, elevation) in degrees.
DEFAULT_VIEWS: tuple[tuple[float, float], ...] = ((30.0, 25.0), (150.0, 25.0), (270.0, 25.0))


def grid_points(resolution: int, bound: float = 1.0, device=None) -> torch.Tensor:
    """The node coordinates ``(resolution,)`` of one grid axis, ``-bound .. bound``."""
    return torch.linspace(-bound, bound, resolution, device=device)


def evaluate_grid(
    field_fn: Callable[[torch.Tensor], torch.Tensor],
    resolution: int = 128,
    chunk: int = 65536,
    bound: float = 1.0,
    channel: int = 0,
    device: torch.device | str | None = None,
) -> np.ndarray:
    """Evaluate ``field_fn`` ``(M, 3) -> (M, c)`` on the ``resolution^3`` grid, in chunks.

    Each chunk's points are computed from their flat indices (the full coordinate grid is never
    built) and evaluated under ``torch.no_grad``; channel ``channel`` of the output is stored in a
    float32 numpy volume ``(R, R, R)`` indexed ``[x, y, z]``.
    """
    if resolution < 2 or chunk < 1:
        raise InputError(
            f"evaluate_grid: need resolution >= 2 and chunk >= 1, got {resolution}, {chunk}"
        )
    axis = grid_points(resolution, bound, device)
    volume = np.empty(resolution**3, dtype=np.float32)
    with torch.no_grad():
        for start in range(0, resolution**3, chunk):
            index = torch.arange(start, min(start + chunk, resolution**3), device=device)
            ijk = torch.stack(
                [index // resolution**2, (index // resolution) % resolution, index % resolution], -1
            )
            values = field_fn(axis[ijk])
            if values.dim() == 2:
                values = values[:, channel]
            if values.shape != index.shape:
                raise InputError(
                    f"evaluate_grid: field_fn mapped {tuple(ijk.shape)} points to "
                    f"{tuple(values.shape)}; expected (M, c) or (M,)"
                )
            volume[start : start + len(index)] = values.to("cpu", torch.float32).numpy()
    return volume.reshape(resolution, resolution, resolution)


def mesh_from_volume(
    volume: np.ndarray,
    level: float = 0.0,
    kind: str = "sdf",
    bound: float = 1.0,
    close_boundary: bool = True,
) -> trimesh.Trimesh:
    """Marching cubes of a volume ``(R, R, R)`` spanning ``[-bound, bound]^3`` (see the module doc).

    Raises:
        ValueError: the volume has NaN/inf values, or ``level`` is not crossed (no surface).
    """
    if kind not in KINDS:
        raise unknown_name("mesh kind", kind, KINDS)
    volume = np.asarray(volume, dtype=np.float32)
    if volume.ndim != 3 or min(volume.shape) < 2:
        raise InputError(
            f"mesh_from_volume: volume must be (R, R, R) with R >= 2, got {volume.shape}"
        )
    if not np.isfinite(volume).all():
        raise ValueError(f"the {kind} field has NaN or infinite values on the grid")
    low, high = float(volume.min()), float(volume.max())
    if not low < level < high:
        raise ValueError(
            f"level {level} is not crossed by the {kind} field on the {volume.shape[0]}^3 grid "
            f"(min {low:.4g}, max {high:.4g}): there is no surface to mesh"
        )
    # inside-positive volume: marching cubes then orients faces consistently for both kinds
    inside = -volume if kind == "sdf" else volume
    iso = -level if kind == "sdf" else level
    # a node at (or within float noise of) the level makes marching cubes emit coincident vertices
    # on its edges and leave holes; nudge such nodes just inside (a shift of ~1e-5 of a cell)
    nudge = np.float32(1e-5) * max(float(np.abs(inside - iso).max()), abs(iso))
    inside = np.where(np.abs(inside - iso) < nudge, np.float32(iso + nudge), inside)
    pad = 0
    if close_boundary:
        pad = 1
        # each pad node mirrors its boundary neighbour below the level, iso - |v - iso|: an inside
        # neighbour is crossed exactly half a cell out (a flat cap), an outside one is not crossed
        mirrored = iso - np.abs(np.pad(inside, 1, mode="edge") - iso)
        mirrored[1:-1, 1:-1, 1:-1] = inside
        inside = mirrored
    spacing = tuple(2.0 * bound / (n - 1) for n in volume.shape)
    vertices, faces, _, _ = marching_cubes(
        inside, level=iso, spacing=spacing, allow_degenerate=False
    )
    vertices = vertices - np.asarray(spacing) * pad - bound
    mesh = trimesh.Trimesh(vertices=vertices, faces=faces, process=False)  # already indexed
    if mesh.volume < 0:  # winding is inward: flip it so normals point out
        mesh.invert()
    return mesh


def extract_mesh(
    field_fn: Callable[[torch.Tensor], torch.Tensor],
    resolution: int = 128,
    level: float = 0.0,
    kind: str = "sdf",
    chunk: int = 65536,
    bound: float = 1.0,
    channel: int = 0,
    device: torch.device | str | None = None,
    close_boundary: bool = True,
) -> trimesh.Trimesh:
    """The mesh of a shape field's level set (marching cubes on a chunked grid evaluation).

    Args:
        field_fn: points ``(M, 3)`` -> values ``(M, 1)`` (or ``(M, c)``, of which ``channel`` is
            used, or ``(M,)``): e.g. ``field.bind(params)`` of one signal, or any callable.
        resolution: grid nodes per axis (the cost is ``resolution^3`` field evaluations).
        level: the iso-value; 0 for an SDF and for occupancy logits (probability 0.5).
        kind: ``"sdf"`` (negative inside) or ``"occupancy"`` (larger inside).
        chunk: points per field evaluation.
        bound: the grid spans ``[-bound, bound]^3``.
        device: where the grid points are made (the field's device).
        close_boundary: cap the surface where it leaves the cube, so the mesh is watertight.

    Returns:
        A :class:`trimesh.Trimesh` in world coordinates with outward normals.
    """
    if kind not in KINDS:
        raise unknown_name("mesh kind", kind, KINDS)
    volume = evaluate_grid(field_fn, resolution, chunk, bound, channel, device)
    return mesh_from_volume(volume, level, kind, bound, close_boundary)


def save_mesh(mesh: trimesh.Trimesh, path: str | os.PathLike) -> Path:
    """Export a mesh through trimesh; the suffix picks the format (.ply, .obj, .glb, .stl, .off)."""
    path = Path(path)
    if path.suffix.lower() not in MESH_FORMATS:
        raise InputError(
            f"save_mesh {path}: unknown mesh format; use one of {', '.join(MESH_FORMATS)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path)
    return path


# -- headless preview ------------------------------------------------------------------------------
def view_basis(azimuth: float, elevation: float, up: str = "y") -> np.ndarray:
    """Rows ``(right, up, back)`` of an orbiting camera's frame (OpenGL: it looks along ``-back``).

    The camera sits in the direction ``back`` from the target: at azimuth 0 along the horizontal
    axis after ``up`` (``+z`` for y-up, ``+x`` for z-up), turning by ``azimuth`` degrees around
    ``up`` and rising by ``elevation`` degrees above the horizontal plane.
    """
    if up not in _UP:
        raise unknown_name("up axis", up, list(_UP))
    u_axis, h_axis = _UP[up]
    e_up, e_h = np.eye(3)[u_axis], np.eye(3)[h_axis]
    e_h2 = np.cross(e_up, e_h)
    az, el = math.radians(azimuth), math.radians(elevation)
    back = math.cos(el) * (math.cos(az) * e_h + math.sin(az) * e_h2) + math.sin(el) * e_up
    right = np.cross(e_up, back)
    right /= np.linalg.norm(right)
    return np.stack([right, np.cross(back, right), back])


def _draw_view(
    ax, mesh: trimesh.Trimesh, basis: np.ndarray, colour: np.ndarray, ambient: float
) -> None:
    """Paint one orthographic view of ``mesh`` into ``ax``: culled, depth-sorted, Lambert-shaded."""
    centre = mesh.bounding_box.centroid
    radius = float(np.linalg.norm(mesh.vertices - centre, axis=1).max()) * 1.05 or 1.0
    camera = (mesh.vertices - centre) @ basis.T  # (V, 3): screen x, screen y, depth toward camera
    normals = mesh.face_normals @ basis.T  # camera-frame normals; facing the camera: z > 0
    visible = normals[:, 2] > 0
    triangles = camera[mesh.faces[visible]]  # (F, 3, 3)
    order = np.argsort(triangles[:, :, 2].mean(axis=1))  # far first
    light = np.array([-0.35, 0.5, 1.0]) / np.linalg.norm([-0.35, 0.5, 1.0])  # upper left of camera
    lambert = np.clip(normals[visible] @ light, 0.0, 1.0)[order]
    shade = ambient + (1.0 - ambient) * lambert
    colours = np.clip(shade[:, None] * colour[None, :], 0, 1)
    polygons = PolyCollection(
        triangles[order][:, :, :2], facecolors=colours, edgecolors=colours, linewidths=0.3
    )
    ax.add_collection(polygons)
    ax.set_xlim(-radius, radius)
    ax.set_ylim(-radius, radius)
    ax.set_aspect("equal")
    ax.set_axis_off()


def render_mesh_preview(
    mesh: trimesh.Trimesh,
    path: str | os.PathLike,
    size: int = 256,
    views: Sequence[tuple[float, float]] = DEFAULT_VIEWS,
    up: str = "y",
    colour: Sequence[float] = (0.62, 0.70, 0.82),
    ambient: float = 0.25,
) -> Path:
    """A shaded preview PNG of ``mesh``: one ``size x size`` panel per view, side by side.

    Args:
        mesh: the mesh (any trimesh; outward normals, as :func:`extract_mesh` makes them).
        path: the image file to write; its size is ``size`` rows by ``size * len(views)`` columns,
            RGB on a white background.
        views: ``(azimuth, elevation)`` in degrees for each panel, orbiting the mesh's centre.
        up: the world's up axis (``"y"``: ShapeNet; ``"z"``: Blender / NeRF-synthetic).
        colour: the surface's RGB albedo.
        ambient: the shade of faces turned away from the light.
    """
    if len(mesh.faces) == 0:
        raise ValueError("render_mesh_preview: the mesh has no faces")
    if not views:
        raise InputError("render_mesh_preview: views is empty")
    colour = np.asarray(colour, dtype=np.float64)
    panels = []
    for azimuth, elevation in views:
        figure = Figure(figsize=(size / 100, size / 100), dpi=100)
        ax = figure.add_axes((0, 0, 1, 1))
        _draw_view(ax, mesh, view_basis(azimuth, elevation, up), colour, ambient)
        panels.append(figure_to_array(figure))
    return save_image(path, np.concatenate(panels, axis=1))
