"""Encoders: small composable parts that turn a set of tokens into a representation.

* :class:`MLP`: the pointwise network every other part uses.
* :class:`SetEncoder`: ``r = mean_t MLP(token_t)`` — the deterministic path of CNP (a DeepSets sum).
* :class:`TokenTransformer`: self-attention over tokens with no positional encoding, so it is
  permutation *equivariant*; mean pooling after it gives an invariant summary (ANP, PONP, TransINR).
* :class:`CrossAttention`: per query point, attention from an embedding of the point to the encoded
  context tokens (the deterministic path of the attentive NP, Kim et al. 2019).
* :class:`LatentEncoder`: a diagonal Gaussian ``q(z | tokens) = N(mu, diag sigma^2)`` from the pooled
  tokens, ``sigma = 0.1 + 0.9 sigmoid(.)`` as in Le et al. (2018) and the Neural-Process-Family.

Every part works over tokens ``(S, T, width)`` with the signal dimension first.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.distributions import Independent, Normal


class MLP(nn.Sequential):
    """``depth`` linear layers with ReLU between them (none after the last)."""

    def __init__(self, in_dim: int, width: int, out_dim: int | None = None, depth: int = 2) -> None:
        dims = [in_dim] + [width] * (depth - 1) + [out_dim or width]
        layers: list[nn.Module] = []
        for index, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            if index:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(a, b))
        super().__init__(*layers)


class SetEncoder(nn.Module):
    """DeepSets: an MLP on each token, then the mean over tokens: ``(S, T, f) -> (S, width)``."""

    def __init__(self, in_dim: int, width: int, depth: int = 3) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, width, depth=depth)

    def tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(tokens)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(tokens).mean(dim=-2)


class TokenTransformer(nn.Module):
    """An embedding then pre-norm self-attention blocks over the token set (no positions)."""

    def __init__(self, in_dim: int, width: int, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.embed = MLP(in_dim, width, depth=2)
        layer = nn.TransformerEncoderLayer(
            width, heads, dim_feedforward=2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)

    def tokens(self, tokens: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        """Encoded tokens ``(S, T, width)``; ``extra`` learned tokens ``(S, E, width)`` are appended."""
        x = self.embed(tokens)
        if extra is not None:
            x = torch.cat([x, extra], dim=-2)
        return self.norm(self.blocks(x))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.tokens(tokens).mean(dim=-2)


class CrossAttention(nn.Module):
    """Attention from query points ``(S, P, d)`` to encoded context tokens ``(S, T, width)``."""

    def __init__(self, point_dim: int, width: int, heads: int = 4) -> None:
        super().__init__()
        self.query = MLP(point_dim, width, depth=2)
        self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm = nn.LayerNorm(width)

    def forward(self, points: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Per-point representations ``(S, ..., width)`` for points ``(S, ..., d)``."""
        flat = rearrange(points, "s ... d -> s (...) d")
        q = self.query(flat)
        out, _ = self.attention(q, tokens, tokens, need_weights=False)
        out = self.norm(out + q)
        return out.reshape(*points.shape[:-1], out.shape[-1])


class LatentEncoder(nn.Module):
    """``q(z | context) = N(mu, diag sigma^2)`` from a pooled representation ``(S, width)``."""

    def __init__(self, width: int, latent_dim: int) -> None:
        super().__init__()
        self.head = MLP(width, width, 2 * latent_dim, depth=2)

    def forward(self, pooled: torch.Tensor) -> Independent:
        mu, raw = self.head(pooled).chunk(2, dim=-1)
        return Independent(Normal(mu, 0.1 + 0.9 * torch.sigmoid(raw)), 1)
