"""Views: context image features projected onto a voxel grid over the field cube (pixelNeRF's lift).

pixelNeRF (Yu et al. 2021) conditions a scene's radiance field at a point ``x`` on the features of
the context image found where ``x`` projects into each context view, with the point's position in
that view's camera frame, pooled over views. :class:`ProjectionFeatures` evaluates that lift once
per signal at the centres of an ``R^3`` grid over ``[-1, 1]^3`` (the volume of Atlas / NeuralRecon,
Murez et al. 2020, Sun et al. 2021), and a 3-D U-Net then lets each cell read its neighbourhood, so
the decoder (:func:`~genfield.processes.local.sample_grid` at every ray sample) sees the evidence
along the context rays through it and learns, from the collection, where along them the surface
lies. The grid reads like the other kinds' local features (:mod:`genfield.processes.local`).

The cameras are not passed in: a view's rays are its camera. :func:`pixel_projections` recovers
each view's pinhole projection from its ray directions by the direct linear transform (Hartley &
Zisserman 2004, §4.1): ``A d`` is proportional to the pixel's homogeneous normalised coordinates
``(u, v, 1)``, so ``A`` spans the null space of two linear equations per ray.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from genfield.datasets.batch import Observations, ViewLayout
from genfield.errors import InputError
from genfield.fields.coords import grid_coords
from genfield.forward.base import ForwardMap
from genfield.processes.encoders import MLP
from genfield.processes.unet import UNet


def pixel_uv(height: int, width: int, device=None, dtype=None) -> torch.Tensor:
    """Pixel centres ``(H * W, 2)`` as ``(u, v) = (column, row)`` in ``[-1, 1]``, row-major: the
    coordinates :func:`torch.nn.functional.grid_sample` reads with ``align_corners=False``."""
    return grid_coords((height, width), device=device, dtype=dtype).flip(-1)


def pixel_projections(directions: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Each view's projection ``A`` ``(..., 3, 3)`` from its ray directions ``(..., H * W, 3)``.

    ``A d ~ (u, v, 1)`` for the ray ``d`` of the pixel at :func:`pixel_uv` ``(u, v)``; each ray
    gives ``a_1 . d - u a_3 . d = 0`` and ``a_2 . d - v a_3 . d = 0`` in the rows ``a_i`` of ``A``,
    whose least-squares null vector is the smallest eigenvector of the equations' Gram matrix
    (float64). ``A`` is scaled so that ``a_3`` is a unit vector pointing along the view, so
    ``a_3 . (x - o)`` is the depth of ``x`` along the optical axis of a camera at ``o``.
    """
    uv = pixel_uv(height, width, device=directions.device, dtype=torch.float64)
    d = directions.double()
    zeros = torch.zeros_like(d)
    rows = torch.cat(
        [
            torch.cat([d, zeros, -uv[:, :1] * d], dim=-1),
            torch.cat([zeros, d, -uv[:, 1:] * d], dim=-1),
        ],
        dim=-2,
    )  # (..., 2N, 9)
    _, vectors = torch.linalg.eigh(rows.transpose(-1, -2) @ rows)
    a = rearrange(vectors[..., 0], "... (i j) -> ... i j", i=3)
    a = a / a[..., 2:, :].norm(dim=-1, keepdim=True)
    forward = torch.sign((a[..., 2, :] * d.mean(dim=-2)).sum(dim=-1))  # rays look along +a_3
    return (a * forward[..., None, None]).to(directions.dtype)


