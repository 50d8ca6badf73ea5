"""Camera rays and emission-absorption volume rendering (the forward map of multi-view data).

Camera convention (NeRF / OpenGL / Blender): in camera coordinates x points right, y up, and the
camera looks down -z. ``c2w`` is the 4 x 4 camera-to-world matrix, so a camera-frame direction
``d`` becomes ``R d`` in the world and the ray starts at the camera centre ``c2w[:3, 3]``. Pixel
``(i, j)`` (row ``i`` from the top, column ``j`` from the left) is sampled at its centre
``(j + 0.5, i + 0.5)`` in continuous pixel coordinates, so the principal point
``(cx, cy) = (W / 2, H / 2)`` is the exact centre of the image.

A ray query is ``(origin (3), direction (3), near, far)``: queries are ``(..., N, 8)``. The ray's
points are ``o + t d`` for ``t`` in ``[near, far]``; ``t`` is measured in units of ``|d|``, and the
renderer multiplies interval lengths by ``|d|``, so densities are always per unit of world length
whether directions are normalised or not. :func:`camera_rays` returns unit directions by
default, so ``t`` is the Euclidean distance from the camera. :func:`ray_queries` optionally clips
each ray's interval to the world cube ``[-1, 1]^3``, where every field lives; a ray that misses the
cube gets an empty interval and renders the background.

Rendering (Max 1995; Mildenhall et al. 2020, eq. 3) with ``K`` samples at ``t_k`` representing the
intervals ``[s_k, s_{k+1}]`` that tile ``[near, far]`` (``delta_k = (s_{k+1} - s_k) |d|``)::

    alpha_k = 1 - exp(-sigma_k delta_k)
    T_k     = prod_{j<k} (1 - alpha_j) = exp(-sum_{j<k} sigma_j delta_j)
    w_k     = T_k alpha_k
    C       = sum_k w_k c_k + (1 - sum_k w_k) * background

Because the intervals tile ``[near, far]`` exactly, the rendered transmittance is the exact one
for a density that is constant on each interval (the midpoint rule for the optical depth).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from einops import rearrange

from genfield.errors import InputError, unknown_name
from genfield.forward.base import FieldFn, ForwardMap, PairedFieldFn, check_query_width

#: Distance from the centre to a corner of the world cube [-1, 1]^3.
CUBE_RADIUS = math.sqrt(3.0)
#: World up axes a camera can be oriented by (:func:`look_at`).
UP_AXES = {"x": (1.0, 0.0, 0.0), "y": (0.0, 1.0, 0.0), "z": (0.0, 0.0, 1.0)}


def camera_rays(
    c2w: torch.Tensor,
    focal: float | torch.Tensor,
    height: int,
    width: int,
    cx: float | torch.Tensor | None = None,
    cy: float | torch.Tensor | None = None,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space rays through every pixel centre of pinhole cameras.

    Args:
        c2w: camera-to-world matrices ``(..., 4, 4)`` (or ``(..., 3, 4)``), OpenGL convention.
        focal: focal length in pixels; a float or a tensor broadcastable to the leading dims.
        height, width: image size in pixels.
        cx, cy: principal point in pixels (default: the image centre ``W / 2``, ``H / 2``).
        normalize: return unit directions (then ``t`` along a ray is the Euclidean distance);
            otherwise the camera-frame direction has ``z = -1`` (then ``t`` is the depth).

    Returns:
        ``origins`` and ``directions``, each ``(..., H * W, 3)``, pixels in row-major order (the
        order of ``image.reshape(H * W, 3)``).
    """
    dtype, device = c2w.dtype, c2w.device
    lead = c2w.shape[:-2]
    focal = torch.as_tensor(focal, dtype=dtype, device=device)
    cx = torch.as_tensor(width / 2 if cx is None else cx, dtype=dtype, device=device)
    cy = torch.as_tensor(height / 2 if cy is None else cy, dtype=dtype, device=device)
    # broadcast the intrinsics against the camera dims, then add a pixel dim
    focal, cx, cy = (torch.broadcast_to(v, lead)[..., None] for v in (focal, cx, cy))
    rows = torch.arange(height, dtype=dtype, device=device) + 0.5
    cols = torch.arange(width, dtype=dtype, device=device) + 0.5
    v, u = (rearrange(g, "h w -> (h w)") for g in torch.meshgrid(rows, cols, indexing="ij"))
    x = (u - cx) / focal
    y = -(v - cy) / focal  # image rows run down, camera y runs up
    camera_dirs = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # (..., HW, 3)
    rotation = c2w[..., :3, :3]
    directions = torch.einsum("...ij,...nj->...ni", rotation, camera_dirs)
    if normalize:
        directions = directions / directions.norm(dim=-1, keepdim=True)
    origins = torch.broadcast_to(c2w[..., None, :3, 3], directions.shape)
    return origins, directions


