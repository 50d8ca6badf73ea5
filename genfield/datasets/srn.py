"""SRN scenes (Sitzmann et al. 2019, ShapeNet cars and chairs).

ShapeNet objects are normalised to a unit bounding-box diagonal, so they already lie inside
``[-0.5, 0.5]^3`` and the default scale is 1 (cameras at radius ~1.3 for cars and ~2 for chairs;
``scale=2`` would fill the cube). SRN poses are OpenCV camera-to-world matrices (x right, y down,
looking down +z); the reader converts them with ``c2w @ diag(1, -1, -1, 1)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from genfield.datasets.decoding import read_rgb
from genfield.datasets.scenes import (
    OneScene,
    SceneFolder,
    ViewSignal,
    check_finite,
    check_focal,
    check_pose,
    require_dir,
    stack_images,
)
from genfield.errors import InputError
from genfield.forward.volume import CUBE_RADIUS

#: OpenCV camera axes -> OpenGL camera axes (flip y and z), applied on the right of c2w.
OPENCV_TO_OPENGL = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0]))


class SRNScene(OneScene):
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

    def __init__(
        self,
        root: str | Path,
        scale: float = 1.0,
        near: float | None = None,
        far: float | None = None,
    ) -> None:
        self.root = require_dir(root, "SRN scene")
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
        check_finite(np.array([focal, cx, cy]), f"{path} intrinsics")
        check_focal(focal, f"{path} intrinsics:")
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
        check_finite(values, f"pose file {path}")
        pose = values.reshape(4, 4)
        check_pose(pose, f"pose file {path}")
        return np.linalg.inv(pose) if world2cam else pose

    def load(self) -> ViewSignal:
        """Decode the images and poses and return the scene as a :class:`ViewSignal`."""
        focal, cx, cy, file_height, file_width, world2cam = self._read_intrinsics()
        images = stack_images([read_rgb(p) for p in self.rgb_paths], self.rgb_paths)
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


class SRNFolder(SceneFolder):
    """An SRN category folder (e.g. ``cars_train``): one :class:`ViewSignal` per object folder.

    Object folders are the sub-folders holding ``intrinsics.txt`` (one level down, or two for the
    nested ``chairs_2.0_train`` layout). Lazy: the constructor only lists the folders.
    """

    def __init__(
        self,
        root: str | Path,
        scale: float = 1.0,
        near: float | None = None,
        far: float | None = None,
    ) -> None:
        root = require_dir(root, "SRN category")
        found = sorted(root.glob("*/intrinsics.txt")) or sorted(root.glob("*/*/intrinsics.txt"))
        if not found:
            raise InputError(f"no SRN object folders (*/intrinsics.txt) in {root}")
        super().__init__(
            root, [p.parent for p in found], SRNScene, {"scale": scale, "near": near, "far": far}
        )
