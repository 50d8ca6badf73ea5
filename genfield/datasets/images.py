"""Image datasets (a lazy folder of files, an in-memory list) and the image context/target split.

Every image is turned into the same canonical form, whatever its file format:

1. decode the first frame (GIF) or page (TIFF), honouring the EXIF orientation of photographs;
2. scale the integer range to [0, 1] (``uint8 / 255``, ``uint16 / 65535``; floats are taken to be in
   [0, 1] already and clipped; a NaN or infinity is an error);
3. composite an alpha channel on white, ``rgb * a + (1 - a)``;
4. convert to grey with the luminance weights of ``skimage.color.rgb2gray`` (ITU-R BT.709,
   ``0.2125 R + 0.7154 G + 0.0721 B``) or replicate a grey image to RGB, so that every item of a
   dataset has the same number of channels;
5. centre-crop to a square and resize to ``size x size`` with an antialiased bilinear filter (the
   CelebA protocol of Learned Initializations and TransINR crops the 178 x 218 faces to 178 x 178).

The result is a float32 tensor ``(size, size, C)`` in [0, 1].
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from genfield.datasets.batch import Observations, SignalBatch
from genfield.errors import InputError
from genfield.fields.coords import grid_coords
from genfield.forward import PointMap

#: Luminance weights of ``skimage.color.rgb2gray`` (ITU-R BT.709).
LUMINANCE = (0.2125, 0.7154, 0.0721)

_TIFF = (".tif", ".tiff")


def _webp_supported() -> bool:
    try:
        from PIL import features

        return bool(features.check("webp"))
    except Exception:  # Pillow without the features module: assume no WebP
        return False


#: File extensions an :class:`ImageFolder` lists (lower case; matching ignores case).
IMAGE_EXTENSIONS: tuple[str, ...] = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".tif",
    ".tiff",
    ".gif",
    *((".webp",) if _webp_supported() else ()),
)


class UnreadableImageWarning(UserWarning):
    """An image file could not be decoded and was skipped."""


@dataclass
class ImageSignal:
    """One image: ``image`` is float32 ``(H, W, C)`` in [0, 1]; ``original_size`` is the decoded
    ``(height, width)`` before cropping and resizing."""

    image: torch.Tensor
    name: str
    original_size: tuple[int, int]

    @property
    def channels(self) -> int:
        return self.image.shape[-1]


# --------------------------------------------------------------------------------------------------
# Decoding and canonical form
# --------------------------------------------------------------------------------------------------


def _channels_last(array: np.ndarray) -> np.ndarray:
    """Bring a decoded array to ``(H, W, C)`` with ``C`` in 1..4 (first frame/plane of stacks)."""
    while array.ndim > 3:
        array = array[0]
    if array.ndim == 2:
        return array[..., None]
    if array.ndim == 3 and array.shape[-1] <= 4:
        return array
    if array.ndim == 3 and array.shape[0] <= 4:  # planar TIFF: (C, H, W)
        return np.moveaxis(array, 0, -1)
    if array.ndim == 3:  # a stack of grey frames: keep the first
        return array[0][..., None]
    raise ValueError(f"unsupported image array shape {array.shape}")


def to_unit_range(array: np.ndarray) -> np.ndarray:
    """Scale a decoded array to float32 in [0, 1] by its dtype's range (floats are clipped)."""
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        top = float(np.iinfo(array.dtype).max)
        return np.clip(array.astype(np.float64) / top, 0.0, 1.0).astype(np.float32)
    return np.clip(array.astype(np.float32), 0.0, 1.0)


def composite_on_white(image: np.ndarray) -> np.ndarray:
    """Drop an alpha channel by compositing on white: ``c * a + (1 - a)``. ``(H, W, 2|4)`` in."""
    if image.shape[-1] not in (2, 4):
        return image
    colour, alpha = image[..., :-1], image[..., -1:]
    return colour * alpha + (1.0 - alpha)