def look_at(
    eye: torch.Tensor, target: Sequence[float] = (0.0, 0.0, 0.0), up: str = "z"
) -> torch.Tensor:
    """Camera-to-world matrices ``(..., 4, 4)`` of cameras at ``eye`` ``(..., 3)`` facing a target.

    OpenGL convention: the camera's ``-z`` axis points at the target and its ``+y`` axis is the
    world ``up`` axis projected onto the image plane (``"z"``: Blender / NeRF-synthetic).
    """
    if up not in UP_AXES:
        raise unknown_name("up axis", up, list(UP_AXES))
    eye = torch.as_tensor(eye)
    eye = eye if eye.is_floating_point() else eye.float()
    world_up = torch.tensor(UP_AXES[up], dtype=eye.dtype, device=eye.device).expand_as(eye)
    back = eye - torch.as_tensor(target, dtype=eye.dtype, device=eye.device)
    back = back / back.norm(dim=-1, keepdim=True)
    right = torch.linalg.cross(world_up, back, dim=-1)
    right = right / right.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    cam_up = torch.linalg.cross(back, right, dim=-1)
    rotation = torch.stack([right, cam_up, back], dim=-1)  # columns: the camera axes in the world
    c2w = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    c2w[..., :3, :3] = rotation
    c2w[..., :3, 3] = eye
    c2w[..., 3, 3] = 1.0
    return c2w


