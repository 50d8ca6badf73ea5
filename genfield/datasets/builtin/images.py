"""Built-in image data that needs no download: scikit-image's bundled faces and photographs.

* :func:`builtin_faces`: the 100 faces of the LFW subset bundled with scikit-image
  (``skimage.data.lfw_subset()``: 200 grey 25 x 25 crops, the first 100 faces, the rest not),
  split train/val/test 80/10/10 deterministically.
* :func:`builtin_natural`: random square crops of scikit-image's bundled photographs, each crop a
  pure function of ``(seed, index)``; :func:`natural_photos` names the photographs of each split,
  so validation and test crops come from photographs never seen in training.
* :func:`builtin_glyphs`: letters and digits rendered from the typefaces matplotlib ships, in random
  poses, with the validation and test typefaces never seen in training (see its docstring for why
  this is the built-in collection a prior can be learned from).

Both return datasets with the interface of :class:`~genfield.datasets.images.ImageFolder`
(``__len__``, ``__getitem__ -> ImageSignal``, ``.channels``), so demos, tests and notebooks run
offline on real images.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import skimage.data
import torch

from genfield.datasets.images import ImageList, ImageSignal, canonical_colours, square_image
from genfield.datasets.sampling import split_indices
from genfield.errors import InputError, unknown_name

#: Colour photographs bundled with scikit-image.
COLOUR_PHOTOS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "immunohistochemistry",
    "hubble_deep_field",
)
#: Grey photographs bundled with scikit-image (used when ``grey=True``, with the colour ones).
GREY_PHOTOS: tuple[str, ...] = (
    "camera",
    "coins",
    "moon",
    "brick",
    "grass",
    "gravel",
    "clock",
    "cell",
)

#: Photographs whose crops form the held-out splits of :func:`natural_photos` (never cropped for training).
HELD_OUT_PHOTOS: dict[str, tuple[str, ...]] = {
    "val": ("coins", "grass", "immunohistochemistry"),
    "test": ("chelsea", "moon", "gravel"),
}

FACE_SPLITS = ("train", "val", "test")
NUM_FACES = 100


def builtin_faces(split: str = "train", size: int = 32, seed: int = 0) -> ImageList:
    """The bundled LFW faces, grey, resized to ``size x size``.

    Args:
        split: ``"train"`` (80 faces), ``"val"`` (10), ``"test"`` (10) or ``"all"`` (100); the
            split is :func:`~genfield.datasets.sampling.split_indices` of the faces with ``seed``.
        size: output side length (the originals are 25 x 25; resizing is antialiased bilinear).
        seed: the seed of the split.
    """
    if split != "all" and split not in FACE_SPLITS:
        raise unknown_name("face split", split, [*FACE_SPLITS, "all"])
    faces = skimage.data.lfw_subset()[:NUM_FACES]  # (100, 25, 25) float64 in [0, 1]
    if split == "all":
        chosen = range(NUM_FACES)
    else:
        chosen = split_indices(NUM_FACES, (0.8, 0.1, 0.1), seed=seed, names=FACE_SPLITS)[split]
        chosen = chosen.tolist()
    return ImageList(
        [
            ImageSignal(
                square_image(faces[i, :, :, None].astype(np.float32), size),
                f"lfw_face_{i:03d}",
                faces.shape[1:3],
            )
            for i in chosen
        ]
    )


@lru_cache(maxsize=32)
def load_photo(name: str, grey: bool) -> np.ndarray:
    """A bundled scikit-image photograph as float32 ``(H, W, 1|3)`` in [0, 1] (cached)."""
    if name not in COLOUR_PHOTOS + GREY_PHOTOS:
        raise unknown_name("built-in photograph", name, COLOUR_PHOTOS + GREY_PHOTOS)
    array = np.asarray(getattr(skimage.data, name)())
    array = array[..., None] if array.ndim == 2 else array
    if array.dtype == np.uint8:
        array = array.astype(np.float32) / 255.0
    return np.ascontiguousarray(canonical_colours(array.astype(np.float32), grey))


class NaturalCrops:
    """Random square crops of bundled photographs; item ``i`` depends only on ``(seed, i)``.

    A crop picks a photograph uniformly, a side uniformly in ``crop_range`` (capped by the
    photograph's shorter side) and a position uniformly, then is resized to ``size``. Items are cut
    on access; the photographs are decoded once per process.
    """

    def __init__(
        self,
        n: int,
        size: int,
        seed: int,
        grey: bool,
        photos: Sequence[str],
        crop_range: tuple[int, int],
    ) -> None:
        if n < 1:
            raise InputError(f"builtin_natural needs n >= 1, got {n}")
        lo, hi = crop_range
        if not 1 <= lo <= hi:
            raise InputError(f"crop_range must be (low, high) with 1 <= low <= high, got {crop_range}")
        for name in photos:
            load_photo(name, grey)  # validates names (and warms the cache)
        self.n, self.size, self.seed, self.grey = n, size, seed, grey
        self.photos, self.crop_range = tuple(photos), (lo, hi)

    @property
    def channels(self) -> int:
        return 1 if self.grey else 3

    def __len__(self) -> int:
        return self.n

    def crop_box(self, index: int) -> tuple[str, int, int, int]:
        """``(photo, top, left, side)`` of item ``index``."""
        rng = np.random.default_rng([self.seed, index])
        name = self.photos[rng.integers(len(self.photos))]
        h, w = load_photo(name, self.grey).shape[:2]
        hi = min(self.crop_range[1], h, w)
        lo = min(self.crop_range[0], hi)
        side = int(rng.integers(lo, hi + 1))
        top, left = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
        return name, top, left, side

    def __getitem__(self, index: int) -> ImageSignal:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} crops")
        index %= self.n
        name, top, left, side = self.crop_box(index)
        crop = load_photo(name, self.grey)[top : top + side, left : left + side]
        return ImageSignal(
            square_image(crop, self.size),
            f"{name}[{top}:{top + side},{left}:{left + side}]",
            (side, side),
        )


def natural_photos(split: str, grey: bool) -> tuple[str, ...]:
    """The photographs of a split of natural crops: val and test crops come from photographs never
    cropped for training (:data:`HELD_OUT_PHOTOS`); colour crops use the colour photographs only."""
    if split not in FACE_SPLITS:
        raise unknown_name("natural-crop split", split, FACE_SPLITS)
    pool = COLOUR_PHOTOS + GREY_PHOTOS if grey else COLOUR_PHOTOS
    if split in HELD_OUT_PHOTOS:
        return tuple(name for name in pool if name in HELD_OUT_PHOTOS[split])
    held_out = {name for names in HELD_OUT_PHOTOS.values() for name in names}
    return tuple(name for name in pool if name not in held_out)


def builtin_natural(
    n: int = 256,
    size: int = 32,
    seed: int = 0,
    grey: bool = False,
    photos: Sequence[str] | None = None,
    crop_range: tuple[int, int] = (48, 192),
) -> NaturalCrops:
    """``n`` random crops of scikit-image's bundled photographs, ``size x size``.

    Args:
        n: number of crops.
        size: output side length.
        seed: crops are a pure function of ``(seed, index)`` (so ``n`` changes no crop).
        grey: grey crops (drawn from the colour and the grey photographs, colour ones converted
            to luminance) or RGB crops (drawn from the colour photographs only, so every crop has
            real colour).
        photos: override the photographs (names of ``skimage.data`` functions listed in
            :data:`COLOUR_PHOTOS` and :data:`GREY_PHOTOS`).
        crop_range: the range of crop sides in source pixels, before resizing to ``size``.
    """
    if photos is None:
        photos = COLOUR_PHOTOS + GREY_PHOTOS if grey else COLOUR_PHOTOS
    if not photos:
        raise InputError("builtin_natural needs at least one photograph")
    return NaturalCrops(n, size, seed, grey, photos, crop_range)


# --------------------------------------------------------------------------------------------------
# Glyphs: a structured family with held-out typefaces
# --------------------------------------------------------------------------------------------------

#: The characters drawn: digits and Latin letters.
GLYPH_CHARACTERS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: Typefaces (matplotlib's bundled TrueType files, without ``.ttf``) of each split, disjoint: every
#: split has sans, serif and monospaced or Computer Modern faces, and no val/test face is a training one.
GLYPH_FONTS: dict[str, tuple[str, ...]] = {
    "train": (
        "DejaVuSans",
        "DejaVuSans-Bold",
        "DejaVuSans-BoldOblique",
        "DejaVuSansMono",
        "DejaVuSansMono-Oblique",
        "DejaVuSansMono-BoldOblique",
        "DejaVuSerif",
        "DejaVuSerif-Bold",
        "DejaVuSerif-BoldItalic",
        "STIXGeneral",
        "STIXGeneralBolIta",
        "cmb10",
        "cmr10",
        "cmti10",
    ),
    "val": ("DejaVuSans-Oblique", "STIXGeneralItalic", "cmtt10"),
    "test": ("DejaVuSerif-Italic", "DejaVuSansMono-Bold", "STIXGeneralBol", "cmss10"),
}
GLYPH_COUNTS = {"train": 4096, "val": 256, "test": 256}
#: Render at this multiple of the output size, then box-filter down (anti-aliasing).
GLYPH_SUPERSAMPLE = 4


def font_file(name: str) -> Path:
    """The path of one of matplotlib's bundled TrueType fonts."""
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf" / f"{name}.ttf"


@lru_cache(maxsize=4096)  # 14 typefaces x ~80 pixel heights: every one stays loaded
def _font(name: str, pixels: int):
    from PIL import ImageFont

    return ImageFont.truetype(str(font_file(name)), pixels)


class Glyphs:
    """Letters and digits in random poses, white on black; item ``i`` depends only on ``(seed, split, i)``.

    A glyph picks a character of :data:`GLYPH_CHARACTERS` and a typeface of the split uniformly, a
    height of 55–80 % of the image, a shift of up to ``±size/16`` in each direction and a rotation of
    up to ±12 degrees, draws it at :data:`GLYPH_SUPERSAMPLE` times the size and box-filters it down.
    """

    def __init__(self, split: str, n: int, size: int, seed: int) -> None:
        if split not in GLYPH_FONTS:
            raise unknown_name("glyph split", split, list(GLYPH_FONTS))
        if n < 1:
            raise InputError(f"builtin_glyphs needs n >= 1, got {n}")
        if not isinstance(size, int) or size < 8:
            raise InputError(f"builtin_glyphs needs an integer size >= 8, got {size!r}")
        self.split, self.n, self.size, self.seed = split, n, size, seed
        self.fonts = GLYPH_FONTS[split]

    @property
    def channels(self) -> int:
        return 1

    def __len__(self) -> int:
        return self.n

    def pose(self, index: int) -> tuple[str, str, float, float, float, float]:
        """``(font, character, height fraction, shift x, shift y, rotation degrees)`` of item ``index``."""
        split_key = list(GLYPH_FONTS).index(self.split)
        rng = np.random.default_rng([self.seed, split_key, index])
        font = self.fonts[rng.integers(len(self.fonts))]
        character = GLYPH_CHARACTERS[rng.integers(len(GLYPH_CHARACTERS))]
        height = float(rng.uniform(0.55, 0.8))
        shift_x, shift_y = (float(v) for v in rng.uniform(-1, 1, 2) * self.size / 16)
        return font, character, height, shift_x, shift_y, float(rng.uniform(-12, 12))

    def render(self, index: int) -> np.ndarray:
        """Item ``index`` as float32 ``(size, size)`` in [0, 1]."""
        from PIL import Image, ImageDraw

        font, character, height, shift_x, shift_y, degrees = self.pose(index)
        up = GLYPH_SUPERSAMPLE
        big = self.size * up
        canvas = Image.new("L", (big, big), 0)
        draw = ImageDraw.Draw(canvas)
        face = _font(font, max(1, round(height * big)))
        left, top, right, bottom = draw.textbbox((0, 0), character, font=face)
        x = (big - (right - left)) / 2 - left + shift_x * up
        y = (big - (bottom - top)) / 2 - top + shift_y * up
        draw.text((x, y), character, fill=255, font=face)
        canvas = canvas.rotate(degrees, resample=Image.Resampling.BILINEAR)
        small = canvas.resize((self.size, self.size), Image.Resampling.BOX)
        return np.asarray(small, dtype=np.float32) / 255.0

    def __getitem__(self, index: int) -> ImageSignal:
        if not -self.n <= index < self.n:
            raise IndexError(f"index {index} out of range for {self.n} glyphs")
        index %= self.n
        font, character, *_ = self.pose(index)
        image = torch.from_numpy(self.render(index))[..., None]
        return ImageSignal(image, f"{self.split}_{index:05d}_{font}_{character}", (self.size, self.size))


def builtin_glyphs(split: str = "train", size: int = 32, n: int | None = None, seed: int = 0) -> ImageList:
    """Rendered letters and digits, grey ``size x size``, with held-out typefaces.

    Why this collection: a prior learned from random crops of photographs reconstructs no better than
    a smoothness prior (crops are translation-invariant, so their covariance is a stationary one
    close to what biharmonic inpainting assumes), and the bundled faces are too few. Glyphs have
    sharp edges a smoothness prior blurs and a shared, learnable structure (centred strokes of a few
    widths), and their variation (62 characters x 14 typefaces x continuous pose) gives thousands of
    distinct training signals. Validation and test typefaces (:data:`GLYPH_FONTS`) never appear in
    training, so held-out quality measures generalisation to new typefaces, not memorisation.

    Args:
        split: ``"train"``, ``"val"`` or ``"test"``.
        size: output side length in pixels (>= 8).
        n: number of glyphs; ``None``: :data:`GLYPH_COUNTS` (4096 / 256 / 256). Item ``i`` does not
            depend on ``n``.
        seed: the seed of the poses (the typefaces of each split are fixed).
    """
    if split not in GLYPH_FONTS:
        raise unknown_name("glyph split", split, list(GLYPH_FONTS))
    glyphs = Glyphs(split, GLYPH_COUNTS[split] if n is None else int(n), size, seed)
    return ImageList([glyphs[i] for i in range(len(glyphs))])
