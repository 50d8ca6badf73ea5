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

from genfield.metrics import mse  # the one MSE: mean per signal, (S, N, c) -> (S,)

__all__ = ["gaussian_nll", "gaussian_nll_terms", "mse"]




def gaussian_nll_terms(pred: torch.Tensor, values: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """``-log N(y | pred, sigma^2)`` of each value (broadcast), ``sigma = exp(log_sigma)``: the one
    Gaussian likelihood of the package (the neural processes' :func:`~genfield.processes.likelihoods.
    gaussian_log_prob` is its negative summed over channels)."""
    z = (values - pred) * torch.exp(-log_sigma)
    return 0.5 * z.square() + log_sigma + 0.5 * math.log(2 * math.pi)


def gaussian_nll(pred: torch.Tensor, values: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """Gaussian NLL summed over observations and channels: ``(..., N, c) -> (...)``."""
    return gaussian_nll_terms(pred, values, log_sigma).flatten(-2).sum(-1)