class ProjectionFeatures(nn.Module):
    """Views: projected context-image features on an ``R^3`` grid, pooled over views, then a 3-D U-Net.

    Per context view and grid cell centre ``x``: the view's pixels and a 2-D U-Net's features of
    them, read bilinearly where ``x`` projects (zero outside the image or behind the camera), a
    channel saying whether it projects inside, its depth along the optical axis relative to the
    world origin's, and its projected ``(u, v)``; an MLP per view, the mean over views (any number),
    the cell's coordinates, and the 3-D U-Net.

    Args:
        value_dim: channels per pixel.
        width: feature width.
        resolution: side ``R`` of the grid over ``[-1, 1]^3``.
        image_channels: the 2-D U-Net's channels per level over each context image (its output has
            ``image_channels[0]`` channels).
        channels: the 3-D U-Net's channels per level.
    """

    def __init__(
        self,
        value_dim: int,
        width: int,
        resolution: int = 16,
        image_channels: tuple[int, ...] = (16, 32),
        channels: tuple[int, ...] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if resolution < 2:
            raise InputError(f"process local_options.resolution must be >= 2, got {resolution}")
        self.resolution = int(resolution)
        image_width = int(image_channels[0])
        self.image_unet = UNet(value_dim + 2, image_width, tuple(image_channels), dims=2)
        self.view_mlp = MLP(value_dim + image_width + 4, width, depth=2)
        self.unet = UNet(width + 3, width, tuple(channels), dims=3)

    def forward(self, context: Observations, forward_map: ForwardMap) -> torch.Tensor:
        """Feature grids ``(S, width, R, R, R)`` from whole context views (a :class:`ViewLayout`)."""
        s, r = context.num_signals, self.resolution
        pooled = self.view_mlp(self.view_inputs(context)).mean(dim=1)  # (S, P, width)
        cells = grid_coords((r, r, r), device=pooled.device, dtype=pooled.dtype)
        grid = torch.cat([pooled, repeat(cells, "p d -> s p d", s=s)], dim=-1)
        return self.unet(rearrange(grid, "s (a b c) f -> s f a b c", a=r, b=r))

    def view_inputs(self, context: Observations) -> torch.Tensor:
        """The per-view MLP's input ``(S, V, R^3, c + image_channels[0] + 4)`` at every cell centre
        (C order, :func:`~genfield.fields.coords.grid_coords`): the pixels, then the image U-Net's
        features, read where the cell projects (zero outside), the inside channel, the relative
        depth and ``(u, v)`` (clamped to ``[-2, 2]``)."""
        layout = context.layout
        if not isinstance(layout, ViewLayout):
            raise InputError(
                "projection local features need whole context views (observations with a view "
                "layout); random context rays have no image to read"
            )
        s, r = context.num_signals, self.resolution
        v, h, w = layout.n_views, layout.height, layout.width
        queries = rearrange(context.queries, "s (v n) q -> s v n q", v=v)
        origins, directions = queries[:, :, 0, :3], queries[..., 3:6]
        projection = pixel_projections(directions, h, w)  # (S, V, 3, 3)
        cells = grid_coords((r, r, r), device=queries.device, dtype=queries.dtype)  # (P, 3)
        q = torch.einsum("svij,svpj->svpi", projection, cells - origins[:, :, None])
        depth = q[..., 2]
        uv = q[..., :2] / depth.clamp_min(1e-6)[..., None]
        inside = ((depth > 1e-6) & (uv.abs() <= 1).all(dim=-1)).to(q.dtype)  # (S, V, P)
        centre_depth = torch.einsum("svj,svj->sv", projection[..., 2, :], -origins)
        images = rearrange(context.values, "s (v h w) c -> (s v) c h w", v=v, h=h)
        pixels = repeat(pixel_uv(h, w, images.device, images.dtype), "(h w) t -> n t h w", n=s * v, h=h)
        features = torch.cat([images, self.image_unet(torch.cat([images, pixels], dim=1))], dim=1)
        read = F.grid_sample(
            features, rearrange(uv, "s v p t -> (s v) p 1 t"), align_corners=False, padding_mode="zeros"
        )  # (S V, C, P, 1)
        read = rearrange(read, "(s v) c p 1 -> s v p c", s=s)
        relative_depth = depth - centre_depth[..., None]
        return torch.cat(
            [read * inside[..., None], inside[..., None], relative_depth[..., None], uv.clamp(-2, 2)],
            dim=-1,
        )