def to_grey(image: np.ndarray) -> np.ndarray:
    """RGB ``(H, W, 3)`` to luminance ``(H, W, 1)`` with :data:`LUMINANCE`; grey passes through."""
    if image.shape[-1] == 1:
        return image
    return (image @ np.asarray(LUMINANCE, dtype=image.dtype))[..., None]


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Grey ``(H, W, 1)`` to RGB by replication; RGB passes through."""
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def canonical_colours(image: np.ndarray, grey: bool) -> np.ndarray:
    """Any decoded ``(H, W, 1..4)`` array in [0, 1] to ``(H, W, 1)`` (grey) or ``(H, W, 3)``."""
    image = composite_on_white(image)
    return to_grey(image) if grey else to_rgb(image)


def read_image(path: str | os.PathLike, grey: bool = False) -> np.ndarray:
    """Decode the first frame of an image file to float32 ``(H, W, 1|3)`` in [0, 1].

    Raises whatever the decoder raises for an unreadable file, and :class:`InputError` for an image
    holding NaN or infinity.
    """
    path = os.fspath(path)
    if path.lower().endswith(_TIFF):
        array = iio.imread(path, plugin="tifffile", page=0)
    else:  # Pillow sniffs the content, so a mislabelled file still decodes
        array = iio.imread(path, plugin="pillow", index=0, rotate=True)
    array = _channels_last(np.asarray(array))
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputError(f"image {path} contains NaN or infinite values")
    return canonical_colours(to_unit_range(array), grey)


def center_crop_square(image: torch.Tensor) -> torch.Tensor:
    """The central square of an ``(H, W, C)`` image, side ``min(H, W)`` (extra row/column dropped
    from the bottom/right when the difference is odd)."""
    h, w = image.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return image[top : top + side, left : left + side]


def resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """Resize an ``(H, W, C)`` image to ``(size, size, C)`` with an antialiased bilinear filter.

    The filter is Pillow's ``BILINEAR`` (a triangle whose support widens with the reduction factor),
    so downsampling averages over the whole footprint instead of aliasing.
    """
    if image.shape[0] == size and image.shape[1] == size:
        return image
    x = rearrange(image, "h w c -> 1 c h w")
    x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return rearrange(x, "1 c h w -> h w c").clamp(0.0, 1.0)


def square_image(image: np.ndarray | torch.Tensor, size: int | None) -> torch.Tensor:
    """Centre-crop to a square and resize to ``size`` (``None``: keep the image as it is)."""
    tensor = torch.as_tensor(np.ascontiguousarray(image), dtype=torch.float32)
    if size is None:
        return tensor
    return resize(center_crop_square(tensor), size)


# --------------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------------


def _check_size(size: int | None) -> None:
    if size is not None and (not isinstance(size, int) or size < 1):
        raise InputError(f"image size must be a positive integer or None, got {size!r}")


def _list_images(root: Path, recursive: bool, extensions: tuple[str, ...]) -> list[str]:
    """Relative paths of the image files under ``root``, sorted; hidden entries are skipped."""
    found: list[str] = []
    stack = [root]
    while stack:
        folder = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    if recursive:
                        stack.append(Path(entry.path))
                elif entry.name.lower().endswith(extensions):
                    found.append(os.path.relpath(entry.path, root))
    return sorted(found)


class ImageFolder:
    """A lazy dataset of the image files in a folder.

    The constructor only lists the files (sorted by relative path, so the order is the same on every
    machine); :meth:`__getitem__` decodes one. A file that cannot be decoded is skipped with an
    :class:`UnreadableImageWarning` naming it, and the item becomes the next readable file in order
    (wrapping round), so indexing stays deterministic and every index returns an image; with
    ``strict=True`` it raises :class:`~genfield.errors.InputError` instead. A file found unreadable
    is remembered and not decoded again.

    Args:
        root: the folder.
        size: side of the square the images are cropped and resized to; ``None`` keeps the decoded
            size (then a batch needs equal-sized files).
        grey: one luminance channel instead of RGB.
        recursive: include files in sub-folders.
        strict: raise on an unreadable file instead of skipping it.
        extensions: the file endings to list (matching ignores case).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: int | None = 178,
        grey: bool = False,
        recursive: bool = True,
        strict: bool = False,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        _check_size(size)
        self.root = Path(root)
        if not self.root.is_dir():
            raise InputError(f"image folder {self.root} does not exist or is not a folder")
        self.extensions = tuple(
            e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions
        )
        self.files = _list_images(self.root, recursive, self.extensions)
        if not self.files:
            where = "under" if recursive else "in"
            raise InputError(
                f"no image files {where} {self.root} (accepted extensions: "
                f"{', '.join(self.extensions)})"
            )
        self.size, self.grey, self.strict = size, grey, strict
        self._unreadable: set[int] = set()

    @property
    def channels(self) -> int:
        return 1 if self.grey else 3

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[ImageSignal]:
        return (self[i] for i in range(len(self)))

    def load(self, index: int) -> ImageSignal:
        """Decode file ``index`` without skipping (raises the decoder's error)."""
        path = self.root / self.files[index]
        array = read_image(path, grey=self.grey)
        image = square_image(array, self.size)
        return ImageSignal(image, self.files[index], tuple(array.shape[:2]))

    def __getitem__(self, index: int) -> ImageSignal:
        n = len(self.files)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} images in {self.root}")
        index %= n
        for offset in range(n):
            i = (index + offset) % n
            if i in self._unreadable:
                continue
            try:
                return self.load(i)
            except InputError:
                raise
            except Exception as exc:  # any decoder failure: OSError, SyntaxError, ValueError, ...
                path = self.root / self.files[i]
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                if self.strict:
                    raise InputError(f"cannot read image {path}: {reason}") from exc
                self._unreadable.add(i)
                warnings.warn(
                    f"skipping unreadable image {path}: {reason}", UnreadableImageWarning, 2
                )
        raise InputError(f"none of the {n} image files under {self.root} can be read")

    def __repr__(self) -> str:
        return (
            f"ImageFolder({str(self.root)!r}, {len(self)} images, size={self.size}, "
            f"channels={self.channels})"
        )


