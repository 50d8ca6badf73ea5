"""Parallel-beam CT: a differentiable projector for fields and pixel images, and FBP.

Geometry. A CT query is ``(theta, t)``: a projection angle ``theta`` in [0, pi) and a detector
offset ``t`` in [-1, 1]. In the textbook frame (x to the right, y up; here x = column coordinate,
y = -row coordinate) the ray is the line ``x cos(theta) + y sin(theta) = t``, so the observation
is the Radon transform

    p(theta, t) = integral f(t e_perp + s e_dir) ds,      (Kak & Slaney, eq. 3.2)

with, in the field's (row, column) coordinates, ``e_perp = (-sin theta, cos theta)`` and
``e_dir = (cos theta, sin theta)``. At ``theta = 0`` the rays run down the columns (a projection
is the column sums); at ``theta = pi/2`` they run along the rows and ``t`` grows upwards.

Quadrature. The integral is taken with the midpoint rule, ``n_samples`` points over
``s in [-L, L]`` with weight ``2L / n_samples``:

* ``support="disc"`` (default, as in CT with a reconstruction circle): ``L = 1`` and points outside
  the unit disc contribute 0, i.e. the object is ``f`` times the indicator of the disc;
* ``support="square"``: ``L = sqrt(2)`` and points outside [-1, 1]^2 contribute 0.

Units and scikit-image. Line integrals are in domain units (the image side is 2). For an
``N x N`` image and ``D = N`` detector bins, ``skimage.transform.radon(image,
theta=degrees(theta), circle=True)`` sums pixels (unit length per pixel), so
``ours = skimage * 2 / N``; skimage's sinogram is ``(D, A)``, ours ``(A, D)``. Detector bin ``k``
sits at ``t_k = -1 + (2k + 1) / D`` (bin centres, see :func:`ct_queries`). skimage rotates about
pixel ``N // 2``, which for odd ``N`` is the domain centre, so there the two agree bin for bin
(:func:`project_image` with ``n_samples = N`` reproduces skimage to rounding error); for even
``N`` its centre is half a pixel off ours and its bin ``k`` is our offset
``t_k - (1 - cos theta + sin theta) / N``. :func:`fbp` likewise matches ``iradon`` inside the disc.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from einops import rearrange

from genfield.errors import InputError
from genfield.fields.coords import axis_coords, grid_coords
from genfield.forward.base import FieldFn, ForwardMap, PairedFieldFn, check_query_width
from genfield.forward.grid import grid_field, splat

SUPPORTS = ("disc", "square")
FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann", None)


def ct_queries(angles: torch.Tensor, n_detectors: int) -> torch.Tensor:
    """CT queries ``(..., A * n_detectors, 2)`` for angles ``(..., A)`` at detector-bin centres.

    The order is angle-major: the ``n_detectors`` bins of the ``a``-th projection are contiguous, so
    ``rearrange(values, "... (a d) c -> ... a d c", d=n_detectors)`` gives the sinogram.
    """
    if n_detectors < 1:
        raise InputError(f"n_detectors must be >= 1, got {n_detectors}")
    t = axis_coords(n_detectors, device=angles.device, dtype=angles.dtype)
    theta = angles[..., :, None].expand(*angles.shape, n_detectors)
    t = t.expand(*angles.shape, n_detectors)
    return rearrange(torch.stack([theta, t], dim=-1), "... a d q -> ... (a d) q")


def as_sinogram(values: torch.Tensor, n_detectors: int) -> torch.Tensor:
    """Angle-major observations ``(..., A * D, c)`` as sinograms ``(..., c, A, D)``."""
    return rearrange(values, "... (a d) c -> ... c a d", d=n_detectors)


def from_skimage(sinogram: torch.Tensor) -> torch.Tensor:
    """A ``skimage.transform.radon`` sinogram ``(D, A)`` of an ``N x N`` image (``D = N``, pixel
    sums) in genfield's layout and units: ``(A, D)`` line integrals over a domain of side 2, i.e.
    ``ours = skimage^T * 2 / N`` (the geometry in this module's docstring)."""
    return rearrange(sinogram, "d a -> a d") * (2.0 / sinogram.shape[0])


def to_skimage(sinogram: torch.Tensor, resolution: int) -> np.ndarray:
    """One genfield sinogram ``(A, D)`` as skimage's ``(D, A)`` pixel sums (float64): the inverse of
    :func:`from_skimage` for ``D = resolution``."""
    return rearrange(sinogram.detach().cpu().double(), "a d -> d a").numpy() * (resolution / 2)


def ray_points(
    queries: torch.Tensor, n_samples: int, support: str = "disc"
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Quadrature points along each ray, their in-support mask, and the quadrature weight.

    Returns ``points (..., N, K, 2)`` in (row, column) coordinates, ``mask (..., N, K, 1)``
    (1 inside the support, 0 outside) and the midpoint-rule weight ``2 L / K`` (module docstring).
    """
    half = 1.0 if support == "disc" else math.sqrt(2.0)
    s = axis_coords(n_samples, device=queries.device, dtype=queries.dtype) * half
    theta, t = queries[..., 0, None], queries[..., 1, None]  # (..., N, 1)
    cos, sin = torch.cos(theta), torch.sin(theta)
    rows = -t * sin + s * cos  # (..., N, K)
    cols = t * cos + s * sin
    points = torch.stack([rows, cols], dim=-1)
    if support == "disc":
        inside = rows * rows + cols * cols <= 1.0
    else:
        inside = (rows.abs() <= 1.0) & (cols.abs() <= 1.0)
    return points, inside.to(queries.dtype)[..., None], 2.0 * half / n_samples


@dataclass
class ParallelBeamProjection(ForwardMap):
    """Parallel-beam CT forward map: ``y(theta, t) = integral f(t e_perp + s e_dir) ds``.

    Queries are ``(..., N, 2)`` pairs ``(theta, t)``; the result is ``(..., N, c)``. The field is
    called once on all ``N * n_samples`` points ``(..., N * n_samples, 2)``, so a batched field
    (leading signal dimension) evaluates a whole meta-batch in one call. Pure tensor code without
    host syncs or data-dependent branches: it runs under ``torch.func.vmap`` and ``grad``.

    The map is linear with fixed weights ``w_nk = (2 L / K) * mask_nk`` (:func:`ray_points`), so a
    carried quantity goes through ``sum_k w_nk^power e(x_nk)``: with ``power=2`` and independent
    errors at the quadrature points, ``Var y_n = sum_k w_nk^2 v(x_nk)``. The exact adjoint of the
    map on grid fields (:meth:`adjoint`) is the ray-driven back-projection: each ray's value is
    scattered onto the cells around its quadrature points.
    """

    name: str = "ct"
    n_samples: int = 128
    support: str = "disc"
    linear: ClassVar[bool] = True
    measurement: ClassVar[str] = "line integral"

    def __post_init__(self) -> None:
        if int(self.n_samples) < 1:
            raise InputError(f"ct n_samples must be >= 1, got {self.n_samples}")
        if self.support not in SUPPORTS:
            raise InputError(f"ct support {self.support!r} must be one of {', '.join(SUPPORTS)}")

    def __call__(self, field_fn: FieldFn, queries: torch.Tensor) -> torch.Tensor:
        points, mask, weight = ray_points(queries, self.n_samples, self.support)
        values = field_fn(rearrange(points, "... n k d -> ... (n k) d"))
        values = rearrange(values, "... (n k) c -> ... n k c", k=self.n_samples)
        return (values * mask).sum(dim=-2) * weight

    def validate_queries(self, queries: torch.Tensor, role: str = "the") -> None:
        check_query_width(self, queries, 2, "pairs (theta, t)", role)

    def observe_carrying(
        self, paired_fn: PairedFieldFn, queries: torch.Tensor, power: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        points, mask, weight = ray_points(queries, self.n_samples, self.support)
        values, carried = paired_fn(rearrange(points, "... n k d -> ... (n k) d"))
        values, carried = (
            rearrange(v, "... (n k) c -> ... n k c", k=self.n_samples) for v in (values, carried)
        )
        return (values * mask).sum(dim=-2) * weight, (carried * mask).sum(dim=-2) * weight**power

    def propagate_variance(
        self, field_fn: FieldFn, variance_fn: FieldFn, queries: torch.Tensor
    ) -> torch.Tensor:
        """``sum_k w_nk^2 v(x_nk)``: the variance under independent errors at the quadrature points.

        The weights do not depend on the field, so ``field_fn`` is not evaluated.
        """
        points, mask, weight = ray_points(queries, self.n_samples, self.support)
        variance = variance_fn(rearrange(points, "... n k d -> ... (n k) d"))
        variance = rearrange(variance, "... (n k) c -> ... n k c", k=self.n_samples)
        return (variance * mask).sum(dim=-2) * weight**2

    def adjoint(self, values: torch.Tensor, queries: torch.Tensor, grid_shape: Sequence[int]) -> torch.Tensor:
        """``A^T y`` onto a grid ``(..., *grid_shape, c)``: the ray-driven back-projection.

        Every ray spreads ``w_nk y_n`` over the cells around each of its quadrature points with the
        weights of :func:`~genfield.forward.grid.grid_field`. Up to the discretisation this is
        ``(h^2 / delta) (P^T y)(x)`` with ``P^T`` the continuous back-projection ``sum_a y_a(t_a(x))``
        (Kak & Slaney, eq. 3.45), ``h^2`` the cell area and ``delta`` the detector spacing.
        """
        points, mask, weight = ray_points(queries, self.n_samples, self.support)
        spread = values[..., None, :] * mask * weight  # (..., N, K, c)
        flat = "... n k c -> ... (n k) c"
        return splat(rearrange(points, flat), rearrange(spread, flat), grid_shape)


def image_field(images: torch.Tensor) -> FieldFn:
    """The bilinear interpolant of pixel images ``(S, H, W, C)`` as a field on [-1, 1]^2.

    The returned ``field_fn`` maps points ``(S, ..., 2)`` (row, column) to ``(S, ..., C)``. Pixel
    centres follow :mod:`genfield.fields.coords` (``grid_sample`` with ``align_corners=False``);
    outside the image the interpolant fades to 0 over half a pixel.
    """
    return grid_field(images)


def project_image(
    images: torch.Tensor,
    queries: torch.Tensor,
    n_samples: int | None = None,
    support: str = "disc",
) -> torch.Tensor:
    """Project pixel images through :class:`ParallelBeamProjection` (same rays, same quadrature).

    Args:
        images: ``(S, H, W)`` or ``(S, H, W, C)``.
        queries: ``(S, N, 2)`` per image, or ``(N, 2)`` shared by all.
        n_samples: points per ray; ``None`` means ``max(H, W)`` (one per pixel across the disc).
        support: ``"disc"`` or ``"square"``.

    Returns:
        ``(S, N, C)`` line integrals (``C = 1`` for ``(S, H, W)`` input).
    """
    if images.dim() == 3:
        images = images[..., None]
    if images.dim() != 4:
        raise InputError(f"images must be (S, H, W) or (S, H, W, C), got {tuple(images.shape)}")
    if queries.dim() == 2:
        queries = queries.expand(images.shape[0], *queries.shape)
    if n_samples is None:
        n_samples = max(images.shape[1], images.shape[2])
    projector = ParallelBeamProjection(n_samples=n_samples, support=support)
    return projector(image_field(images.to(queries.dtype)), queries)


def fourier_filter(size: int, filter_name: str | None = "ramp", dtype=None, device=None):
    """Frequency response ``(size,)`` of the FBP filter, as in ``skimage.transform.iradon``.

    The ramp is the DFT of the band-limited spatial kernel ``h(0) = 1/4``, ``h(n) = -1/(pi n)^2``
    for odd ``n`` (Kak & Slaney, eq. 3.61), which avoids the DC bias of sampling ``|w|`` directly;
    apodizing windows multiply it. It is ``|frequency|`` in cycles per sample (skimage's response
    is twice this, with half the angular weight).
    """
    if filter_name not in FILTERS:
        raise InputError(f"fbp filter {filter_name!r} must be one of {FILTERS}")
    dtype = dtype or torch.get_default_dtype()
    n = torch.arange(size, device=device)
    dist = torch.minimum(n, size - n).to(torch.float64)
    kernel = torch.where(dist % 2 == 1, -1.0 / (math.pi * dist).clamp_min(1e-12) ** 2, 0.0)
    kernel[0] = 0.25
    response = torch.fft.fft(kernel).real  # ~ |frequency| in cycles per sample
    freq = torch.fft.fftfreq(size, device=device, dtype=torch.float64)
    if filter_name == "shepp-logan":
        omega = math.pi * freq
        response = response * torch.where(omega == 0, 1.0, torch.sin(omega) / omega)
    elif filter_name == "cosine":
        response = response * torch.cos(math.pi * freq)
    elif filter_name in ("hamming", "hann"):
        a = 0.54 if filter_name == "hamming" else 0.5
        k = torch.arange(size, device=device, dtype=torch.float64)
        window = a - (1 - a) * torch.cos(2 * math.pi * k / (size - 1))
        response = response * torch.fft.fftshift(window)
    elif filter_name is None:
        response = torch.ones_like(response)
    return response.to(dtype)


def filter_sinogram(sinogram: torch.Tensor, filter_name: str | None = "ramp") -> torch.Tensor:
    """Filter each projection of ``(..., A, D)`` sinograms (domain units: detector spacing 2 / D).

    Zero-pads to ``max(64, 2^ceil(log2(2 D)))`` so the circular convolution is a linear one.
    """
    n_det = sinogram.shape[-1]
    if filter_name is None:  # plain back-projection
        return sinogram
    size = max(64, 2 ** math.ceil(math.log2(2 * n_det)))
    response = fourier_filter(size, filter_name, dtype=sinogram.dtype, device=sinogram.device)
    spectrum = torch.fft.fft(sinogram, n=size, dim=-1) * response
    spacing = 2.0 / n_det
    return torch.fft.ifft(spectrum, dim=-1).real[..., :n_det] / spacing


def read_profiles(profiles: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Projections ``(..., D)`` read at continuous bin positions ``(..., M)`` (bin ``k`` at ``k``).

    Linear between bin centres and 0 beyond the outer ones: the interpolation of the pixel-driven
    back-projection :func:`backproject`.
    """
    n_det = profiles.shape[-1]
    valid = (position >= 0) & (position <= n_det - 1)
    low = position.floor().clamp(0, max(n_det - 2, 0))
    frac = position - low
    low = low.long()
    high = (low + 1).clamp(max=n_det - 1)
    return (profiles.gather(-1, low) * (1 - frac) + profiles.gather(-1, high) * frac) * valid


def backproject(
    projections: torch.Tensor, angles: torch.Tensor, output_size: int, circle: bool = True
) -> torch.Tensor:
    """Back-project ``(..., A, D)`` projections onto an ``output_size``-square pixel grid.

    Each pixel ``x`` gathers ``(pi / A) sum_a q_a(x . e_perp(theta_a))`` (Kak & Slaney, eq. 3.45),
    linearly interpolated between detector-bin centres and 0 beyond the outer ones.
    Returns ``(..., output_size, output_size)``.
    """
    n_angles, n_det = projections.shape[-2:]
    grid = grid_coords((output_size, output_size), projections.device, projections.dtype)
    cos, sin = torch.cos(angles)[..., None], torch.sin(angles)[..., None]  # (..., A, 1)
    t = grid[:, 1] * cos - grid[:, 0] * sin  # (..., A, P)
    batch = torch.broadcast_shapes(projections.shape[:-1], t.shape[:-1])
    position = (t.expand(*batch, t.shape[-1]) + 1) * (n_det / 2) - 0.5
    values = read_profiles(projections.expand(*batch, n_det), position)
    image = values.sum(dim=-2) * (math.pi / n_angles)
    if circle:
        image = image * (grid.square().sum(-1) <= 1.0)
    return rearrange(image, "... (h w) -> ... h w", h=output_size)


def fbp(
    sinogram: torch.Tensor,
    angles: torch.Tensor,
    output_size: int | None = None,
    filter_name: str | None = "ramp",
    circle: bool = True,
) -> torch.Tensor:
    """Filtered back-projection, the classical CT baseline.

    Args:
        sinogram: ``(A, D)`` or ``(S, A, D)`` line integrals in domain units, rows = angles (as
            made by :func:`project_image` and :func:`as_sinogram`).
        angles: ``(A,)`` or ``(S, A)`` radians. The angular weight is ``pi / A``, right for angles
            evenly spread over [0, pi).
        output_size: side of the square reconstruction; ``None`` means ``D``.
        filter_name: ``"ramp"`` (default), ``"shepp-logan"``, ``"cosine"``, ``"hamming"``,
            ``"hann"`` as in ``skimage.transform.iradon``, or ``None``: plain back-projection
            ``(pi / A) sum_a p_a`` (skimage's ``None`` is ``N / 4`` times this).
        circle: zero the reconstruction outside the unit disc.

    Returns:
        ``(H, W)`` or ``(S, H, W)`` with ``H = W = output_size``.
    """
    if sinogram.dim() not in (2, 3) or sinogram.shape[-2] != angles.shape[-1]:
        raise InputError(
            f"fbp sinogram {tuple(sinogram.shape)} must be (S?, A, D) with A = {angles.shape[-1]}"
        )
    output_size = output_size or sinogram.shape[-1]
    filtered = filter_sinogram(sinogram, filter_name)
    return backproject(filtered, angles.to(sinogram.dtype), output_size, circle=circle)
