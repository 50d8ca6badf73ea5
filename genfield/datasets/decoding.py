"""Image files to the canonical form every image dataset uses: float32 ``(H, W, 1|3)`` in [0, 1].

1. decode the first frame (GIF) or page (TIFF), honouring the EXIF orientation of photographs;
2. scale the integer range to [0, 1] (``uint8 / 255``, ``uint16 / 65535``; floats are taken to be in
   [0, 1] already and clipped; a NaN or infinity is an error);
3. composite an alpha channel on white, ``rgb * a + (1 - a)``;
4. convert to grey with the luminance weights of ``skimage.color.rgb2gray`` (ITU-R BT.709,
   ``0.2125 R + 0.7154 G + 0.0721 B``, :data:`LUMINANCE`) or replicate a grey image to RGB, so that
   every item of a dataset has the same number of channels.

Image folders (:mod:`~genfield.datasets.images`), multi-view scenes (:func:`read_rgb`) and CT slices
(:data:`LUMINANCE`) all decode through here.
"""

from __future__ import annotations

import os

import imageio.v3 as iio
import numpy as np

from genfield.datasets.files import UnreadableFileError, one_line
from genfield.errors import InputError

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


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as float32 RGB ``(H, W, 3)`` in [0, 1] (:func:`read_image`); a file the decoder
    cannot read raises :class:`~genfield.datasets.files.UnreadableFileError` naming it."""
    try:
        return read_image(path, grey=False)
    except InputError:
        raise
    except Exception as error:  # the decoders raise many types for unreadable files
        raise UnreadableFileError(f"cannot read image {path}: {one_line(error)}") from None
