"""Conditioners: how an encoded context changes the shared decoder field (one part per scheme).

A conditioner turns the raw context tokens (and latent draws ``z``) into a :class:`Conditioning`,
and, at decoding time, into the decoder's modulations at the query points.

* :class:`ModulationConditioner` (``"shift"`` / ``"film"``): a linear map of the representation
  modulates every hidden pre-activation of the decoder, ``z_l + beta_l`` or
  ``(1 + gamma_l) z_l + beta_l`` (Functa; pi-GAN's FiLM). The representation is the global code
  ``[r, z]``, joined per point by the cross-attention output (ANP) and the local features read at
  the point: a grid of features of the context through the adjoint of its forward map (the
  measurement-consistent analogue of pixelNeRF's projection into the context views; for CT the
  per-view back-projections, :mod:`genfield.processes.local`), read bilinearly.
* :class:`WeightTokenConditioner` (``"weights"``): TransINR's weight tokens. Learned tokens go
  through the transformer with the data tokens; output token ``t_o`` rescales row ``o`` of a base
  weight matrix of the decoder, ``W_s[o] = ||W[o]|| normalize(W[o] * head(t_o))``, per signal. The
  decoder field names the matrices (:attr:`~genfield.fields.field.Field.hidden_weight_names`).

Each conditioner checks the process options it needs (:meth:`check`) and names the modulation the
decoder is built with (``decoder_modulation``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn

from genfield.datasets.batch import Observations
from genfield.errors import InputError
from genfield.fields.field import Field, Params
from genfield.forward import ForwardMap
from genfield.processes.encoders import MLP, CrossAttention
from genfield.processes.local import build_local_features, sample_grid

if TYPE_CHECKING:
    from genfield.processes.config import ProcessConfig


@dataclass
class Conditioning:
    """One draw of everything the decoder is conditioned on, for ``B = K * S`` signal draws."""

    params: Params  # decoder parameters; entries with a leading B are per draw
    code: torch.Tensor | None = None  # (B, d_code) global representation [r, z]
    tokens: torch.Tensor | None = None  # (B, T, width) encoded context, for cross-attention
    local: torch.Tensor | None = None  # (B, width, R, R) local feature grid (local_features)


class ModulationConditioner(nn.Module):
    """Shift or FiLM modulations of the decoder from ``[r, z]``, cross-attention and local features."""

    #: ``conditioning`` options served, and the modulation the decoder is built with for each.
    decoder_modulation: ClassVar[dict[str, str]] = {"shift": "shift", "film": "film"}

    def __init__(
        self, decoder: Field, config: ProcessConfig, kind: str, in_dim: int, obs_channels: int
    ) -> None:
        super().__init__()
        width = config.width
        self.pooled = config.deterministic and not config.attention  # r joins the global code
        cross = CrossAttention(in_dim, width, config.heads) if config.attention else None
        local = (
            build_local_features(kind, obs_channels, width, **config.local_options)
            if config.local_features
            else None
        )
        # registered even when absent (None), so ``process.cross`` and ``process.local`` always exist
        self.add_module("cross", cross)
        self.add_module("local", local)
        self.code_dim = (width if self.pooled else 0) + config.latent_dim
        point_dim = (width if config.attention else 0) + (width if config.local_features else 0)
        self.shape = decoder.modulation_shape
        n_layers, m = self.shape
        self.to_modulation = nn.Linear(self.code_dim + point_dim, n_layers * m)
        nn.init.zeros_(self.to_modulation.weight)  # start at the base field
        nn.init.zeros_(self.to_modulation.bias)

    @staticmethod
    def check(config: ProcessConfig) -> None:
        """Every encoder, latent path and per-point part works with modulations."""

    def condition(
        self,
        encoder: nn.Module,
        raw: torch.Tensor,
        context: Observations,
        z: torch.Tensor | None,
        forward_map: ForwardMap | None,
        params: Params,
    ) -> Conditioning:
        """The global code ``[r, z]`` ``(K S, d)``, the tokens for cross-attention and the local grid."""
        k = 1 if z is None else z.shape[0]
        encoded = encoder.tokens(raw)
        parts = []
        if self.pooled:
            parts.append(repeat(encoded.mean(dim=-2), "s w -> (k s) w", k=k))
        if z is not None:
            parts.append(rearrange(z, "k s d -> (k s) d"))
        code = torch.cat(parts, dim=-1) if parts else None
        tokens = repeat(encoded, "s t w -> (k s) t w", k=k) if self.cross is not None else None
        local = None
        if self.local is not None:
            local = repeat(self.local(context, forward_map), "s ... -> (k s) ...", k=k)
        return Conditioning(params, code, tokens, local)

    def modulations(self, cond: Conditioning, points: torch.Tensor) -> torch.Tensor:
        """Per draw ``(B, L, m)``, or per point ``(B, P, L, m)`` at ``points`` ``(B, P, d)``."""
        if self.cross is None and cond.local is None:
            return self.to_modulation(cond.code).unflatten(-1, self.shape)
        parts = []
        if cond.code is not None:
            parts.append(repeat(cond.code, "b d -> b p d", p=points.shape[1]))
        if self.cross is not None:
            parts.append(self.cross(points, cond.tokens))  # (B, P, width)
        if cond.local is not None:
            parts.append(sample_grid(cond.local, points))  # (B, P, width) local features at the points
        return self.to_modulation(torch.cat(parts, dim=-1)).unflatten(-1, self.shape)


class WeightTokenConditioner(nn.Module):
    """TransINR: per-signal rows of chosen decoder weight matrices from learned weight tokens."""

    #: ``conditioning`` options served, and the modulation the decoder is built with for each.
    decoder_modulation: ClassVar[dict[str, str]] = {"weights": "none"}

    def __init__(
        self, decoder: Field, config: ProcessConfig, kind: str, in_dim: int, obs_channels: int
    ) -> None:
        super().__init__()
        names = decoder.hidden_weight_names
        chosen = sorted({i % len(names) for i in config.weight_layers})
        self.weight_names = [names[i] for i in chosen]
        shapes = [decoder.module.get_parameter(name).shape for name in self.weight_names]
        self.weight_rows = [rows for rows, _ in shapes]
        self.weight_tokens = nn.Parameter(torch.randn(sum(self.weight_rows), config.width) * 0.02)
        self.weight_heads = nn.ModuleList(
            MLP(config.width, config.width, n_in, depth=2) for _, n_in in shapes
        )

    @staticmethod
    def check(config: ProcessConfig) -> None:
        """Weight tokens need the transformer (they are tokens) and no latent path or per-point part."""
        if config.encoder != "transformer" or config.latent_dim:
            raise InputError("process conditioning 'weights' needs encoder 'transformer' and latent_dim 0")
        if config.attention:
            raise InputError("process attention needs conditioning 'shift' or 'film'")
        if config.local_features:
            raise InputError("process local_features needs conditioning 'shift' or 'film'")

    def condition(
        self,
        encoder: nn.Module,
        raw: torch.Tensor,
        context: Observations,
        z: torch.Tensor | None,
        forward_map: ForwardMap | None,
        params: Params,
    ) -> Conditioning:
        """The decoder's parameters with the chosen weight matrices per draw ``(K S, rows, in)``."""
        k = 1 if z is None else z.shape[0]
        extra = repeat(self.weight_tokens, "t w -> s t w", s=raw.shape[0])
        out = encoder.tokens(raw, extra)[:, -extra.shape[1] :]
        per_signal = {}
        for name, head, part in zip(self.weight_names, self.weight_heads, out.split(self.weight_rows, dim=1)):
            base = params[name]  # (rows, in)
            modulated = F.normalize(base * head(part), dim=-1) * base.norm(dim=-1, keepdim=True)
            per_signal[name] = repeat(modulated, "s ... -> (k s) ...", k=k)
        return Conditioning({**params, **per_signal})

    def modulations(self, cond: Conditioning, points: torch.Tensor) -> None:
        """None: the conditioning lives in the per-draw weights."""
        return None


#: The conditioner of each ``conditioning`` option.
CONDITIONERS: dict[str, type[ModulationConditioner] | type[WeightTokenConditioner]] = {
    name: cls for cls in (ModulationConditioner, WeightTokenConditioner) for name in cls.decoder_modulation
}
