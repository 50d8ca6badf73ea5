"""Diagonal Gaussians over field weights: the iBaML prior, posterior, KL and its derivatives.

Prior ``p(phi; theta) = N(m, diag(exp(l)))`` with meta-parameters ``theta = (m, l)``; per-signal
posterior ``q(phi; v) = N(mu, diag(exp(rho)))`` with ``v = (mu, rho)`` (``rho = log s``, so variances
are positive by construction). Everything is elementwise, so each function works on a tensor of any
shape (a leading signal dimension broadcasts against the prior's).

KL, per weight, summed:

    KL(q || p) = 1/2 sum_i [ exp(rho_i - l_i) + (mu_i - m_i)^2 exp(-l_i) - 1 + l_i - rho_i ]

Its derivatives (the analytic part of iBaML's implicit gradient):

    dKL/dmu   = (mu - m) exp(-l)             dKL/drho    = 1/2 (exp(rho - l) - 1)
    d2KL/dmu2 = exp(-l)                      d2KL/drho2  = 1/2 exp(rho - l)       d2KL/dmu drho = 0
    d2KL/dmu dm = -exp(-l)                   d2KL/dmu dl = -(mu - m) exp(-l)
    d2KL/drho dm = 0                         d2KL/drho dl = -1/2 exp(rho - l)

All second derivatives are diagonal (weight ``i`` of q only meets weight ``i`` of p).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from genfield.meta.tree import Tree, detached, expand_signals


class Posterior(NamedTuple):
    """The per-signal posteriors ``q = N(mu, diag e^rho)``: ``{field parameter: (S, ...)}`` each.

    A named tuple, so a pytree: the inner loop, conjugate gradient and the implicit solver take it
    whole, and its fields (not key prefixes) say which tensor is a mean and which a log-variance.
    """

    mu: Tree
    rho: Tree


class Prior(NamedTuple):
    """The prior ``p = N(mean, diag e^logvar)``: ``{field parameter: tensor}`` each (no signal dim)."""

    mean: Tree
    logvar: Tree

    def detached(self) -> Prior:
        return Prior(detached(self.mean), detached(self.logvar))

    def posterior(self, num_signals: int) -> Posterior:
        """``q = p`` for each of ``num_signals`` signals (broadcast views): the inner loop's start."""
        return Posterior(expand_signals(self.mean, num_signals), expand_signals(self.logvar, num_signals))


def kl_diag_gaussians(
    mu: torch.Tensor, rho: torch.Tensor, m: torch.Tensor, l: torch.Tensor
) -> torch.Tensor:
    """``KL(N(mu, e^rho) || N(m, e^l))`` elementwise (sum it over weights)."""
    return 0.5 * (torch.exp(rho - l) + (mu - m).square() * torch.exp(-l) - 1 + l - rho)


def kl_curvature(
    rho: torch.Tensor, l: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonals of ``d2KL/dmu2`` and ``d2KL/drho2`` (``d2KL/dmu drho`` is zero)."""
    return torch.exp(-l).expand_as(rho), 0.5 * torch.exp(rho - l)


def kl_cross_transpose(
    x_mu: torch.Tensor,
    x_rho: torch.Tensor,
    mu: torch.Tensor,
    rho: torch.Tensor,
    m: torch.Tensor,
    l: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d2KL / dtheta dv)^T x`` for ``x = (x_mu, x_rho)``: the pair ``(w.r.t. m, w.r.t. l)``."""
    precision = torch.exp(-l)
    wrt_m = -precision * x_mu
    wrt_l = -(mu - m) * precision * x_mu - 0.5 * torch.exp(rho - l) * x_rho
    return wrt_m, wrt_l


def reparameterise(mu: torch.Tensor, rho: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Samples ``phi = mu + exp(rho / 2) * eps`` (``noise`` has extra leading sample dims)."""
    return mu + torch.exp(0.5 * rho) * noise


def rho_curvature(grad_nll_rho: torch.Tensor, kl_rho: torch.Tensor) -> torch.Tensor:
    """Diagonal of ``d2F/drho2`` beyond the Gauss-Newton term: the KL's ``kl_rho`` plus the
    reparameterisation's own second derivative.

    ``w = mu + e^{rho/2} eps`` has ``d2w/drho2 = 1/4 e^{rho/2} eps``, so the expected NLL gains
    ``1/4 e^{rho/2} eps . grad_w NLL = 1/2 dNLL/drho`` (elementwise, ``grad_nll_rho``) on the
    rho-rho diagonal. It is not a residual term: by Stein's lemma its expectation is
    ``1/4 e^{rho} diag(H)``, the same as the Gauss-Newton term's, i.e. half the block, and at
    ``dF/drho = 0`` it equals ``1/4 (1 - e^{rho - l})``. The sum is floored at half the KL's
    curvature, which keeps the implicit system positive definite away from stationarity (at a
    stationary point the sum is ``1/4 (1 + e^{rho - l})``, above the floor)."""
    return (kl_rho + 0.5 * grad_nll_rho).clamp_min(0.5 * kl_rho)
