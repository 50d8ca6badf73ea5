"""Tokenizers: turn one signal's observations into a set of tokens ``(S, T, feature_dim)``.

A neural process reads its context as a *set*: each token is one unit of observation, and the
encoders downstream are invariant to the tokens' order. What a unit is depends on how the signal was
observed:

* :class:`PointTokenizer` (pixels, labelled 3-D points): one token per observation, its query point
  and its value — the tokens of CNP/NP/ANP (Garnelo et al. 2018; the Neural-Process-Family library).
* :class:`PointCloudTokenizer` (unlabelled surface samples): one token per point, coordinates only.
* :class:`ProjectionTokenizer` (CT): one token per projection angle, holding Fourier features of the
  angle and the *whole* detector profile, as the PONP authors' CT code does. Profiles are resampled
  to a fixed ``n_bins`` so the token size does not depend on the detector count.
* :class:`PatchTokenizer` (multi-view images): one token per ``p x p`` image patch carrying its pixels'
  colours and their rays' origins and directions, as TransINR does for novel-view synthesis.

Every tokenizer has a fixed ``feature_dim`` known at construction (no lazy layers), and a
``__call__(observations) -> tokens``. The units (projections, views) come from the observations'
typed layout (:mod:`genfield.datasets.batch`: :class:`~genfield.datasets.batch.ProjectionLayout`,
angle-major ``(angle, offset)`` pairs; :class:`~genfield.datasets.batch.ViewLayout`, view-major and
row-major rays), which the splits and ``reconstruct``'s readers set. Observations built without one
(by hand, or rebuilt from a subset of rows) fall back to inferring the units from the query values
(:func:`detector_count`, :func:`view_size`), which is wrong when, say, two neighbouring projections
share an angle.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange

from genfield.datasets.batch import Observations, ProjectionLayout, ViewLayout
from genfield.errors import InputError, unknown_name
from genfield.kinds import KINDS, get_kind

TOKENIZERS = ("points", "pointcloud", "projections", "patches")


class PointTokenizer:
    """One token per observation: ``[x_n, y_n]`` (coordinates then value)."""

    def __init__(self, coord_dim: int, value_dim: int) -> None:
        self.feature_dim = coord_dim + value_dim

    def __call__(self, obs: Observations) -> torch.Tensor:
        return torch.cat([obs.queries, obs.values], dim=-1)

    def unit_size(self, obs: Observations) -> int:
        """Observations per unit of context (one token): 1."""
        return 1


class PointCloudTokenizer:
    """One token per point of an unlabelled point cloud: its coordinates only."""

    def __init__(self, coord_dim: int, value_dim: int = 0) -> None:
        self.feature_dim = coord_dim

    def __call__(self, obs: Observations) -> torch.Tensor:
        return obs.queries

    def unit_size(self, obs: Observations) -> int:
        """Observations per unit of context: 1 (one point)."""
        return 1


def angle_features(angles: torch.Tensor, n_frequencies: int) -> torch.Tensor:
    """``[sin(k theta), cos(k theta)]`` for ``k = 1..n_frequencies``: ``(...,) -> (..., 2 F)``.

    Frequency 1 already separates every angle of [0, pi) (and theta from theta + pi), higher ones
    give the encoder finer angular resolution.
    """
    k = torch.arange(1, n_frequencies + 1, device=angles.device, dtype=angles.dtype)
    phase = angles[..., None] * k
    return torch.cat([phase.sin(), phase.cos()], dim=-1)


def count_leading_equal(values: torch.Tensor) -> int:
    """How many leading entries of a 1-D tensor equal its first (one host sync, at tokenisation)."""
    equal = (values == values[0]).to(torch.int64)
    return int(equal.cumprod(0).sum())


def detector_count(obs: Observations, configured: int | None = None) -> int:
    """Bins per projection of CT observations: their layout's, else ``configured``, else inferred.

    Inference (the length of the first run of equal angles; one host sync) serves observations built
    without a layout; a ``configured`` count that disagrees with the layout is refused.
    """
    layout = obs.layout
    if layout is None:
        return configured or count_leading_equal(obs.queries[0, :, 0])
    if not isinstance(layout, ProjectionLayout):
        raise InputError(f"CT observations must be whole projections (a ProjectionLayout), got {layout}")
    if configured is not None and configured != layout.n_detectors:
        raise InputError(f"n_detectors={configured} disagrees with the observations' {layout}")
    return layout.n_detectors


def view_size(obs: Observations, configured: tuple[int, int] | None = None) -> tuple[int, int]:
    """``(height, width)`` of the views of ray observations: their layout's, else ``configured``,
    else inferred (the first run of rays sharing the first ray's origin, taken as a square view)."""
    layout = obs.layout
    if layout is None:
        if configured is not None:
            return tuple(configured)
        origin = obs.queries[0, :, :3]
        same = (origin - origin[0]).abs().amax(dim=-1) < 1e-6
        pixels = int(same.to(torch.int64).cumprod(0).sum())
        side = math.isqrt(pixels)
        if side * side != pixels:
            raise InputError(f"views context: {pixels} rays per view is not a square image; pass image_size")
        return side, side
    if not isinstance(layout, ViewLayout):
        raise InputError(f"ray observations must be whole views (a ViewLayout), got {layout}")
    if configured is not None and tuple(configured) != layout.image_size:
        raise InputError(f"image_size={tuple(configured)} disagrees with the observations' {layout}")
    return layout.image_size


class ProjectionTokenizer:
    """CT: one token per projection angle = ``[angle features, detector profile]``.

    Queries are ``(angle, detector offset)`` pairs in angle-major order (the ``D`` bins of a
    projection contiguous), so the context reshapes to ``(S, A, D)``. ``D`` is the observations'
    layout's; ``n_detectors`` serves observations without one (see :func:`detector_count`).
    """

    def __init__(
        self,
        value_dim: int = 1,
        n_bins: int = 64,
        n_frequencies: int = 8,
        n_detectors: int | None = None,
    ) -> None:
        self.value_dim, self.n_bins, self.n_frequencies = value_dim, n_bins, n_frequencies
        self.n_detectors = n_detectors
        self.feature_dim = 2 * n_frequencies + n_bins * value_dim

    def unit_size(self, obs: Observations) -> int:
        """Observations per unit of context: the ``D`` bins of one projection."""
        return detector_count(obs, self.n_detectors)

    def __call__(self, obs: Observations) -> torch.Tensor:
        n_obs = obs.num_observations
        d = self.unit_size(obs)
        if n_obs % d:
            raise InputError(
                f"CT context has {n_obs} observations, not a whole number of projections of {d} "
                "detectors (queries must be angle-major)"
            )
        angles = rearrange(obs.queries[..., 0], "s (a d) -> s a d", d=d)[..., 0]
        profiles = rearrange(obs.values, "s (a d) c -> (s a) c d", d=d)
        if d != self.n_bins:  # resample to a fixed token size (linear, bin centres aligned)
            profiles = F.interpolate(profiles, size=self.n_bins, mode="linear", align_corners=False)
        profiles = rearrange(profiles, "(s a) c d -> s a (c d)", s=obs.num_signals)
        return torch.cat([angle_features(angles, self.n_frequencies), profiles], dim=-1)


class PatchTokenizer:
    """Views: one token per ``p x p`` patch = its pixels' ``[origin, direction, rgb]`` (TransINR).

    Context rays are view-major and row-major (``(S, V*H*W, 8)`` = origin, direction, near, far).
    The view size is the observations' layout's; ``image_size`` serves observations without one
    (see :func:`view_size`).
    """

    def __init__(self, patch_size: int = 4, image_size: tuple[int, int] | None = None) -> None:
        self.patch_size, self.image_size = patch_size, image_size
        self.feature_dim = patch_size * patch_size * 9

    def unit_size(self, obs: Observations) -> int:
        """Observations per unit of context: the ``H * W`` rays of one whole view."""
        h, w = view_size(obs, self.image_size)
        return h * w

    def __call__(self, obs: Observations) -> torch.Tensor:
        h, w = view_size(obs, self.image_size)
        p = self.patch_size
        n_obs = obs.num_observations
        if n_obs % (h * w) or h % p or w % p:
            raise InputError(
                f"views context of {n_obs} rays does not split into {h}x{w} views with "
                f"{p}x{p} patches (context rays must be whole views, view-major)"
            )
        rays = torch.cat([obs.queries[..., :6], obs.values[..., :3]], dim=-1)
        return rearrange(rays, "s (v h p w q) f -> s (v h w) (p q f)", h=h // p, p=p, w=w // p, q=p)


def build_tokenizer(name: str, coord_dim: int, value_dim: int, **options) -> object:
    """A tokenizer by name: ``points``, ``pointcloud``, ``projections`` (CT) or ``patches`` (views)."""
    if name == "points":
        return PointTokenizer(coord_dim, value_dim)
    if name == "pointcloud":
        return PointCloudTokenizer(coord_dim)
    if name == "projections":
        return ProjectionTokenizer(value_dim, **options)
    if name == "patches":
        return PatchTokenizer(**options)
    raise unknown_name("tokenizer", name, TOKENIZERS)


#: The tokenizer each built-in kind uses by default (its spec's ``tokenizer``, :mod:`genfield.kinds`).
DEFAULT_TOKENIZER = {kind: get_kind(kind).tokenizer for kind in KINDS}


def select_tokens(tokens: torch.Tensor, budget: int) -> torch.Tensor:
    """Keep at most ``budget`` tokens, evenly spaced over the token axis (deterministic).

    Even spacing keeps the coverage of the context (every k-th projection angle, every k-th view
    patch) and involves no random state, so the same context always gives the same representation.
    """
    n = tokens.shape[1]
    if n <= budget:
        return tokens
    index = torch.linspace(0, n - 1, budget, device=tokens.device).round().long()
    return tokens[:, index]
