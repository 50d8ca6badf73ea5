"""NeRF-synthetic scenes (Blender scenes, and the ShapeNet renders of Learned Initializations).

Both use ``transforms.json``-style files (the ShapeNet renders one file per object). Objects fill
about ``[-1.5, 1.5]^3``, cameras sit at radius ~4 and the customary bounds are ``near = 2``,
``far = 6``. The reader multiplies camera positions and bounds by :data:`NERF_SYNTHETIC_SCALE` =
2/3, so the object fills ``[-1, 1]^3``, cameras sit at radius ~2.7 and the bounds become ``4/3``
and ``4``.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from genfield.datasets.decoding import read_rgb
from genfield.datasets.scenes import (
    OneScene,
    SceneFolder,
    ViewSignal,
    check_downscale_fits,
    check_finite,
    check_focal,
    check_pose,
    check_split_and_downscale,
    downscale_images,
    json_number,
    load_json,
    require_dir,
    stack_images,
)
from genfield.errors import InputError

#: World scale applied to NeRF-synthetic scenes: objects in ~[-1.5, 1.5]^3 -> [-1, 1]^3.
NERF_SYNTHETIC_SCALE = 2.0 / 3.0
#: The customary ray bounds of NeRF-synthetic scenes, in the files' units (before scaling).
NERF_SYNTHETIC_BOUNDS = (2.0, 6.0)


class NerfSyntheticScene(OneScene):
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

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        downscale: int = 1,
        scale: float = NERF_SYNTHETIC_SCALE,
        near: float = NERF_SYNTHETIC_BOUNDS[0],
        far: float = NERF_SYNTHETIC_BOUNDS[1],
    ) -> None:
        self.root = require_dir(root, "scene")
        check_split_and_downscale(split, downscale)
        self.split, self.downscale, self.scale = split, int(downscale), float(scale)
        self.near, self.far = near, far
        self.transforms_path = self._find_transforms()
        self.meta = load_json(self.transforms_path)
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
        check_finite(pose, what)
        check_pose(pose, what)
        return pose

    def load(self) -> ViewSignal:
        """Decode the images and return the scene as a :class:`ViewSignal`."""
        frames = self.meta["frames"]
        poses = [self._frame_pose(frame, i) for i, frame in enumerate(frames)]
        paths = [self._frame_file(frame, i) for i, frame in enumerate(frames)]
        images = stack_images([read_rgb(p) for p in paths], paths)
        height, width = images.shape[1:3]
        focal, cx, cy = self._intrinsics(width, height)
        check_downscale_fits(self.downscale, height, width, self.transforms_path)
        images = downscale_images(images, self.downscale)
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
            focal = json_number(meta, "fl_x", path)
            check_focal(focal, f"{path} key 'fl_x':")
        else:
            angle = json_number(meta, "camera_angle_x", path)
            if not 0 < angle < math.pi:
                raise InputError(f"{path} key 'camera_angle_x' = {angle} is not in (0, pi) radians")
            focal = 0.5 * width / math.tan(0.5 * angle)
        cx = json_number(meta, "cx", path) if "cx" in meta else width / 2
        cy = json_number(meta, "cy", path) if "cy" in meta else height / 2
        return focal, cx, cy


class NerfSyntheticFolder(SceneFolder):
    """A folder of NeRF-synthetic scenes, one :class:`ViewSignal` per scene (sub-folder).

    A sub-folder counts as a scene when it holds ``transforms_{split}.json`` or
    ``transforms.json``. Lazy: the constructor only lists the folders; items are decoded on access.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        downscale: int = 1,
        scale: float = NERF_SYNTHETIC_SCALE,
        near: float = NERF_SYNTHETIC_BOUNDS[0],
        far: float = NERF_SYNTHETIC_BOUNDS[1],
    ) -> None:
        root = require_dir(root, "scene collection")
        check_split_and_downscale(split, downscale)  # now, not when the first scene is read
        names = (f"transforms_{split}.json", "transforms.json")
        scenes = sorted(d for d in root.iterdir() if d.is_dir() and any((d / n).is_file() for n in names))
        if not scenes:
            raise InputError(f"no scene folders with {' or '.join(names)} in {root}")
        options = {"split": split, "downscale": downscale, "scale": scale, "near": near, "far": far}
        super().__init__(root, scenes, NerfSyntheticScene, options)
