"""Built-in multi-view data: scenes of random coloured primitives, ray-cast, written as NeRF-synthetic."""

from __future__ import annotations

import colorsys
import json
import math
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch
import trimesh

from genfield.datasets.builtin.primitives import VIEW_STYLE, random_primitive
from genfield.datasets.nerf_synthetic import NERF_SYNTHETIC_SCALE, NerfSyntheticFolder
from genfield.datasets.scenes import load_json
from genfield.errors import InputError
from genfield.forward.volume import camera_rays, look_at
from genfield.outputs import atomic_write

#: The built-in views are written in NeRF-synthetic units (objects in ~[-1.5, 1.5]^3).
BUILTIN_WORLD = 1.0 / NERF_SYNTHETIC_SCALE
BUILTIN_CAMERA_RADIUS = 4.0  # NeRF-synthetic units (2.67 after the loader's scale)
BUILTIN_CAMERA_ANGLE_X = 0.6911112070083618  # the field of view of the Blender scenes
BUILTIN_LIGHT = np.array([0.35, -0.45, 0.82]) / np.linalg.norm([0.35, -0.45, 0.82])
BUILTIN_AMBIENT = 0.3
MANIFEST = "genfield_views.json"
MANIFEST_VERSION = 1
#: The primitives a built-in scene is made of (:mod:`~genfield.datasets.builtin.primitives`).
VIEW_PRIMITIVES = ("box", "sphere", "cylinder", "capsule")


def random_primitives(rng: np.random.Generator) -> tuple[trimesh.Trimesh, np.ndarray]:
    """A random scene of 1-3 coloured primitives inside ``[-0.9, 0.9]^3`` (normalised units).

    Returns the concatenated mesh and the RGB albedo of each face ``(F, 3)``.
    """
    meshes, colours = [], []
    for _ in range(int(rng.integers(1, 4))):
        mesh, _ = random_primitive(rng, VIEW_PRIMITIVES, VIEW_STYLE)
        hue, sat, val = rng.random(), rng.uniform(0.5, 0.9), rng.uniform(0.6, 1.0)
        meshes.append(mesh)
        colours.append(np.tile(colorsys.hsv_to_rgb(hue, sat, val), (len(mesh.faces), 1)))
    scene = trimesh.util.concatenate(meshes)
    extent = np.abs(scene.vertices).max()
    if extent > 0.9:
        scene.apply_scale(0.9 / extent)
    return scene, np.concatenate(colours)


def raycast_rgba(
    mesh: trimesh.Trimesh,
    face_colours: np.ndarray,
    c2w: np.ndarray,
    focal: float,
    size: int,
) -> np.ndarray:
    """Ray-cast one view of a coloured mesh: uint8 RGBA ``(size, size, 4)``.

    One ray per pixel centre (the rays of :func:`~genfield.forward.volume.camera_rays`, so the data
    match the renderer's camera model exactly); Lambert shading with the fixed world light
    :data:`BUILTIN_LIGHT` plus ambient :data:`BUILTIN_AMBIENT`; transparent (alpha 0, RGB 0) where
    the ray misses.
    """
    origins, directions = camera_rays(torch.from_numpy(c2w), focal, size, size)
    origins, directions = origins.numpy(), directions.numpy()
    locations, ray_index, face_index = mesh.ray.intersects_location(origins, directions, multiple_hits=False)
    del locations
    normals = mesh.face_normals[face_index]
    facing = np.sum(normals * directions[ray_index], axis=-1, keepdims=True)
    normals = np.where(facing > 0, -normals, normals)  # the side the camera sees
    lambert = np.clip(normals @ BUILTIN_LIGHT, 0.0, 1.0)[:, None]
    shade = BUILTIN_AMBIENT + (1 - BUILTIN_AMBIENT) * lambert
    rgba = np.zeros((size * size, 4))
    rgba[ray_index, :3] = face_colours[face_index] * shade
    rgba[ray_index, 3] = 1.0
    return np.round(rgba.reshape(size, size, 4) * 255).astype(np.uint8)


def _camera_positions(rng: np.random.Generator, n_views: int, n_test_views: int):
    """Training cameras at random points of a sphere band; test cameras on an orbit at 30 deg."""
    azimuth = rng.uniform(0, 2 * np.pi, n_views)
    elevation = np.arcsin(rng.uniform(np.sin(np.radians(-20)), np.sin(np.radians(70)), n_views))
    orbit = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, n_test_views, endpoint=False)
    test_elevation = np.full(n_test_views, np.radians(30))

    def spherical(az: np.ndarray, el: np.ndarray) -> np.ndarray:
        unit = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1)
        return BUILTIN_CAMERA_RADIUS * unit

    return spherical(azimuth, elevation), spherical(orbit, test_elevation)


