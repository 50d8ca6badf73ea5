"""Image datasets (a lazy folder of files, an in-memory list) and the image context/target split.

Every image is turned into the same canonical form, whatever its file format: decoded to float32
``(H, W, 1|3)`` in [0, 1] (:mod:`~genfield.datasets.decoding`: first frame, EXIF orientation, alpha
on white, one luminance), then centre-cropped to a square and resized to ``size x size`` with an
antialiased bilinear filter (the CelebA protocol of Learned Initializations and TransINR crops the
178 x 218 faces to 178 x 178). The result is a float32 tensor ``(size, size, C)`` in [0, 1].
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange, repeat

from genfield.datasets.batch import Observations, SignalBatch
from genfield.datasets.decoding import (  # noqa: F401  (re-exported: their home before decoding.py)
    IMAGE_EXTENSIONS,
    LUMINANCE,
    canonical_colours,
    composite_on_white,
    read_image,
    to_grey,
    to_rgb,
    to_unit_range,
)
from genfield.datasets.files import (
    SkipUnreadable,
    UnreadableFileError,
    list_files,
    normalize_extensions,
    one_line,
)
from genfield.errors import InputError
from genfield.fields.coords import grid_coords
from genfield.forward import PointMap


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
# Square crops
# --------------------------------------------------------------------------------------------------


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
        self.extensions = normalize_extensions(extensions)
        self.files = list_files(self.root, self.extensions, recursive)
        if not self.files:
            where = "under" if recursive else "in"
            raise InputError(
                f"no image files {where} {self.root} (accepted extensions: {', '.join(self.extensions)})"
            )
        self.size, self.grey, self.strict = size, grey, strict
        self._skip = SkipUnreadable("image", UnreadableImageWarning, strict)

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

    def _read(self, index: int) -> ImageSignal:
        try:
            return self.load(index)
        except InputError:  # a decoded image holding NaN: bad data, not an unreadable file
            raise
        except Exception as error:  # any decoder failure: OSError, SyntaxError, ValueError, ...
            path = self.root / self.files[index]
            raise UnreadableFileError(f"cannot read image {path}: {one_line(error)}") from error

    def __getitem__(self, index: int) -> ImageSignal:
        return self._skip.item(index, len(self.files), self._read, self.root)

    def __repr__(self) -> str:
        return (
            f"ImageFolder({str(self.root)!r}, {len(self)} images, size={self.size}, channels={self.channels})"
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
                raise InputError(f"context_count {self.context_count} exceeds the {num_pixels} image pixels")
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


def as_images(values: torch.Tensor, like: torch.Tensor | Sequence[int], what: str = "values") -> torch.Tensor:
    """Per-pixel values ``(S, H*W, C)`` (row-major, as :class:`ImageSplit` flattens them) as images
    ``(S, H, W, C)`` of the shape of ``like`` (images, or their shape); images pass through.

    A count that does not match raises :class:`~genfield.errors.InputError` naming ``what``.
    """
    shape = tuple(like.shape if isinstance(like, torch.Tensor) else like)
    if values.numel() != math.prod(shape):
        raise InputError(f"{what}: {tuple(values.shape)} does not match the images {shape}")
    if values.dim() == 4:
        return values.reshape(shape)
    return rearrange(values, "s (h w) c -> s h w c", h=shape[1], w=shape[2])


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
