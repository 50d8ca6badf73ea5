"""Coordinate networks: ReLU MLPs and SIRENs, optionally modulated per signal.

One class, :class:`CoordinateMLP`, covers both: ``n_layers`` hidden layers of width ``hidden``, each
``z = W h + b`` followed by an activation, then a linear output layer.

* ``activation="relu"``: PyTorch's default (Kaiming-uniform) initialisation.
* ``activation="sine"``: SIREN (Sitzmann et al. 2020). The activation is ``sin(omega_0 z)``; the first
  layer's weights are U(-1/n_in, 1/n_in) and later layers' U(-sqrt(6/n)/omega_0, sqrt(6/n)/omega_0)
  (Sec. 3.2), which keeps the pre-activations distributed as arcsine through any depth.

Modulations (Functa, Dupont et al. 2022; pi-GAN's FiLM) let a small per-signal vector change the whole
network. They act on the pre-activation of every hidden layer ``l``:

* ``"shift"``: ``z_l + beta_l`` — modulations have shape ``(..., n_layers, hidden)``;
* ``"film"``:  ``(1 + gamma_l) * z_l + beta_l`` — modulations have shape ``(..., n_layers, 2 * hidden)``
  holding ``gamma`` then ``beta``.

Modulations are either per signal, ``(n_layers, m)`` with any extra leading dimensions of the points,
or per point, with one more dimension than the hidden activations (a cross-attention decoder).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genfield.errors import unknown_name

MODULATIONS = ("none", "shift", "film")
ACTIVATIONS = ("relu", "sine")


class CoordinateMLP(nn.Module):
    """An MLP over encoded coordinates with ReLU or sine activations and optional modulations."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        hidden: int = 64,
        n_layers: int = 3,
        activation: str = "relu",
        omega0: float = 30.0,
        modulation: str = "none",
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise unknown_name("activation", activation, ACTIVATIONS)
        if modulation not in MODULATIONS:
            raise unknown_name("modulation", modulation, MODULATIONS)
        self.activation, self.omega0, self.modulation = activation, omega0, modulation
        self.hidden, self.n_layers = hidden, n_layers
        widths = [in_dim] + [hidden] * n_layers
        self.hidden_layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.output_layer = nn.Linear(hidden, out_dim)
        if activation == "sine":
            self._siren_init()

    @property
    def modulation_shape(self) -> tuple[int, int]:
        """Shape of one signal's modulations: ``(n_layers, hidden)`` or ``(n_layers, 2 hidden)``."""
        width = {"none": 0, "shift": self.hidden, "film": 2 * self.hidden}[self.modulation]
        return (self.n_layers, width)

    @torch.no_grad()
    def _siren_init(self) -> None:
        for index, layer in enumerate([*self.hidden_layers, self.output_layer]):
            fan_in = layer.weight.shape[1]
            bound = 1.0 / fan_in if index == 0 else math.sqrt(6.0 / fan_in) / self.omega0
            layer.weight.uniform_(-bound, bound)

    def _activate(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.omega0 * z) if self.activation == "sine" else torch.relu(z)

    def forward(self, h: torch.Tensor, modulations: torch.Tensor | None = None) -> torch.Tensor:
        """Map encoded points ``(..., M, in_dim)`` to raw outputs ``(..., M, out_dim)``."""
        if modulations is not None and modulations.dim() == h.dim():
            modulations = modulations.unsqueeze(-3)  # per signal: broadcast over the M points
        for index, layer in enumerate(self.hidden_layers):
            z = layer(h)
            if modulations is not None and self.modulation != "none":
                m = modulations[..., index, :]
                if self.modulation == "shift":
                    z = z + m
                else:
                    gamma, beta = m.chunk(2, dim=-1)
                    z = (1 + gamma) * z + beta
            h = self._activate(z)
        return self.output_layer(h)