def cube_interval(
    origins: torch.Tensor, directions: torch.Tensor, bound: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit parameters ``(t0, t1)`` ``(..., N)`` of rays through ``[-bound, bound]^3``.

    The slab method; ``t0 > t1`` where a ray misses the cube. Components of ``d`` that are (nearly)
    zero are replaced by a tiny positive number, so every parameter stays finite.
    """
    tiny = torch.finfo(directions.dtype).tiny ** 0.5
    safe = torch.where(directions.abs() < tiny, torch.full_like(directions, tiny), directions)
    t_low = (-bound - origins) / safe
    t_high = (bound - origins) / safe
    t0 = torch.minimum(t_low, t_high).amax(dim=-1)
    t1 = torch.maximum(t_low, t_high).amin(dim=-1)
    return t0, t1


def ray_queries(
    origins: torch.Tensor,
    directions: torch.Tensor,
    near: float | torch.Tensor,
    far: float | torch.Tensor,
    clip_to_cube: bool = True,
) -> torch.Tensor:
    """Pack rays into queries ``(..., N, 8) = (origin, direction, near, far)``.

    With ``clip_to_cube`` each ray's ``[near, far]`` is intersected with its interval inside the
    world cube ``[-1, 1]^3``, so no sample is spent outside the field's domain; rays that miss the
    cube get ``near = far`` (an empty interval: they render the background).
    """
    like = {"dtype": origins.dtype, "device": origins.device}
    near = torch.broadcast_to(torch.as_tensor(near, **like), origins.shape[:-1])
    far = torch.broadcast_to(torch.as_tensor(far, **like), origins.shape[:-1])
    if clip_to_cube:
        t0, t1 = cube_interval(origins, directions)
        clipped_near, clipped_far = torch.maximum(near, t0), torch.minimum(far, t1)
        miss = clipped_near >= clipped_far  # an empty interval at far
        near = torch.where(miss, far, clipped_near)
        far = torch.where(miss, far, clipped_far)
    return torch.cat([origins, directions, near[..., None], far[..., None]], dim=-1)


def sample_pdf(edges: torch.Tensor, weights: torch.Tensor, n: int, stratified: bool) -> torch.Tensor:
    """Draw ``n`` positions ``(..., N, n)`` from the piecewise-constant pdf of ``weights``.

    ``edges`` ``(..., N, K + 1)`` bound the ``K`` bins that carry ``weights`` ``(..., N, K)``.
    Inverse-CDF sampling (Mildenhall et al. 2020, sec. 5.2) at stratified uniforms (training) or
    at the fixed quantiles ``(k + 0.5) / n`` (evaluation). A small constant keeps the pdf positive,
    so a ray with zero weight samples uniformly.
    """
    weights = weights + 1e-5
    pdf = weights / weights.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[..., :1]), pdf.cumsum(dim=-1)], dim=-1)
    cdf = torch.minimum(cdf, torch.ones_like(cdf))
    base = (torch.arange(n, dtype=edges.dtype, device=edges.device) + 0.5) / n
    u = torch.zeros_like(cdf[..., :1]) + base  # (..., N, n), laid out like cdf (also under vmap)
    if stratified:
        u = u + (torch.rand_like(u) - 0.5) / n
    index = torch.searchsorted(cdf.contiguous(), u.contiguous(), right=True)
    below = (index - 1).clamp(0, edges.shape[-1] - 1)
    above = index.clamp(0, edges.shape[-1] - 1)
    cdf_lo, cdf_hi = cdf.gather(-1, below), cdf.gather(-1, above)
    edge_lo, edge_hi = edges.gather(-1, below), edges.gather(-1, above)
    span = cdf_hi - cdf_lo
    frac = (u - cdf_lo) / torch.where(span < 1e-8, torch.ones_like(span), span)
    return edge_lo + frac.clamp(0, 1) * (edge_hi - edge_lo)


@dataclass
class VolumeRenderer(ForwardMap):
    """Emission-absorption volume rendering along camera rays (the ``"volume"`` forward map).

    ``field_fn`` maps world points ``(..., M, 3)`` in ``[-1, 1]^3`` to ``(..., M, 4)`` =
    ``(density >= 0, r, g, b)``; the field's ``radiance`` head applies the activations and the
    renderer takes the values as given. Queries are rays ``(..., N, 8)`` (see :func:`ray_queries`).

    Attributes:
        n_samples: coarse samples per ray: ``[near, far]`` is cut into this many equal intervals.
        n_importance: extra interval edges drawn by inverse CDF from the coarse weights
            (hierarchical sampling); the field is then evaluated again on the union of coarse and
            new edges, sorted (``n_samples + n_importance`` intervals), and that pass is what is
            returned. 0 turns it off. The coarse pass only places samples: it runs without a graph.
        stratified: jitter each sample uniformly inside its interval and the importance quantiles
            (training: an unbiased estimate of the optical depth); ``False`` puts samples at
            interval midpoints (evaluation, deterministic). Randomness comes from the global
            generator via ``torch.rand_like``, so it works under
            ``torch.func.vmap(..., randomness="different")``.
        white_background: composite onto white (``True``) or black.
    """

    n_samples: int = 64
    n_importance: int = 0
    stratified: bool = True
    white_background: bool = True
    name: str = "volume"
    linear: ClassVar[bool] = False
    measurement: ClassVar[str] = "radiance"

    def deterministic(self) -> VolumeRenderer:
        """The same renderer with midpoint samples (for evaluation and figures)."""
        return replace(self, stratified=False)

    def out_channels(self, field_channels: int) -> int:
        """3: a ``(density, r, g, b)`` field renders to RGB (channels past the fourth are not read)."""
        if field_channels < 4:
            raise InputError(
                f"volume forward map needs (density, r, g, b) field channels, got {field_channels} channels"
            )
        return 3

    def validate_queries(self, queries: torch.Tensor, role: str = "the") -> None:
        check_query_width(self, queries, 8, "rays (origin, direction, near, far)", role)

    def __call__(self, field_fn: FieldFn, queries: torch.Tensor) -> torch.Tensor:
        """Rendered colours ``(..., N, 3)`` of the rays ``queries`` ``(..., N, 8)``."""
        return self.render(field_fn, queries)["rgb"]

    def observe_carrying(
        self, paired_fn: PairedFieldFn, queries: torch.Tensor, power: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Colours and ``sum_k w_k^power e(x_k)`` with the rendering weights of the same samples.

        The carried quantity sees the same stratified jitter and hierarchical samples as the colour
        and no background term. With ``power=2`` and a pointwise colour variance this is the
        variance of the colour when the weights ``w_k = T_k alpha_k`` are held fixed, i.e. the
        density is taken as known and the colour errors of the samples as independent: a
        linearisation in the colour only (:meth:`~genfield.forward.base.ForwardMap.propagate_variance`).
        """
        out = self._render(paired_fn, queries, power)
        return out["rgb"], out["carried"]

    def render(self, field_fn: FieldFn, queries: torch.Tensor) -> dict[str, torch.Tensor]:
        """Render rays and return everything figures need.

        Returns a dict with ``rgb`` ``(..., N, 3)``, ``depth`` ``(..., N)`` (the expected
        termination distance given that the ray terminates, ``sum w t / sum w``; ``far`` where
        nothing is hit), ``opacity`` ``(..., N)`` (``sum w``), ``weights`` ``(..., N, K)`` and the
        sample positions ``t`` ``(..., N, K)``.
        """
        out = self._render(lambda points: (field_fn(points), None), queries)
        del out["carried"]
        return out

    def _render(
        self, paired_fn: PairedFieldFn, queries: torch.Tensor, power: int = 1
    ) -> dict[str, torch.Tensor]:
        """:meth:`render` of a paired field (``carried`` is ``None`` when its second part is)."""
        origins, directions = queries[..., 0:3], queries[..., 3:6]
        near, far = queries[..., 6:7], queries[..., 7:8]
        steps = torch.linspace(0, 1, self.n_samples + 1, dtype=queries.dtype, device=queries.device)
        edges = near + (far - near) * steps  # (..., N, K + 1)
        if self.n_importance > 0:
            with torch.no_grad():
                coarse = self._composite(paired_fn, origins, directions, edges, power)
                extra = sample_pdf(edges, coarse["weights"], self.n_importance, self.stratified)
            edges = torch.sort(torch.cat([edges, extra.detach()], dim=-1), dim=-1).values
        out = self._composite(paired_fn, origins, directions, edges, power)
        background = 1.0 if self.white_background else 0.0
        out["rgb"] = out["rgb"] + (1 - out["opacity"][..., None]) * background
        far1 = far[..., 0]
        out["depth"] = torch.where(out["opacity"] > 1e-6, out["depth"] / out["opacity"].clamp_min(1e-6), far1)
        return out

    def _composite(
        self,
        paired_fn: PairedFieldFn,
        origins: torch.Tensor,
        directions: torch.Tensor,
        edges: torch.Tensor,
        power: int,
    ) -> dict[str, torch.Tensor]:
        """Alpha-composite the field over the intervals ``edges`` (no background), and the carried
        quantity with the weights to the ``power``."""
        lower, upper = edges[..., :-1], edges[..., 1:]
        if self.stratified:
            t = lower + (upper - lower) * torch.rand_like(lower)
        else:
            t = 0.5 * (lower + upper)
        points = origins[..., None, :] + t[..., None] * directions[..., None, :]  # (..., N, K, 3)
        n_rays = points.shape[-3]
        values, carried = paired_fn(rearrange(points, "... n k d -> ... (n k) d"))
        values = rearrange(values, "... (n k) c -> ... n k c", n=n_rays)
        sigma, colour = values[..., 0], values[..., 1:4]
        delta = (upper - lower) * directions.norm(dim=-1, keepdim=True)
        optical = sigma * delta
        alpha = 1 - torch.exp(-optical)
        # T_k = exp(-sum_{j<k} sigma_j delta_j): an exclusive cumulative sum, stable and vmap-safe
        accumulated = torch.cumsum(optical, dim=-1)
        before = torch.cat([torch.zeros_like(accumulated[..., :1]), accumulated[..., :-1]], dim=-1)
        transmittance = torch.exp(-before)
        weights = transmittance * alpha
        if carried is not None:
            carried = rearrange(carried, "... (n k) c -> ... n k c", n=n_rays)
            carried = (weights[..., None] ** power * carried).sum(dim=-2)
        return {
            "rgb": (weights[..., None] * colour).sum(dim=-2),
            "depth": (weights * t).sum(dim=-1),
            "opacity": weights.sum(dim=-1),
            "weights": weights,
            "t": t,
            "carried": carried,
        }