def _write_scene(
    scene_dir: Path, rng: np.random.Generator, n_views: int, n_test_views: int, size: int
) -> None:
    mesh, colours = random_primitives(rng)
    mesh.apply_scale(BUILTIN_WORLD)
    focal = 0.5 * size / math.tan(0.5 * BUILTIN_CAMERA_ANGLE_X)
    train, test = _camera_positions(rng, n_views, n_test_views)
    for split, positions in (("train", train), ("test", test)):
        (scene_dir / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for k, position in enumerate(positions):
            c2w = look_at(torch.from_numpy(position)).numpy()
            iio.imwrite(scene_dir / split / f"r_{k}.png", raycast_rgba(mesh, colours, c2w, focal, size))
            frames.append({"file_path": f"./{split}/r_{k}", "transform_matrix": c2w.tolist()})
        meta = {"camera_angle_x": BUILTIN_CAMERA_ANGLE_X, "frames": frames}
        with atomic_write(scene_dir / f"transforms_{split}.json", "w") as file:
            file.write(json.dumps(meta, indent=1))


def builtin_views(
    folder: str | Path,
    n_scenes: int = 8,
    n_views: int = 16,
    size: int = 32,
    seed: int = 0,
    n_test_views: int = 4,
    split: str = "train",
) -> NerfSyntheticFolder:
    """A procedural multi-view dataset, ray-cast and written to ``folder`` as NeRF-synthetic scenes.

    Each scene holds 1-3 random coloured primitives (trimesh box, sphere, cylinder, capsule of
    random size and pose) inside the unit cube, Lambert-shaded under a fixed world light plus
    ambient (so the radiance does not depend on the view), on white. One ray per pixel centre.
    ``n_views`` training cameras sit at random points of a sphere (elevation -20 to 70 degrees) and
    ``n_test_views`` test cameras on an orbit at 30 degrees, all looking at the origin. Scene ``i``
    depends only on ``(seed, i)``. The files are what the loader reads: ``scene_XXXX/`` with
    ``transforms_{train,test}.json`` and RGBA PNGs, in NeRF-synthetic units (the loader's default
    scale brings them back to ``[-1, 1]^3``).

    A manifest (``genfield_views.json``) records the parameters; when it matches, nothing is
    rendered again. When it does not, the scene folders it lists are replaced.

    Returns:
        ``NerfSyntheticFolder(folder, split)``.
    """
    for name, value in (
        ("n_scenes", n_scenes),
        ("n_views", n_views),
        ("size", size),
        ("n_test_views", n_test_views),
    ):
        if int(value) != value or value < 1:
            raise InputError(f"builtin_views {name} must be a positive integer, got {value!r}")
    folder = Path(folder)
    params = {
        "n_scenes": n_scenes,
        "n_views": n_views,
        "n_test_views": n_test_views,
        "size": size,
        "seed": seed,
    }
    names = [f"scene_{i:04d}" for i in range(n_scenes)]
    manifest_path = folder / MANIFEST
    old = load_json(manifest_path) if manifest_path.is_file() else {}
    complete = all((folder / n / f"transforms_{s}.json").is_file() for n in names for s in ("train", "test"))
    if old.get("version") == MANIFEST_VERSION and old.get("params") == params and complete:
        return NerfSyntheticFolder(folder, split=split)
    for stale in old.get("scenes", []):  # only folders this function wrote before
        if (folder / stale).is_dir() and Path(stale).name == stale:
            shutil.rmtree(folder / stale)
    manifest_path.unlink(missing_ok=True)
    from tqdm import tqdm

    for i, name in enumerate(tqdm(names, desc="rendering built-in views", unit="scene", leave=False)):
        _write_scene(folder / name, np.random.default_rng([seed, i]), n_views, n_test_views, size)
    manifest = {
        "format": "genfield builtin_views",
        "version": MANIFEST_VERSION,
        "params": params,
        "scenes": names,
    }
    with atomic_write(manifest_path, "w") as file:  # last, so a complete manifest means complete scenes
        file.write(json.dumps(manifest, indent=1))
    return NerfSyntheticFolder(folder, split=split)
