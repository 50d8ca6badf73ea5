"""Local features: query-dependent conditioning through the adjoint of the forward map.

A single global code must describe a whole signal; learning that on little compute is slow. pixelNeRF
(Yu et al. 2021) conditions each query point instead on the context image features found where the
point *projects* into each context view, pooled over views. The measurement-consistent analogue for
a linear forward map ``P`` is its adjoint ``P^T``: it takes the context measurements back to the
field's domain, and evaluated at a point ``x`` it gives the evidence the measurements hold about
``f(x)``. Each part here turns a signal's context into a feature *grid* over the field domain
``(S, width, R, R)`` (``(S, width, R, R, R)`` over a volume); the decoder reads it at any point by
multilinear interpolation (:func:`sample_grid`) and is modulated by it per point
(:mod:`genfield.processes.models`).

* :class:`BackProjectionFeatures` (CT): for every view ``a`` and grid point ``x``, the view's raw
  and ramp-filtered profiles back-projected through the forward map's adjoint
  (:meth:`~genfield.forward.base.ForwardMap.adjoint`) with the detector shifted by a few bins (so
  each point reads the bins around ``t_a(x) = x . e_perp(theta_a)``), and Fourier features of
  ``theta_a`` go through an MLP; the mean over views (order invariant, any number of views) and
  FBP itself, ``(pi / A) sum_a q_a(t_a(x))``, go through a second MLP. With a linear first MLP this
  contains FBP; the nonlinearity lets the process learn which evidence to trust at few views.
  With ``trunk`` (U-Net channels), a U-Net over the pooled grid adds a residual, so each point also
  reads its neighbourhood at several scales: the learned post-processing of FBPConvNet (Jin et al.
  2017) inside the neural process, which removes the streaks a per-point map cannot see.
* :class:`SetConvFeatures` (images, and shapes on a 3-D grid): ConvCNP's set convolution (Gordon
  et al. 2020) through the point map's adjoint. The adjoint splats the context values and a channel
  of ones (the *density*) onto the grid; the density-normalised values ``P^T y / P^T 1`` (a weighted
  mean of nearby context values), the density and the grid's coordinates go through a U-Net
  (:mod:`genfield.processes.unet`), so each point reads features of its neighbourhood at several
  scales. A grid field read at the cell centres is the identity, so at ``resolution`` equal to the
  image side the input holds the context exactly.
* :class:`~genfield.processes.projection.ProjectionFeatures` (views): pixelNeRF's projection itself,
  the volume renderer having no adjoint: each cell of a grid over the field cube reads the context
  images where it projects into them.

``LOCAL_FEATURES`` names the parts; each kind's spec (:mod:`genfield.kinds`) says which it reads,
and kinds without one raise :class:`~genfield.errors.InputError` when ``local_features`` is asked for.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from genfield.datasets.batch import Observations
from genfield.errors import InputError
from genfield.fields.coords import grid_coords
from genfield.forward.base import ForwardMap
from genfield.forward.ct import filter_sinogram
from genfield.forward.grid import grid_field
from genfield.processes.encoders import MLP
from genfield.processes.projection import ProjectionFeatures
from genfield.processes.tokenizers import angle_features, detector_count
from genfield.processes.unet import UNet


def sample_grid(grid: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Multilinear reads of feature grids ``(B, C, *shape)`` at points ``(B, ..., d)`` -> ``(B, ..., C)``.

    ``shape`` is ``(R, R)`` with points (row, column) in [-1, 1]^2, or ``(R, R, R)`` with 3-D points
    in the order of the grid's axes; cell centres as in :mod:`genfield.fields.coords`
    (:func:`~genfield.forward.grid.grid_field`). Beyond the outer centres the features fade to 0 over
    half a cell.
    """
    return grid_field(torch.movedim(grid, 1, -1))(points)