class ImageList:
    """An in-memory dataset of :class:`ImageSignal` (built-in data, tests, small collections)."""

    def __init__(self, signals: Sequence[ImageSignal]) -> None:
        if not signals:
            raise InputError("an ImageList needs at least one image")
        channels = {s.channels for s in signals}
        if len(channels) != 1:
            raise InputError(f"images of an ImageList have mixed channel counts {sorted(channels)}")
        self.signals = list(signals)

    @property
    def channels(self) -> int:
        return self.signals[0].channels

    def __len__(self) -> int:
        return len(self.signals)

    def __getitem__(self, index: int) -> ImageSignal:
        return self.signals[index]

    def __iter__(self) -> Iterator[ImageSignal]:
        return iter(self.signals)


# --------------------------------------------------------------------------------------------------
# Context / target split
# --------------------------------------------------------------------------------------------------


@dataclass
class ImageSplit:
    """Turn a list of equal-sized images into a :class:`~genfield.datasets.batch.SignalBatch`.

    Each signal draws its own random permutation ``perm`` of its ``N = H W`` pixels from the
    generator (so the same generator seed gives the same batch). The context is the first ``Nc``
    pixels of ``perm``; a target of ``count`` pixels is the first ``count`` pixels of the same
    permutation, so it *contains* the context when ``count >= Nc`` and ``target[:, :Nc]`` equals the
    context (the neural-process convention). ``target="all"`` is every pixel in raster order.

    Queries are pixel-centre coordinates in [-1, 1]^2 (row, column), observed through a
    :class:`~genfield.forward.point.PointMap`.

    Args:
        context_fraction: fraction of the pixels in the context, in (0, 1].
        context_count: number of context pixels (give at most one of the two; neither means all).
        target: ``"all"`` or a number of pixels.
    """

    context_fraction: float | None = None
    context_count: int | None = None
    target: str | int = "all"

    def __post_init__(self) -> None:
        if self.context_fraction is not None and self.context_count is not None:
            raise InputError("give context_fraction or context_count, not both")
        if self.context_fraction is not None and not 0 < self.context_fraction <= 1:
            raise InputError(f"context_fraction must be in (0, 1], got {self.context_fraction}")
        if self.context_count is not None and self.context_count < 1:
            raise InputError(f"context_count must be at least 1, got {self.context_count}")
        if self.target != "all" and (isinstance(self.target, str) or int(self.target) < 1):
            raise InputError(f"target must be 'all' or a positive pixel count, got {self.target!r}")

    def num_context(self, num_pixels: int) -> int:
        """How many context pixels an image of ``num_pixels`` pixels gets."""
        if self.context_count is not None:
            if self.context_count > num_pixels:
                raise InputError(
                    f"context_count {self.context_count} exceeds the {num_pixels} image pixels"
                )
            return self.context_count
        fraction = 1.0 if self.context_fraction is None else self.context_fraction
        return max(1, round(fraction * num_pixels))

    def __call__(
        self, signals: Sequence[ImageSignal], generator: torch.Generator | None = None
    ) -> SignalBatch:
        if not signals:
            raise InputError("ImageSplit needs at least one image")
        first = signals[0]
        for sig in signals[1:]:
            if sig.image.shape != first.image.shape:
                raise InputError(
                    f"images of a batch must have equal shapes: {first.name} is "
                    f"{tuple(first.image.shape)} but {sig.name} is {tuple(sig.image.shape)}"
                )
        images = torch.stack([s.image for s in signals])  # (S, H, W, C)
        num_signals, h, w, c = images.shape
        n = h * w
        n_context = self.num_context(n)
        n_target = n if self.target == "all" else int(self.target)
        if n_target > n:
            raise InputError(f"target count {n_target} exceeds the {n} pixels of an image")

        n_drawn = n_context if self.target == "all" else max(n_context, n_target)
        perm = torch.stack([torch.randperm(n, generator=generator)[:n_drawn] for _ in signals])
        coords = grid_coords((h, w))  # (N, 2)
        pixels = rearrange(images, "s h w c -> s (h w) c")

        def observe(index: torch.Tensor) -> Observations:
            values = torch.gather(pixels, 1, repeat(index, "s n -> s n c", c=c))
            return Observations(coords[index], values)

        context_index = perm[:, :n_context]
        extras: dict = {"image_size": (h, w), "context_index": context_index}
        if self.target == "all":
            target = Observations(repeat(coords, "n d -> s n d", s=num_signals), pixels)
        else:
            extras["target_index"] = perm[:, :n_target]
            target = observe(extras["target_index"])
        return SignalBatch(
            kind="image",
            forward_map=PointMap(),
            context=observe(context_index),
            target=target,
            metadata=[{"name": s.name, "original_size": s.original_size} for s in signals],
            ground_truth=images,
            extras=extras,
        )


def context_mask(batch: Any) -> torch.Tensor | None:
    """``(S, H, W)`` true at the observed pixels of an image batch (``None`` without a pixel index).

    The batch's ``extras["context_index"]`` holds, per signal, the flat (row-major) indices of its
    context pixels (see :class:`ImageSplit`).
    """
    index = batch.extras.get("context_index")
    if index is None:
        return None
    height, width = batch.ground_truth.shape[1:3]
    mask = torch.zeros(batch.num_signals, height * width, dtype=torch.bool, device=index.device)
    mask.scatter_(1, index, True)
    return mask.reshape(-1, height, width)

