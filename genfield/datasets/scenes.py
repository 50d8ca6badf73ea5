"""Posed images of scenes (:class:`ViewSignal`), the folder of scenes, and the checks readers share.

Cameras follow the renderer's convention (:mod:`genfield.forward.volume`: OpenGL, looking down -z,
y up, pixel centres at ``+0.5``), and every reader rescales the world so the object sits inside the
field's cube ``[-1, 1]^3`` (:mod:`~genfield.datasets.nerf_synthetic`, :mod:`~genfield.datasets.srn`).
Images are float32 ``(V, H, W, 3)`` in ``[0, 1]``, RGBA composited on white.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from genfield.errors import InputError
from genfield.forward.volume import camera_rays

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


class Scene(Protocol):
    """A reader of one scene folder."""

    def load(self) -> ViewSignal: ...


class OneScene:
    """A scene reader as a dataset of one :class:`ViewSignal` (item ``0`` or ``-1``: :meth:`load`).
    The NeRF-synthetic and SRN scene readers are this class with their own ``load``."""

    channels = 3

    def load(self) -> ViewSignal:
        raise NotImplementedError

    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> ViewSignal:
        if index not in (0, -1):
            raise IndexError(index)
        return self.load()


class SceneFolder:
    """A folder of scenes, one :class:`ViewSignal` per scene folder, read by ``scene(folder, **options)``.

    Lazy: the constructor takes the scene folders already listed; an item is read on access. The
    NeRF-synthetic and SRN folders are this class with their own listing and reader.
    """

    channels = 3

    def __init__(self, root: Path, scenes: list[Path], scene: Callable[..., Scene], options: dict[str, Any]):
        self.root, self.scenes, self.scene, self.options = root, scenes, scene, options

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> ViewSignal:
        return self.scene(self.scenes[index], **self.options).load()


# --------------------------------------------------------------------------------------------
# checks every reader shares


def check_finite(values: np.ndarray | float, what: str) -> None:
    if not np.all(np.isfinite(values)):
        raise InputError(f"{what} holds NaN or inf")


def json_number(meta: dict[str, Any], key: str, path: Path) -> float:
    """``meta[key]`` as a finite float; a string, a boolean or a list is an error naming file and key."""
    value = meta[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"{path} key {key!r} must be a number, got {value!r}")
    check_finite(float(value), f"{path} key {key!r}")
    return float(value)


def check_focal(focal: float, what: str) -> None:
    if not focal > 0:
        raise InputError(f"{what} focal length {focal} must be positive (pixels)")


def check_pose(pose: np.ndarray, what: str) -> None:
    """A camera-to-world matrix must be invertible: a singular rotation block gives degenerate rays."""
    if np.linalg.cond(pose[:3, :3]) > 1e8 or np.linalg.cond(pose) > 1e12:
        raise InputError(f"{what} is not invertible (singular rotation block): not a camera pose")


def check_downscale_fits(downscale: int, height: int, width: int, where: Path) -> None:
    if downscale > min(height, width):
        raise InputError(
            f"downscale={downscale} is larger than the {height} x {width} images of {where}; "
            f"valid: 1 to {min(height, width)}"
        )


def stack_images(images: list[np.ndarray], paths: list[Path]) -> torch.Tensor:
    """Stack equally sized images; a differently sized one is an error naming it."""
    for path, image in zip(paths, images, strict=True):
        if image.shape != images[0].shape:
            raise InputError(
                f"image {path} has size {image.shape[:2]}; expected {images[0].shape[:2]} like {paths[0]}"
            )
    return torch.from_numpy(np.stack(images))


def downscale_images(images: torch.Tensor, factor: int) -> torch.Tensor:
    """Area-average ``(V, H, W, 3)`` by an integer factor (leftover rows/columns is dropped)."""
    if factor == 1:
        return images
    pooled = F.avg_pool2d(rearrange(images, "v h w c -> v c h w"), factor)
    return rearrange(pooled, "v c h w -> v h w c").contiguous()


def load_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise InputError(f"cannot read {path}: {error}") from None


def check_split_and_downscale(split: str, downscale: int) -> None:
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if int(downscale) != downscale or downscale < 1:
        raise InputError(f"downscale must be a positive integer, got {downscale!r}")


def require_dir(root: str | Path, what: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{what} folder {root} does not exist")
    return root
