"""Observation models: the per-signal losses the inner and outer loops minimise.

* :func:`mse` — mean squared error per signal, the loss of MAML, FOMAML, Reptile and iMAML (the
  usual choice for fitting neural fields; averaged so learning rates do not depend on ``N``).
* :func:`gaussian_nll` — the negative log-likelihood of ``y ~ N(f(x), sigma^2)``, a **sum** over
  observations and channels,

  .. math::  \\mathrm{NLL}(\\phi) = \\sum_n \\frac{(y_n - \\hat y_n(\\phi))^2}{2\\sigma^2}
             + \\log\\sigma + \\tfrac12 \\log 2\\pi ,

  so that, in iBaML, more context observations weigh proportionally more against the prior (the
  Bayesian balance). ``sigma`` is ``exp(log_sigma)``: fixed (a buffer) or learned (a meta-parameter).
"""

from __future__ import annotations

import math

import torch


def mse(pred: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """Mean squared error of each signal: ``(S, N, c) -> (S,)``."""
    return (pred - values).square().flatten(1).mean(1)


def gaussian_nll(pred: torch.Tensor, values: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian NLL summed over observations and channels: ``(..., N, c) -> (...)``."""
    z = (values - pred) * torch.exp(-log_sigma)
    per_value = 0.5 * z.square() + log_sigma + 0.5 * math.log(2 * math.pi)
    return per_value.flatten(-2).sum(-1)