class BackProjectionFeatures(nn.Module):
    """CT: learned, pooled per-view back-projections of the context sinogram on a grid.

    Args:
        value_dim: channels per measurement.
        width: feature width.
        window: bins on each side of ``t_a(x)`` read from each profile (``2 window + 1`` in all).
        n_frequencies: Fourier features of the view angle.
        resolution: side ``R`` of the feature grid; ``None`` means the detector count.
        n_detectors: bins per projection; ``None``: the context's layout's (inferred from the
            angle-major queries where the context has no layout).
        trunk: channels per level of a U-Net over the pooled grid (a residual); ``None``: none.
    """

    def __init__(
        self,
        value_dim: int,
        width: int,
        window: int = 4,
        n_frequencies: int = 4,
        resolution: int | None = None,
        n_detectors: int | None = None,
        trunk: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        self.trunk = UNet(width, width, tuple(trunk)) if trunk else None
        self.offsets = tuple(float(o) for o in range(-window, window + 1))
        self.n_frequencies, self.resolution, self.n_detectors = n_frequencies, resolution, n_detectors
        per_view = 2 * n_frequencies + 2 * len(self.offsets) * value_dim
        self.view_mlp = MLP(per_view, width, depth=2)
        self.pool_mlp = MLP(width + value_dim, width, depth=2)
        self.centre = window * value_dim  # index of offset 0 in the (offset, channel) layout
        self.value_dim = value_dim

    def forward(self, context: Observations, forward_map: ForwardMap) -> torch.Tensor:
        """Feature grids ``(S, width, R, R)`` from a CT context (angle-major)."""
        if not forward_map.linear:
            raise InputError(
                f"local features go through the adjoint of the forward map; the {forward_map.name} "
                f"forward map is not linear"
            )
        d = detector_count(context, self.n_detectors)  # the layout's; inferred without one
        if context.num_observations % d:
            raise InputError(
                f"CT context has {context.num_observations} observations, not a whole number of "
                f"projections of {d} detectors"
            )
        r = self.resolution or d
        n_views = context.num_observations // d
        raw, ramp = self.view_backprojections(forward_map, context, d, r)  # each (S, P, A, O c)
        angles = rearrange(context.queries[..., 0], "s (a d) -> s a d", d=d)[..., 0]
        theta = angle_features(angles, self.n_frequencies)[:, None].expand(-1, r * r, -1, -1)
        views = self.view_mlp(torch.cat([theta, raw, ramp], dim=-1)).mean(dim=-2)  # (S, P, width)
        c = self.value_dim
        fbp = ramp[..., self.centre : self.centre + c].sum(dim=-2) * (math.pi / n_views)
        features = self.pool_mlp(torch.cat([views, fbp], dim=-1))
        grid = rearrange(features, "s (h w) c -> s c h w", h=r)
        return grid if self.trunk is None else grid + self.trunk(grid)

    def view_backprojections(
        self, forward_map: ForwardMap, context: Observations, d: int, r: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-view adjoints of the raw and ramp-filtered profiles on an ``r x r`` grid, per shift.

        A profile whose rays are moved by ``-o`` bins back-projects, at ``x``, its value at
        ``t_a(x) + o`` bins. The adjoint is ``h^2 / delta`` times the continuous back-projection
        (cell area over detector spacing), divided out so each term reads like the profile itself.
        Both profiles go through one adjoint call. Returns two ``(S, r * r, A, O * c)``, channels
        ordered (offset, channel).
        """
        queries = rearrange(context.queries, "s (a d) q -> s a 1 d q", d=d)
        sinogram = rearrange(context.values, "s (a d) c -> s c a d", d=d)
        both = torch.cat([sinogram, filter_sinogram(sinogram, "ramp")], dim=1)  # (S, 2c, A, D)
        values = rearrange(both, "s c a d -> s a 1 d c").expand(-1, -1, len(self.offsets), -1, -1)
        shift = torch.tensor(self.offsets, dtype=queries.dtype, device=queries.device) * (2.0 / d)
        step = torch.stack([torch.zeros_like(shift), -shift], dim=-1)  # (O, 2): (theta, t) moves
        shifted = queries + step[:, None, :]  # (S, A, O, D, 2)
        grid = forward_map.adjoint(values, shifted, (r, r)) * (r * r / (2.0 * d))  # (S, A, O, r, r, 2c)
        raw, ramp = grid.chunk(2, dim=-1)
        return tuple(rearrange(g, "s a o h w c -> s (h w) a (o c)") for g in (raw, ramp))


class SetConvFeatures(nn.Module):
    """Images and shapes: a U-Net over the density-normalised adjoint of the context (ConvCNP's set
    convolution; in 3-D the volume encoder of Convolutional Occupancy Networks, Peng et al. 2020).

    Args:
        value_dim: channels per measurement.
        width: feature width (the U-Net's output channels).
        resolution: side ``R`` of the feature grid over ``[-1, 1]^dims`` (for images the image side is
            the natural choice: each pixel then owns one cell).
        channels: the U-Net's channels per level, finest first.
        coordinates: append the grid's (row, column) coordinates to the U-Net's input (CoordConv), so
            features may depend on position in aligned collections (faces), not on the neighbourhood only.
        scales: standard deviations, in grid cells, of Gaussian set convolutions added to the input:
            for each ``s``, the normalised convolution ``(k_s * P^T y) / (k_s * P^T 1)`` and its density
            ``k_s * P^T 1`` (Knutsson & Westin 1993; ConvCNP's RBF set convolution at a fixed length
            scale), so the U-Net starts from smooth interpolants at several ranges instead of having
            to learn to fill the gaps between sparse samples.
    """

    def __init__(
        self,
        value_dim: int,
        width: int,
        resolution: int = 32,
        channels: tuple[int, ...] = (16, 32, 64),
        coordinates: bool = True,
        scales: tuple[float, ...] = (1.0, 2.0, 4.0),
        dims: int = 2,
    ) -> None:
        super().__init__()
        if resolution < 2:
            raise InputError(f"process local_options.resolution must be >= 2, got {resolution}")
        if any(not (float(s) > 0) for s in scales):
            raise InputError(f"process local_options.scales must be > 0 grid cells, got {list(scales)}")
        self.resolution, self.coordinates = int(resolution), bool(coordinates)
        self.scales, self.dims = tuple(float(s) for s in scales), int(dims)
        per_scale = value_dim + 1
        in_channels = per_scale * (1 + len(self.scales)) + (self.dims if coordinates else 0)
        self.unet = UNet(in_channels, width, tuple(channels), dims=self.dims)

    def forward(self, context: Observations, forward_map: ForwardMap) -> torch.Tensor:
        """Feature grids ``(S, width, *(R,) * dims)`` from point observations."""
        return self.unet(torch.movedim(self.evidence(context, forward_map), -1, 1))

    def evidence(self, context: Observations, forward_map: ForwardMap) -> torch.Tensor:
        """The U-Net's input ``(S, *(R,) * dims, (c + 1)(1 + len(scales)) [+ dims])``: ``P^T y / P^T 1``,
        ``P^T 1``, the same after each Gaussian of ``scales`` [, coordinates]."""
        if not forward_map.linear:
            raise InputError(
                f"local features go through the adjoint of the forward map; the {forward_map.name} "
                f"forward map is not linear"
            )
        if context.queries.shape[-1] != self.dims:
            raise InputError(
                f"set-convolution local features need {self.dims}-d point queries, got "
                f"{context.queries.shape[-1]}-d"
            )
        shape = (self.resolution,) * self.dims
        grid = splat_with_density(context, forward_map, shape)
        parts = [normalised(grid, 0.01), grid[..., -1:]]
        for scale in self.scales:
            smooth = gaussian_blur(grid, scale)
            parts += [normalised(smooth, 1e-3), smooth[..., -1:]]
        if self.coordinates:
            coords = grid_coords(shape, device=grid.device, dtype=grid.dtype).reshape(1, *shape, self.dims)
            parts.append(coords.expand(grid.shape[0], *shape, self.dims))
        return torch.cat(parts, dim=-1)


def splat_with_density(
    context: Observations, forward_map: ForwardMap, shape: tuple[int, ...]
) -> torch.Tensor:
    """``[P^T y, P^T 1]`` ``(S, *shape, c + 1)``: the adjoint of the context values and of ones (the
    density, last channel)."""
    ones = torch.ones_like(context.values[..., :1])
    return forward_map.adjoint(torch.cat([context.values, ones], dim=-1), context.queries, shape)


def normalised(grid: torch.Tensor, floor: float) -> torch.Tensor:
    """``P^T y / P^T 1`` of a :func:`splat_with_density` grid: a weighted mean of nearby context values,
    shrunk to 0 where the density is below ``floor`` (no evidence: rounding leaves ~1e-7 of a
    pixel-centre value on the neighbouring cell)."""
    return grid[..., :-1] / grid[..., -1:].clamp_min(floor)


def gaussian_blur(grid: torch.Tensor, scale: float) -> torch.Tensor:
    """``(S, *shape, C)`` (2-D or 3-D) convolved with a normalised Gaussian of standard deviation
    ``scale`` cells.

    Separable, truncated at 3 standard deviations (rounded as SciPy does), zero beyond the grid (a
    normalised convolution divides that loss of mass out again).
    """
    radius = max(1, int(3 * scale + 0.5))  # scipy.ndimage.gaussian_filter's truncation, truncate=3
    taps = torch.arange(-radius, radius + 1, dtype=grid.dtype, device=grid.device)
    kernel = torch.exp(-0.5 * (taps / scale) ** 2)
    kernel = kernel / kernel.sum()
    channels, dims = grid.shape[-1], grid.dim() - 2
    conv = {2: F.conv2d, 3: F.conv3d}[dims]
    x = torch.movedim(grid, -1, 1)  # (S, C, *shape)
    for axis in range(dims):  # one 1-D pass per axis
        size = [1] * dims
        size[axis] = len(kernel)
        pad = [0] * dims
        pad[axis] = radius
        weight = kernel.reshape(1, 1, *size).expand(channels, 1, *size)
        x = conv(x, weight, padding=tuple(pad), groups=channels)
    return torch.movedim(x, 1, -1)


#: The local-feature parts by name; each kind's spec names its own (``KindSpec.local_features``).
LOCAL_FEATURES = {
    "back_projection": BackProjectionFeatures,
    "set_convolution": SetConvFeatures,
    "projection": ProjectionFeatures,
}


def build_local_features(kind: str, value_dim: int, width: int, **options) -> nn.Module:
    """The local-feature part that ``kind``'s spec names (:data:`LOCAL_FEATURES`)."""
    from genfield.kinds import get_kind, kind_names

    name = get_kind(kind).local_features
    if name is None:
        having = [k for k in kind_names() if get_kind(k).local_features is not None]
        raise InputError(
            f"process local_features has no implementation for kind {kind!r}; available: {having}"
        )
    if name == "set_convolution":
        options = {"dims": get_kind(kind).in_dim, **options}
    return LOCAL_FEATURES[name](value_dim, width, **options)
