"""Multi-view radiance data: NeRF-synthetic and SRN scenes, built-in ray-cast scenes, view split.

A multi-view signal is a :class:`ViewSignal`: the posed images of one scene. Cameras follow the
renderer's convention (:mod:`genfield.forward.volume`: OpenGL, looking down -z, y up, pixel centres at
``+0.5``), and every loader rescales the world so the object sits inside the field's cube
``[-1, 1]^3``:

* **NeRF-synthetic** (Blender scenes, and the ShapeNet renders of Learned Initializations, which use
  the same ``transforms.json`` with one file per object): objects fill about ``[-1.5, 1.5]^3``,
  cameras sit at radius ~4 and the customary bounds are ``near = 2``, ``far = 6``. The loader
  multiplies camera positions and bounds by :data:`NERF_SYNTHETIC_SCALE` = 2/3, so the object fills
  ``[-1, 1]^3``, cameras sit at radius ~2.7 and the bounds become ``4/3`` and ``4``.
* **SRN** (Sitzmann et al. 2019, ShapeNet cars and chairs): ShapeNet objects are normalised to a
  unit bounding-box diagonal, so they already lie inside ``[-0.5, 0.5]^3`` and the default scale
  is 1 (cameras at radius ~1.3 for cars and ~2 for chairs; ``scale=2`` would fill the cube). SRN
  poses are OpenCV camera-to-world matrices (x right, y down, looking down +z); the loader converts
  them with ``c2w @ diag(1, -1, -1, 1)``.

Images are float32 ``(V, H, W, 3)`` in ``[0, 1]``, RGBA composited on white.
"""

from __future__ import annotations

import colorsys
import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
import trimesh
from einops import rearrange

from genfield.datasets.batch import Observations, SignalBatch
from genfield.errors import InputError
from genfield.forward.volume import CUBE_RADIUS, VolumeRenderer, camera_rays, ray_queries

#: World scale applied to NeRF-synthetic scenes: objects in ~[-1.5, 1.5]^3 -> [-1, 1]^3.
NERF_SYNTHETIC_SCALE = 2.0 / 3.0
#: The customary ray bounds of NeRF-synthetic scenes, in the files' units (before scaling).
NERF_SYNTHETIC_BOUNDS = (2.0, 6.0)
#: OpenCV camera axes -> OpenGL camera axes (flip y and z), applied on the right of c2w.
OPENCV_TO_OPENGL = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))
SPLITS = ("train", "val", "test")


