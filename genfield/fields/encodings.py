"""Input encodings: identity, NeRF positional encoding, Gaussian random Fourier features.

The multiresolution hash grid lives in :mod:`genfield.fields.hashgrid`. Every encoding is an
``nn.Module`` with ``in_dim``, ``out_dim`` and ``input_range`` (the coordinate range it expects; the
field maps its domain [-1, 1]^d onto it).
"""

from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn


class IdentityEncoding(nn.Module):
    """No encoding: the network sees raw coordinates (SIREN's choice)."""

    input_range = (-1.0, 1.0)

    def __init__(self, in_dim: int) -> None:
        super().__init__()
        self.in_dim = self.out_dim = in_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class PositionalEncoding(nn.Module):
    """NeRF positional encoding (Mildenhall et al. 2020, eq. 4).

    gamma(x) = (x, sin(2^0 pi x), cos(2^0 pi x), ..., sin(2^{L-1} pi x), cos(2^{L-1} pi x)),
    applied to each coordinate, with ``L = n_octaves``.
    """

    input_range = (-1.0, 1.0)

    def __init__(self, in_dim: int, n_octaves: int = 8, include_input: bool = True) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.include_input = include_input
        self.register_buffer("frequencies", math.pi * 2.0 ** torch.arange(n_octaves).float())
        self.out_dim = in_dim * (2 * n_octaves + int(include_input))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        angles = rearrange(x[..., None] * self.frequencies, "... d l -> ... (d l)")
        parts = [x] if self.include_input else []
        return torch.cat([*parts, torch.sin(angles), torch.cos(angles)], dim=-1)


class FourierFeatures(nn.Module):
    """Gaussian random Fourier features (Tancik et al. 2020): gamma(x) = (cos 2 pi B x, sin 2 pi B x).

    ``B`` has ``n_features`` rows drawn from N(0, sigma^2) with a fixed seed; it is a buffer, not a
    learned parameter, so meta-learning never adapts it.
    """

    input_range = (-1.0, 1.0)

    def __init__(
        self, in_dim: int, n_features: int = 128, sigma: float = 10.0, seed: int = 0
    ) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.in_dim = in_dim
        self.register_buffer("B", torch.randn(n_features, in_dim, generator=generator) * sigma)
        self.out_dim = 2 * n_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projected = 2 * math.pi * x @ self.B.T
        return torch.cat([torch.cos(projected), torch.sin(projected)], dim=-1)
