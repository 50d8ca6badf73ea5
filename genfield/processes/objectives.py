"""Training objectives of the neural processes, as pure functions of log-likelihoods and latents.

Every function returns the objective per signal ``(S,)`` (to be maximised); the process divides its
negated mean by the number of target observations ``N``. With ``data_k = log p(y_T | z_k, C)``
(the sum over the ``N`` targets) for ``K`` draws:

* :func:`conditional_log_likelihood`: deterministic models (CNP, ``latent_dim = 0``),
  ``log p(y_T | C)``;
* :func:`elbo`: ``1/K sum_k data_k - KL(q(z|C,T) || q(z|C))``, ``z_k ~ q(z|C,T)`` reparameterised
  (Garnelo et al. 2018b; Le et al. 2018);
* :func:`importance_marginal_likelihood`: ``log 1/K sum_k p(y_T | z_k, C) q(z_k|C) / q(z_k|C,T)``
  with ``z_k ~ q(z|C,T)``, an importance-sampled marginal likelihood (``proposal="posterior"``);
* :func:`prior_marginal_likelihood`: NPML's ``log 1/K sum_k p(y_T | z_k, C)`` with ``z_k ~ q(z|C)``
  (Foong et al. 2020; ``proposal="prior"``).

:func:`latent_objective` picks one of the last three by the process options.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.distributions import Distribution, kl_divergence

#: ``(data (K, S), z (K, S, dz), prior, posterior) -> objective (S,)``.
LatentObjective = Callable[[torch.Tensor, torch.Tensor, Distribution, Distribution], torch.Tensor]


def log_mean_exp(values: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``log 1/K sum_k exp(values_k)`` along ``dim``, stably (``K`` the size of ``dim``)."""
    return torch.logsumexp(values, dim) - math.log(values.shape[dim])


def conditional_log_likelihood(log_prob: torch.Tensor) -> torch.Tensor:
    """``log p(y_T | C)`` per signal from per-observation terms ``(..., S, N)``: ``(..., S)``."""
    return log_prob.sum(-1)


def elbo(data: torch.Tensor, z: torch.Tensor, prior: Distribution, posterior: Distribution) -> torch.Tensor:
    """``E_q[log p(y_T | z, C)] - KL(q(z|C,T) || q(z|C))``, the expectation as the mean over draws."""
    return data.mean(0) - kl_divergence(posterior, prior)


def importance_marginal_likelihood(
    data: torch.Tensor, z: torch.Tensor, prior: Distribution, posterior: Distribution
) -> torch.Tensor:
    """``log 1/K sum_k p(y_T | z_k) q(z_k|C) / q(z_k|C,T)`` for draws ``z_k`` of the posterior."""
    return log_mean_exp(data + (prior.log_prob(z) - posterior.log_prob(z)))


def prior_marginal_likelihood(
    data: torch.Tensor, z: torch.Tensor, prior: Distribution, posterior: Distribution
) -> torch.Tensor:
    """``log 1/K sum_k p(y_T | z_k)`` for draws ``z_k`` of the prior (unit importance weights)."""
    return log_mean_exp(data)


def latent_objective(objective: str, proposal: str) -> tuple[LatentObjective, str]:
    """The objective of a latent model and the distribution its draws come from (``"prior"`` or
    ``"posterior"``), for the options ``objective`` (``"elbo"``, ``"ml"``) and ``proposal``."""
    if objective == "elbo":
        return elbo, "posterior"
    if proposal == "prior":
        return prior_marginal_likelihood, "prior"
    return importance_marginal_likelihood, "posterior"
