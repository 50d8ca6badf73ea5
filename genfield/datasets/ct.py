"""CT data: random ellipse phantoms, CT slices from image datasets, the CT context/target split.

Signals are :class:`CTSignal`: a slice image ``(H, W, 1)`` (attenuation, zero outside the unit
disc) and a name. :class:`CTSplit` turns a list of them into a
:class:`~genfield.datasets.batch.SignalBatch` whose observations are parallel-beam projections
(:mod:`genfield.forward.ct`): the context at a few angles, the target at many, the slice as ground
truth.

Ellipses are described in the textbook frame of the Shepp-Logan tables (x = column coordinate,
y = -row coordinate, both in [-1, 1]), one row ``(value, a, b, x0, y0, phi)`` each: an additive
intensity, the semi-axes along x and y before rotation, the centre, and the counter-clockwise
rotation in radians. The image is the sum of ``value`` over the ellipses that contain a point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange

from genfield.datasets.angles import ANGLE_SCHEMES, draw_angles
from genfield.datasets.batch import Observations, ProjectionLayout, SignalBatch
from genfield.datasets.decoding import LUMINANCE
from genfield.errors import InputError
from genfield.fields.coords import axis_coords
from genfield.forward.ct import SUPPORTS, ParallelBeamProjection, ct_queries, project_image

#: The modified Shepp-Logan phantom (Toft 1996): ``(value, a, b, x0, y0, phi in degrees)``.
MODIFIED_SHEPP_LOGAN = (
    (1.0, 0.69, 0.92, 0.0, 0.0, 0.0),
    (-0.8, 0.6624, 0.874, 0.0, -0.0184, 0.0),
    (-0.2, 0.11, 0.31, 0.22, 0.0, -18.0),
    (-0.2, 0.16, 0.41, -0.22, 0.0, 18.0),
    (0.1, 0.21, 0.25, 0.0, 0.35, 0.0),
    (0.1, 0.046, 0.046, 0.0, 0.1, 0.0),
    (0.1, 0.046, 0.046, 0.0, -0.1, 0.0),
    (0.1, 0.046, 0.023, -0.08, -0.605, 0.0),
    (0.1, 0.023, 0.023, 0.0, -0.606, 0.0),
    (0.1, 0.023, 0.046, 0.06, -0.605, 0.0),
)


@dataclass
class CTSignal:
    """One CT slice: ``image`` is float32 ``(H, W, 1)``; ``name`` names it in errors and logs."""

    image: torch.Tensor
    name: str


# --------------------------------------------------------------------------------------------------
# Ellipse phantoms
# --------------------------------------------------------------------------------------------------


def shepp_logan_ellipses() -> torch.Tensor:
    """The modified Shepp-Logan ellipses ``(10, 6)`` with the angle in radians."""
    table = torch.tensor(MODIFIED_SHEPP_LOGAN, dtype=torch.float64)
    table[:, 5] = torch.deg2rad(table[:, 5])
    return table


def random_ellipses(
    rng: np.random.Generator, n_features: tuple[int, int] = (4, 10)
) -> torch.Tensor:
    """A random Shepp-Logan-style head: a skull, a brain and random interior features, ``(E, 6)``.

    The skull is an ellipse of intensity 1 (semi-axes about 0.69 x 0.92 as in Shepp-Logan,
    jittered, tilted by up to 15 degrees); the brain, a slightly smaller ellipse inside it, brings
    the interior down to a random base level in [0.1, 0.3]. Then ``n_features`` (uniform in the
    inclusive range) ellipses with random centres inside the brain, semi-axes in [0.02, 0.22],
    orientations and intensities in [-0.25, 0.45] are added: the learned-initialization CT data of
    Tancik et al. in spirit (random ellipses of random intensity inside the disc). Everything lies
    inside the unit disc; :func:`rasterize_ellipses` clips the sum to [0, 1].
    """
    lo, hi = n_features
    if not 0 <= lo <= hi:
        raise InputError(f"n_features must be (lo, hi) with 0 <= lo <= hi, got {n_features}")
    x0, y0 = rng.uniform(-0.03, 0.03, size=2)
    a, b = rng.uniform(0.62, 0.76), rng.uniform(0.80, 0.92)
    phi = rng.uniform(-math.pi / 12, math.pi / 12)
    shrink = rng.uniform(0.92, 0.97)
    base = rng.uniform(0.1, 0.3)
    rows = [(1.0, a, b, x0, y0, phi), (base - 1.0, a * shrink, b * shrink, x0, y0 - 0.0184, phi)]
    for _ in range(int(rng.integers(lo, hi + 1))):
        radius, angle = 0.65 * math.sqrt(rng.uniform()), rng.uniform(0, 2 * math.pi)
        u, v = radius * a * shrink * math.cos(angle), radius * b * shrink * math.sin(angle)
        cx = x0 + u * math.cos(phi) - v * math.sin(phi)
        cy = y0 + u * math.sin(phi) + v * math.cos(phi)
        axes = rng.uniform(0.02, 0.22, size=2)
        rows.append((rng.uniform(-0.25, 0.45), *axes, cx, cy, rng.uniform(0, math.pi)))
    return torch.tensor(rows, dtype=torch.float64)


def rasterize_ellipses(
    ellipses: torch.Tensor, resolution: int, supersample: int = 2, clip: bool = True
) -> torch.Tensor:
    """Render ellipses ``(E, 6)`` to a ``(resolution, resolution)`` float32 image.

    Each pixel is the mean over ``supersample^2`` sub-pixel centres (antialiasing), then the image
    is clipped to [0, 1] (``clip``) and set to 0 outside the unit disc (the reconstruction circle).
    """
    if resolution < 1 or supersample < 1:
        raise InputError(f"resolution and supersample must be >= 1: {resolution}, {supersample}")
    fine = resolution * supersample
    axis = axis_coords(fine, dtype=torch.float64)
    rows, cols = torch.meshgrid(axis, axis, indexing="ij")
    x, y = cols[..., None], -rows[..., None]  # textbook frame, (fine, fine, 1)
    value, a, b, x0, y0, phi = ellipses.to(torch.float64).unbind(-1)
    dx, dy = x - x0, y - y0
    u = dx * torch.cos(phi) + dy * torch.sin(phi)
    v = -dx * torch.sin(phi) + dy * torch.cos(phi)
    inside = (u / a).square() + (v / b).square() <= 1.0
    image = (inside * value).sum(-1)
    image = F.avg_pool2d(image[None, None], supersample)[0, 0]
    if clip:
        image = image.clamp(0.0, 1.0)
    return (image * disc_mask(resolution, torch.float64)).float()


def disc_mask(resolution: int, dtype=torch.float32) -> torch.Tensor:
    """1 at the pixel centres inside the unit disc, 0 outside: ``(resolution, resolution)``."""
    axis = axis_coords(resolution, dtype=dtype)
    return ((axis[:, None].square() + axis[None, :].square()) <= 1.0).to(dtype)


class PhantomDataset:
    """``n`` random ellipse phantoms at a given resolution, generated lazily and deterministically.

    Item ``i`` depends only on ``(seed, i)`` (NumPy's ``default_rng([seed, i])``), so it is the same
    in every process and in any access order. :meth:`ellipses` gives the analytic description.
    """

    def __init__(
        self,
        n: int,
        resolution: int = 128,
        seed: int = 0,
        supersample: int = 2,
        n_features: tuple[int, int] = (4, 10),
    ) -> None:
        if n < 0 or resolution < 1:
            raise InputError(f"PhantomDataset needs n >= 0, resolution >= 1: {n}, {resolution}")
        self.n, self.resolution, self.seed = n, resolution, seed
        self.supersample, self.n_features = supersample, tuple(n_features)

    def __len__(self) -> int:
        return self.n

    def _index(self, index: int) -> int:
        if not -self.n <= index < self.n:
            raise IndexError(f"phantom index {index} out of range for {self.n} phantoms")
        return index % self.n

    def ellipses(self, index: int) -> torch.Tensor:
        """The ellipses ``(E, 6)`` of phantom ``index``."""
        rng = np.random.default_rng([self.seed, self._index(index)])
        return random_ellipses(rng, self.n_features)

    def __getitem__(self, index: int) -> CTSignal:
        image = rasterize_ellipses(self.ellipses(index), self.resolution, self.supersample)
        return CTSignal(image[..., None], f"phantom-{self.seed}-{self._index(index):05d}")

    def __repr__(self) -> str:
        return f"PhantomDataset(n={self.n}, resolution={self.resolution}, seed={self.seed})"


# --------------------------------------------------------------------------------------------------
# CT slices from images
# --------------------------------------------------------------------------------------------------


def _image_and_name(item: Any, fallback: str) -> tuple[torch.Tensor, str]:
    """The image tensor and name of a dataset item (a tensor, an object with ``.image``, a dict)."""
    if isinstance(item, dict):
        return torch.as_tensor(item["image"]), str(item.get("name", fallback))
    if hasattr(item, "image"):
        return torch.as_tensor(item.image), str(getattr(item, "name", fallback))
    return torch.as_tensor(item), fallback


def to_grey(image: torch.Tensor, name: str) -> torch.Tensor:
    """An ``(H, W)`` or ``(H, W, 1..4)`` image to grey ``(H, W, 1)`` (alpha composited on white)."""
    if image.dim() == 2:
        image = image[..., None]
    if image.dim() != 3 or not 1 <= image.shape[-1] <= 4:
        raise InputError(f"image {name!r} must be (H, W) or (H, W, 1..4), got {tuple(image.shape)}")
    if image.shape[-1] in (2, 4):
        colour, alpha = image[..., :-1], image[..., -1:]
        image = colour * alpha + (1.0 - alpha)
    if image.shape[-1] == 3:
        image = image @ torch.tensor(LUMINANCE, dtype=image.dtype)[:, None]
    return image


def check_finite(image: torch.Tensor, name: str) -> None:
    """Raise :class:`InputError` naming the signal when ``image`` holds NaN or infinity."""
    if not bool(torch.isfinite(image).all()):
        raise InputError(f"CT signal {name!r} contains NaN or infinite values")


class SinogramImageDataset:
    """CT slices made from any image dataset (``__len__`` and ``__getitem__`` giving ``(H, W, C)``
    images in [0, 1], or items with ``.image`` and ``.name`` such as
    :class:`~genfield.datasets.images.ImageSignal`).

    Each image becomes grey (luminance), is centre-cropped to a square and resized to
    ``resolution`` (``None`` keeps a square image's size), and is set to 0 outside the unit disc
    (``mask_disc``) so that the slice equals what the disc-supported projector observes.
    """

    def __init__(
        self,
        images: Any,
        resolution: int | None = None,
        mask_disc: bool = True,
        name: str = "image",
    ) -> None:
        if resolution is not None and resolution < 1:
            raise InputError(f"SinogramImageDataset resolution must be >= 1, got {resolution}")
        self.images, self.resolution, self.mask_disc = images, resolution, mask_disc
        self.name = name

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> CTSignal:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        image, name = _image_and_name(self.images[index], f"{self.name}-{index % len(self):05d}")
        image = image.to(torch.float32)
        check_finite(image, name)
        image = to_grey(image, name)
        h, w = image.shape[:2]
        if self.resolution is None and h != w:
            raise InputError(f"image {name!r} is {h} x {w}; give a resolution to crop it square")
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        image = image[top : top + side, left : left + side]
        size = self.resolution or side
        if size != side:
            planes = rearrange(image, "h w c -> 1 c h w")
            planes = F.interpolate(
                planes, size=(size, size), mode="bilinear", antialias=True, align_corners=False
            )
            image = rearrange(planes, "1 c h w -> h w c")
        if self.mask_disc:
            image = image * disc_mask(size)[..., None]
        return CTSignal(image.contiguous(), name)


# --------------------------------------------------------------------------------------------------
# Context / target split
# --------------------------------------------------------------------------------------------------

def project_slices(
    slices: torch.Tensor, angles: torch.Tensor, n_detectors: int, n_samples: int, support: str = "disc"
) -> Observations:
    """Projections of slices ``(S, H, H, 1)`` at angles ``(S, A)``: angle-major queries ``(S, A * D, 2)``
    and line integrals ``(S, A * D, 1)`` of the slices' bilinear interpolants (see :class:`CTSplit`),
    with their :class:`~genfield.datasets.batch.ProjectionLayout`."""
    queries = ct_queries(angles, n_detectors)
    values = torch.cat(  # one signal at a time bounds the memory of the ray samples
        [project_image(slices[s : s + 1], queries[s : s + 1], n_samples, support) for s in range(len(slices))]
    )
    return Observations(queries, values, ProjectionLayout(angles.shape[-1], n_detectors))


@dataclass
class CTSplit:
    """Turn a list of CT slices into a :class:`~genfield.datasets.batch.SignalBatch` of projections.

    Context: ``n_context_angles`` projections per signal (``"random"`` angles drawn per signal from
    the generator, or ``"even"``), each with ``n_detectors`` bins. Target: ``n_target_angles``
    projections (``None``: as many angles as detectors, a fully sampled sinogram) at
    ``target_angles`` (``"even"`` by default). Queries ``(theta, t)`` are angle-major, so
    ``values.reshape(S, A, D, 1)`` is the sinogram. Observations are line integrals of the bilinear
    interpolant of the slice with the same rays and quadrature as the batch's forward map
    (:class:`~genfield.forward.ct.ParallelBeamProjection`), so a field equal to that interpolant
    reproduces them exactly. ``ground_truth`` is the slices ``(S, H, W, 1)``.

    Args:
        n_context_angles: projections in the context.
        context_angles: ``"random"`` or ``"even"``.
        n_detectors: detector bins per projection; ``None`` means the slice resolution.
        n_target_angles: projections in the target; ``None`` or ``"all"`` means ``n_detectors``
            (a fully sampled sinogram: the cost of a target grows with it).
        target_angles: ``"even"`` or ``"random"``.
        target: what the target observes; ``"projections"`` (the only kind: one forward map serves
            context and target, and the slice is in ``ground_truth`` for image metrics).
        n_samples: quadrature points per ray, for the data and the forward map; ``None`` means the
            slice resolution (one per pixel across the disc).
        support: ``"disc"`` or ``"square"`` (see :mod:`genfield.forward.ct`).
    """

    n_context_angles: int = 20
    context_angles: str = "random"
    n_detectors: int | None = None
    n_target_angles: int | str | None = None
    target_angles: str = "even"
    target: str = "projections"
    n_samples: int | None = None
    support: str = "disc"

    def __post_init__(self) -> None:
        if self.n_target_angles == "all":
            self.n_target_angles = None
        for key in ("n_context_angles", "n_detectors", "n_target_angles", "n_samples"):
            value = getattr(self, key)
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < 1
            ):
                raise InputError(f"CTSplit {key} must be a positive integer, got {value!r}")
        for key in ("context_angles", "target_angles"):
            if getattr(self, key) not in ANGLE_SCHEMES:
                raise InputError(
                    f"CTSplit {key} {getattr(self, key)!r} must be one of "
                    f"{', '.join(ANGLE_SCHEMES)}"
                )
        if self.target != "projections":
            raise InputError(f"CTSplit target {self.target!r} must be 'projections'")
        if self.support not in SUPPORTS:
            raise InputError(f"CTSplit support {self.support!r} must be one of {SUPPORTS}")

    def __call__(
        self, signals: Sequence[Any], generator: torch.Generator | None = None
    ) -> SignalBatch:
        if not signals:
            raise InputError("CTSplit needs at least one signal")
        images, names = [], []
        for i, signal in enumerate(signals):
            image, name = _image_and_name(signal, f"signal-{i}")
            check_finite(image, name)
            if image.dim() == 2:
                image = image[..., None]
            if image.dim() != 3 or image.shape[-1] != 1 or image.shape[0] != image.shape[1]:
                raise InputError(
                    f"CT signal {name!r} must be a square grey slice (H, H, 1), got "
                    f"{tuple(image.shape)} (SinogramImageDataset converts images)"
                )
            if images and image.shape != images[0].shape:
                raise InputError(
                    f"CT signals of a batch must have equal shapes: {names[0]!r} is "
                    f"{tuple(images[0].shape)} but {name!r} is {tuple(image.shape)}"
                )
            images.append(image.to(torch.float32))
            names.append(name)
        slices = torch.stack(images)  # (S, H, H, 1)
        n_signals, resolution = slices.shape[0], slices.shape[1]
        n_det = self.n_detectors or resolution
        n_samples = self.n_samples or resolution
        projector = ParallelBeamProjection(n_samples=n_samples, support=self.support)

        context_angles = draw_angles(
            self.context_angles, n_signals, self.n_context_angles, generator
        )
        target_angles = draw_angles(
            self.target_angles, n_signals, self.n_target_angles or n_det, generator
        )

        def observe(angles: torch.Tensor) -> Observations:
            return project_slices(slices, angles, n_det, n_samples, self.support)

        return SignalBatch(
            kind="ct",
            forward_map=projector,
            context=observe(context_angles),
            target=observe(target_angles),
            metadata=[{"name": name, "resolution": resolution} for name in names],
            ground_truth=slices,
            extras={
                "context_angles": context_angles,
                "target_angles": target_angles,
                "resolution": resolution,
            },
        )