@dataclass
class ViewSignal:
    """The posed images of one scene.

    Attributes:
        images: ``(V, H, W, 3)`` float32 in ``[0, 1]`` (composited on white).
        c2w: ``(V, 4, 4)`` camera-to-world matrices (OpenGL convention, normalised world).
        focal: focal length in pixels (shared by the views).
        cx, cy: principal point in pixels (pixel ``j`` spans ``[j, j + 1]``).
        near, far: ray bounds (distances from the camera, normalised world units).
        name: the scene's name (its folder).
    """

    images: torch.Tensor
    c2w: torch.Tensor
    focal: float
    cx: float
    cy: float
    near: float
    far: float
    name: str = ""

    @property
    def num_views(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.images.shape[1], self.images.shape[2]

    def rays(self, views: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit-direction rays ``(V, H * W, 3)`` of the chosen views (all by default)."""
        c2w = self.c2w if views is None else self.c2w[views]
        height, width = self.image_size
        return camera_rays(c2w, self.focal, height, width, self.cx, self.cy)


# --------------------------------------------------------------------------------------------
# reading files


def _check_finite(values: np.ndarray | float, what: str) -> None:
    if not np.all(np.isfinite(values)):
        raise InputError(f"{what} holds NaN or inf")


def _json_number(meta: dict[str, Any], key: str, path: Path) -> float:
    """``meta[key]`` as a finite float; a string, a boolean or a list is an error naming file and key."""
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{path} key {key!r} must be a number, got {value!r}")
    _check_finite(float(value), f"{path} key {key!r}")
    return float(value)


def _check_focal(focal: float, what: str) -> None:
    if not focal > 0:
        raise InputError(f"{what} focal length {focal} must be positive (pixels)")


def _check_pose(pose: np.ndarray, what: str) -> None:
    """A camera-to-world matrix must be invertible: a singular rotation block gives degenerate rays."""
    if np.linalg.cond(pose[:3, :3]) > 1e8 or np.linalg.cond(pose) > 1e12:
        raise InputError(f"{what} is not invertible (singular rotation block): not a camera pose")


def _check_downscale_fits(downscale: int, height: int, width: int, where: Path) -> None:
    if downscale > min(height, width):
        raise InputError(
            f"downscale={downscale} is larger than the {height} x {width} images of {where}; "
            f"valid: 1 to {min(height, width)}"
        )


def _read_rgb(path: Path) -> np.ndarray:
    """An image file as float32 ``(H, W, 3)`` in ``[0, 1]``; alpha composited on white."""
    try:
        image = iio.imread(path)
    except Exception as error:  # imageio raises many types for unreadable files
        raise InputError(f"cannot read image {path}: {error}") from None
    if np.issubdtype(image.dtype, np.integer):
        image = image.astype(np.float32) / np.iinfo(image.dtype).max
    else:
        image = image.astype(np.float32)
    _check_finite(image, f"image {path}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise InputError(f"image {path} has unsupported shape {image.shape}")
    channels = image.shape[-1]
    alpha = image[..., -1:] if channels in (2, 4) else np.ones_like(image[..., :1])
    colour = image[..., :3] if channels >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    return colour * alpha + (1 - alpha)


def _stack_images(images: list[np.ndarray], paths: list[Path]) -> torch.Tensor:
    """Stack equally sized images; a differently sized one is an error naming it."""
    for path, image in zip(paths, images, strict=True):
        if image.shape != images[0].shape:
            raise InputError(
                f"image {path} has size {image.shape[:2]}; expected {images[0].shape[:2]} "
                f"like {paths[0]}"
            )
    return torch.from_numpy(np.stack(images))


def _downscale(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Area-average ``(V, H, W, 3)`` by an integer factor (leftover rows/columns is dropped)."""
    if factor == 1:
        return images
    pooled = F.avg_pool2d(rearrange(images, "v h w c -> v c h w"), factor)
    return rearrange(pooled, "v c h w -> v h w c").contiguous()


def _load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read {path}: {error}") from None


def _check_split_and_downscale(split: str, downscale: int) -> None:
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if int(downscale) != downscale or downscale < 1:
        raise InputError(f"downscale must be a positive integer, got {downscale!r}")


def _require_dir(root: str | Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{what} folder {root} does not exist")
    return root


# --------------------------------------------------------------------------------------------
# NeRF-synthetic


class NerfSyntheticScene:
    """One scene in the NeRF-synthetic (Blender) format: a dataset of one :class:`ViewSignal`.

    Reads ``transforms_{split}.json`` (or ``transforms.json``, the one-file-per-object layout of the
    Learned Initializations ShapeNet renders): ``camera_angle_x`` and ``frames``, each with a
    ``file_path`` relative to ``root`` (with or without extension; ``.png`` is tried) and a 4 x 4
    ``transform_matrix`` (camera-to-world, OpenGL). ``focal = 0.5 W / tan(0.5 camera_angle_x)``
    (or ``fl_x`` when given, with ``cx``/``cy``). Constructing parses only the JSON; images are
    decoded by :meth:`load`.

    Args:
        root: the scene folder.
        split: ``train``, ``val`` or ``test``.
        downscale: integer factor to area-average the images by (focal and principal point follow).
        scale: world scale applied to camera positions and bounds (see the module docstring).
        near, far: ray bounds in the file's units (before ``scale``).
    """

    channels = 3

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        downscale: int = 1,
        scale: float = NERF_SYNTHETIC_SCALE,
        near: float = NERF_SYNTHETIC_BOUNDS[0],
        far: float = NERF_SYNTHETIC_BOUNDS[1],
    ) -> None:
        self.root = _require_dir(root, "scene")
        _check_split_and_downscale(split, downscale)
        self.split, self.downscale, self.scale = split, int(downscale), float(scale)
        self.near, self.far = near, far
        self.transforms_path = self._find_transforms()
        self.meta = _load_json(self.transforms_path)
        if not isinstance(self.meta, dict) or "frames" not in self.meta:
            raise InputError(f"{self.transforms_path} has no key 'frames'")
        if "camera_angle_x" not in self.meta and "fl_x" not in self.meta:
            raise InputError(f"{self.transforms_path} has no key 'camera_angle_x' (nor 'fl_x')")
        if not self.meta["frames"]:
            raise InputError(f"{self.transforms_path} lists no frames")

    def _find_transforms(self) -> Path:
        for name in (f"transforms_{self.split}.json", "transforms.json"):
            if (self.root / name).is_file():
                return self.root / name
        raise InputError(f"no transforms_{self.split}.json (nor transforms.json) in {self.root}")

    def _frame_file(self, frame: dict[str, Any], index: int) -> Path:
        if "file_path" not in frame:
            raise InputError(f"{self.transforms_path} frame {index} has no key 'file_path'")
        if not isinstance(frame["file_path"], str) or not frame["file_path"]:
            raise InputError(
                f"{self.transforms_path} frame {index} key 'file_path' must be a non-empty string, "
                f"got {frame['file_path']!r}"
            )
        relative = Path(frame["file_path"])
        expected = self.root / (relative if relative.suffix else relative.with_suffix(".png"))
        # lexically (`..` parts), so that links the user placed inside the folder still work
        root = Path(os.path.normpath(self.root.absolute()))
        if relative.is_absolute() or not Path(os.path.normpath(root / relative)).is_relative_to(root):
            raise InputError(
                f"{self.transforms_path} frame {index} file_path {frame['file_path']!r} leaves the "
                f"scene folder {self.root} (frame files must lie inside it)"
            )
        # the file as named, with .png added, or beside transforms.json (Learned Initializations)
        for path in (expected, self.root / relative, self.root / f"{relative.stem}.png"):
            if path.is_file():
                return path
        raise InputError(f"missing frame file {expected} (frame {index} of {self.transforms_path})")

    def _frame_pose(self, frame: dict[str, Any], index: int) -> np.ndarray:
        what = f"{self.transforms_path} frame {index} transform_matrix"
        if "transform_matrix" not in frame:
            raise InputError(f"{self.transforms_path} frame {index} has no key 'transform_matrix'")
        try:
            pose = np.asarray(frame["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            raise InputError(f"{what} is not a numeric matrix") from None
        if pose.shape == (3, 4):
            pose = np.concatenate([pose, [[0.0, 0.0, 0.0, 1.0]]])
        if pose.shape != (4, 4):
            raise InputError(f"{what} has shape {pose.shape}; expected (4, 4)")
        _check_finite(pose, what)
        _check_pose(pose, what)
        return pose

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> ViewSignal:
        if index not in (0, -1):
            raise IndexError(index)
        return self.load()

    def load(self) -> ViewSignal:
        """Decode the images and return the scene as a :class:`ViewSignal`."""
        frames = self.meta["frames"]
        poses = [self._frame_pose(frame, i) for i, frame in enumerate(frames)]
        paths = [self._frame_file(frame, i) for i, frame in enumerate(frames)]
        images = _stack_images([_read_rgb(p) for p in paths], paths)
        height, width = images.shape[1:3]
        focal, cx, cy = self._intrinsics(width, height)
        _check_downscale_fits(self.downscale, height, width, self.transforms_path)
        images = _downscale(images, self.downscale)
        c2w = torch.from_numpy(np.stack(poses)).float()
        c2w[:, :3, 3] *= self.scale
        return ViewSignal(
            images=images,
            c2w=c2w,
            focal=focal / self.downscale,
            cx=cx / self.downscale,
            cy=cy / self.downscale,
            near=self.near * self.scale,
            far=self.far * self.scale,
            name=self.root.name,
        )

    def _intrinsics(self, width: int, height: int) -> tuple[float, float, float]:
        meta, path = self.meta, self.transforms_path
        if "fl_x" in meta:
            focal = _json_number(meta, "fl_x", path)
            _check_focal(focal, f"{path} key 'fl_x':")
        else:
            angle = _json_number(meta, "camera_angle_x", path)
            if not 0 < angle < math.pi:
                raise InputError(f"{path} key 'camera_angle_x' = {angle} is not in (0, pi) radians")
            focal = 0.5 * width / math.tan(0.5 * angle)
        cx = _json_number(meta, "cx", path) if "cx" in meta else width / 2
        cy = _json_number(meta, "cy", path) if "cy" in meta else height / 2
        return focal, cx, cy


class NerfSyntheticFolder:
    """A folder of NeRF-synthetic scenes, one :class:`ViewSignal` per scene (sub-folder).

    A sub-folder counts as a scene when it holds ``transforms_{split}.json`` or
    ``transforms.json``. Lazy: the constructor only lists the folders; items are decoded on access.
    """

    channels = 3

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        downscale: int = 1,
        scale: float = NERF_SYNTHETIC_SCALE,
        near: float = NERF_SYNTHETIC_BOUNDS[0],
        far: float = NERF_SYNTHETIC_BOUNDS[1],
    ) -> None:
        self.root = _require_dir(root, "scene collection")
        _check_split_and_downscale(split, downscale)  # now, not when the first scene is read
        names = (f"transforms_{split}.json", "transforms.json")
        self.scenes = sorted(
            d for d in self.root.iterdir() if d.is_dir() and any((d / n).is_file() for n in names)
        )
        if not self.scenes:
            raise InputError(f"no scene folders with {' or '.join(names)} in {self.root}")
        self.options = {
            "split": split,
            "downscale": downscale,
            "scale": scale,
            "near": near,
            "far": far,
        }

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> ViewSignal:
        return NerfSyntheticScene(self.scenes[index], **self.options).load()


# --------------------------------------------------------------------------------------------
# SRN


class SRNScene:
    """One SRN scene folder: ``rgb/*.png``, ``pose/*.txt`` and ``intrinsics.txt``.

    ``intrinsics.txt`` (the format of SRN's ``parse_intrinsics``)::

        f cx cy 0.        # focal length and principal point, in pixels of an H x W image
        0. 0. 0.          # grid barycenter (DeepVoxels; ignored)
        1.                # scale (ignored)
        H W               # the image size the intrinsics refer to
        [0|1]             # optional: 1 if the pose files hold world-to-camera matrices

    The intrinsics are rescaled from ``H x W`` to the size of the images actually stored. Poses are
    4 x 4 OpenCV camera-to-world matrices (16 numbers), converted to the OpenGL convention; camera
    positions and bounds are multiplied by ``scale``. Default bounds: the camera distances from the
    origin minus/plus the cube's half-diagonal (so the whole cube lies in ``[near, far]``).
    """

    channels = 3

    def __init__(
        self,
        root: str | Path,
        scale: float = 1.0,
        near: float | None = None,
        far: float | None = None,
    ) -> None:
        self.root = _require_dir(root, "SRN scene")
        self.scale, self.near, self.far = float(scale), near, far
        self.intrinsics_path = self.root / "intrinsics.txt"
        if not self.intrinsics_path.is_file():
            raise InputError(f"missing SRN intrinsics file {self.intrinsics_path}")
        self.rgb_paths = sorted((self.root / "rgb").glob("*.png"))
        self.pose_paths = sorted((self.root / "pose").glob("*.txt"))
        if not self.rgb_paths:
            raise InputError(f"no rgb/*.png images in SRN scene {self.root}")
        if len(self.rgb_paths) != len(self.pose_paths):
            raise InputError(
                f"SRN scene {self.root} has {len(self.rgb_paths)} rgb/*.png images but "
                f"{len(self.pose_paths)} pose/*.txt files"
            )
        rgb_stems = [p.stem for p in self.rgb_paths]
        pose_stems = [p.stem for p in self.pose_paths]
        if rgb_stems != pose_stems:
            odd = next(r for r, p in zip(rgb_stems, pose_stems, strict=True) if r != p)
            raise InputError(f"SRN scene {self.root}: image {odd}.png has no matching pose file")

    def _read_intrinsics(self) -> tuple[float, float, float, int, int, bool]:
        path = self.intrinsics_path
        lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
        try:
            focal, cx, cy = (float(v) for v in lines[0][:3])
            height, width = (int(float(v)) for v in lines[3][:2])
            world2cam = len(lines) > 4 and bool(int(float(lines[4][0])))
        except (IndexError, ValueError):
            raise InputError(
                f"{path} is not an SRN intrinsics file ('f cx cy 0' / barycenter / scale / 'H W')"
            ) from None
        _check_finite(np.array([focal, cx, cy]), f"{path} intrinsics")
        _check_focal(focal, f"{path} intrinsics:")
        if height < 1 or width < 1:
            raise InputError(f"{path} intrinsics: image size {height} x {width} must be positive")
        return focal, cx, cy, height, width, world2cam

    def _read_pose(self, path: Path, world2cam: bool) -> np.ndarray:
        try:
            values = np.loadtxt(path, dtype=np.float64).reshape(-1)
        except ValueError:
            raise InputError(f"pose file {path} is not numeric") from None
        if values.size == 12:
            values = np.concatenate([values, [0.0, 0.0, 0.0, 1.0]])
        if values.size != 16:
            raise InputError(f"pose file {path} holds {values.size} numbers; expected 16")
        _check_finite(values, f"pose file {path}")
        pose = values.reshape(4, 4)
        _check_pose(pose, f"pose file {path}")
        return np.linalg.inv(pose) if world2cam else pose

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> ViewSignal:
        if index not in (0, -1):
            raise IndexError(index)
        return self.load()

    def load(self) -> ViewSignal:
        """Decode the images and poses and return the scene as a :class:`ViewSignal`."""
        focal, cx, cy, file_height, file_width, world2cam = self._read_intrinsics()
        images = _stack_images([_read_rgb(p) for p in self.rgb_paths], self.rgb_paths)
        height, width = images.shape[1:3]
        sx, sy = width / file_width, height / file_height
        poses = np.stack([self._read_pose(p, world2cam) for p in self.pose_paths])
        c2w = torch.from_numpy(poses).float() @ OPENCV_TO_OPENGL
        c2w[:, :3, 3] *= self.scale
        distance = c2w[:, :3, 3].norm(dim=-1)
        near = (
            self.near * self.scale
            if self.near is not None
            else max(float(distance.min()) - CUBE_RADIUS, 0.01 * float(distance.min()))
        )
        far = self.far * self.scale if self.far is not None else float(distance.max()) + CUBE_RADIUS
        return ViewSignal(images, c2w, focal * sx, cx * sx, cy * sy, near, far, self.root.name)


class SRNFolder:
    """An SRN category folder (e.g. ``cars_train``): one :class:`ViewSignal` per object folder.

    Object folders are the sub-folders holding ``intrinsics.txt`` (one level down, or two for the
    nested ``chairs_2.0_train`` layout). Lazy: the constructor only lists the folders.
    """

    channels = 3

    def __init__(
        self,
        root: str | Path,
        scale: float = 1.0,
        near: float | None = None,
        far: float | None = None,
    ) -> None:
        self.root = _require_dir(root, "SRN category")
        found = sorted(self.root.glob("*/intrinsics.txt")) or sorted(
            self.root.glob("*/*/intrinsics.txt")
        )
        if not found:
            raise InputError(f"no SRN object folders (*/intrinsics.txt) in {self.root}")
        self.scenes = [p.parent for p in found]
        self.options = {"scale": scale, "near": near, "far": far}

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> ViewSignal:
        return SRNScene(self.scenes[index], **self.options).load()


# --------------------------------------------------------------------------------------------
# built-in multi-view data, ray-cast from random primitives

#: The built-in views are written in NeRF-synthetic units (objects in ~[-1.5, 1.5]^3).
BUILTIN_WORLD = 1.0 / NERF_SYNTHETIC_SCALE
BUILTIN_CAMERA_RADIUS = 4.0  # NeRF-synthetic units (2.67 after the loader's scale)
BUILTIN_CAMERA_ANGLE_X = 0.6911112070083618  # the field of view of the Blender scenes
BUILTIN_LIGHT = np.array([0.35, -0.45, 0.82]) / np.linalg.norm([0.35, -0.45, 0.82])
BUILTIN_AMBIENT = 0.3
MANIFEST = "genfield_views.json"
MANIFEST_VERSION = 1


def look_at(position: np.ndarray) -> np.ndarray:
    """The OpenGL camera-to-world matrix of a camera at ``position`` looking at the origin, z up."""
    back = position / np.linalg.norm(position)  # camera +z points away from the target
    right = np.cross([0.0, 0.0, 1.0], back)
    right = right / np.linalg.norm(right)
    true_up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, back, position
    return c2w


def random_primitives(rng: np.random.Generator) -> tuple[trimesh.Trimesh, np.ndarray]:
    """A random scene of 1-3 coloured primitives inside ``[-0.9, 0.9]^3`` (normalised units).

    Returns the concatenated mesh and the RGB albedo of each face ``(F, 3)``.
    """
    meshes, colours = [], []
    for _ in range(int(rng.integers(1, 4))):
        kind = rng.choice(["box", "sphere", "cylinder", "capsule"])
        if kind == "box":
            mesh = trimesh.creation.box(extents=rng.uniform(0.3, 0.8, size=3))
        elif kind == "sphere":
            mesh = trimesh.creation.icosphere(subdivisions=2, radius=rng.uniform(0.2, 0.45))
        elif kind == "cylinder":
            mesh = trimesh.creation.cylinder(
                radius=rng.uniform(0.15, 0.35), height=rng.uniform(0.4, 0.9), sections=20
            )
        else:
            mesh = trimesh.creation.capsule(
                height=rng.uniform(0.3, 0.7), radius=rng.uniform(0.12, 0.25), count=[12, 12]
            )
        pose = trimesh.transformations.random_rotation_matrix(rng.random(3))
        pose[:3, 3] = rng.uniform(-0.4, 0.4, size=3)
        mesh.apply_transform(pose)
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
    locations, ray_index, face_index = mesh.ray.intersects_location(
        origins, directions, multiple_hits=False
    )
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
            c2w = look_at(position)
            iio.imwrite(
                scene_dir / split / f"r_{k}.png", raycast_rgba(mesh, colours, c2w, focal, size)
            )
            frames.append({"file_path": f"./{split}/r_{k}", "transform_matrix": c2w.tolist()})
        meta = {"camera_angle_x": BUILTIN_CAMERA_ANGLE_X, "frames": frames}
        (scene_dir / f"transforms_{split}.json").write_text(json.dumps(meta, indent=1))


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
    old = _load_json(manifest_path) if manifest_path.is_file() else {}
    complete = all(
        (folder / n / f"transforms_{s}.json").is_file() for n in names for s in ("train", "test")
    )
    if old.get("version") == MANIFEST_VERSION and old.get("params") == params and complete:
        return NerfSyntheticFolder(folder, split=split)
    for stale in old.get("scenes", []):  # only folders this function wrote before
        if (folder / stale).is_dir() and Path(stale).name == stale:
            shutil.rmtree(folder / stale)
    manifest_path.unlink(missing_ok=True)
    for i, name in enumerate(names):
        _write_scene(folder / name, np.random.default_rng([seed, i]), n_views, n_test_views, size)
    manifest = {
        "format": "genfield builtin_views",
        "version": MANIFEST_VERSION,
        "params": params,
        "scenes": names,
    }
    manifest_path.write_text(json.dumps(manifest, indent=1))
    return NerfSyntheticFolder(folder, split=split)


# --------------------------------------------------------------------------------------------
# context / target split


@dataclass
class ViewSplit:
    """Split each scene's views into context views and target views, and their pixels into rays.

    Per signal, ``n_context_views + n_target_views`` distinct views are drawn at random. Context
    observations are the rays of the context views (all pixels, view-major: view ``v``'s ``H * W``
    rays contiguous and row-major; or ``context_rays`` random rays of them, in that order); target
    observations are ``rays_per_signal`` random rays of the target views (all when ``None``). Values
    are the pixel colours. The forward map is a :class:`~genfield.forward.volume.VolumeRenderer` built
    from the renderer options below.

    Attributes:
        n_context_views, n_target_views: views per signal.
        rays_per_signal: target rays per signal (training); ``None`` = every pixel of the targets.
        context_rays: context rays per signal; ``None`` = every pixel of the context views.
        clip_to_cube: clip each ray's ``[near, far]`` to the world cube (see ``ray_queries``).
        n_samples, n_importance, stratified, white_background: the renderer's options.
    """

    n_context_views: int = 1
    n_target_views: int = 1
    rays_per_signal: int | None = 1024
    context_rays: int | None = None
    clip_to_cube: bool = True
    n_samples: int = 64
    n_importance: int = 0
    stratified: bool = True
    white_background: bool = True

    def __post_init__(self) -> None:
        if self.n_context_views < 1 or self.n_target_views < 1:
            raise InputError("ViewSplit needs n_context_views >= 1 and n_target_views >= 1")

    @property
    def renderer(self) -> VolumeRenderer:
        """The forward map of the batches: a volume renderer with this split's options."""
        return VolumeRenderer(
            n_samples=self.n_samples,
            n_importance=self.n_importance,
            stratified=self.stratified,
            white_background=self.white_background,
        )

    def __call__(self, signals: Sequence[ViewSignal], generator: torch.Generator) -> SignalBatch:
        if not signals:
            raise InputError("ViewSplit got no signals")
        size = signals[0].image_size
        for signal in signals:
            if signal.image_size != size:
                raise InputError(
                    f"scene {signal.name!r} has images of size {signal.image_size}; "
                    f"the batch has {size} (resize or downscale to a common size)"
                )
            if signal.num_views < self.n_context_views + self.n_target_views:
                raise InputError(
                    f"scene {signal.name!r} has {signal.num_views} views; the split needs "
                    f"{self.n_context_views} context + {self.n_target_views} target views"
                )
        parts = [self._one(signal, generator) for signal in signals]
        stack = {key: torch.stack([p[key] for p in parts]) for key in parts[0]}
        extras = {
            "image_size": size,
            "context_views": stack["context_views"],
            "target_views": stack["target_views"],
            "context_images": stack["context_images"],
            "context_c2w": stack["context_c2w"],
            "target_c2w": stack["target_c2w"],
            "focal": stack["focal"],
            "principal_point": stack["principal_point"],
            "context_index": stack["context_index"],
            "target_index": stack["target_index"],
        }
        metadata = [
            {"name": s.name, "num_views": s.num_views, "near": s.near, "far": s.far}
            for s in signals
        ]
        return SignalBatch(
            kind="views",
            forward_map=self.renderer,
            context=Observations(stack["context_queries"], stack["context_values"]),
            target=Observations(stack["target_queries"], stack["target_values"]),
            metadata=metadata,
            ground_truth=stack["target_images"],
            extras=extras,
        )

    def _rays(self, signal: ViewSignal, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """View-major queries ``(V * H * W, 8)`` and colours ``(V * H * W, 3)`` of ``views``."""
        origins, directions = signal.rays(views)
        queries = ray_queries(origins, directions, signal.near, signal.far, self.clip_to_cube)
        flat = "v n q -> (v n) q"
        return rearrange(queries, flat), rearrange(signal.images[views], "v h w c -> (v h w) c")

    @staticmethod
    def _subset(total: int, count: int | None, generator: torch.Generator) -> torch.Tensor:
        if count is None or count >= total:
            return torch.arange(total)
        return torch.randperm(total, generator=generator)[:count].sort().values

    def _one(self, signal: ViewSignal, generator: torch.Generator) -> dict[str, torch.Tensor]:
        order = torch.randperm(signal.num_views, generator=generator)
        context_views = order[: self.n_context_views]
        target_views = order[self.n_context_views : self.n_context_views + self.n_target_views]
        context_queries, context_values = self._rays(signal, context_views)
        target_queries, target_values = self._rays(signal, target_views)
        context_index = self._subset(len(context_queries), self.context_rays, generator)
        target_index = self._subset(len(target_queries), self.rays_per_signal, generator)
        return {
            "context_queries": context_queries[context_index],
            "context_values": context_values[context_index],
            "target_queries": target_queries[target_index],
            "target_values": target_values[target_index],
            "context_index": context_index,
            "target_index": target_index,
            "context_views": context_views,
            "target_views": target_views,
            "context_images": signal.images[context_views],
            "target_images": signal.images[target_views],
            "context_c2w": signal.c2w[context_views],
            "target_c2w": signal.c2w[target_views],
            "focal": torch.tensor(signal.focal, dtype=torch.float32),
            "principal_point": torch.tensor([signal.cx, signal.cy], dtype=torch.float32),
        }
