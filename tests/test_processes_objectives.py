"""The neural processes' objectives, each against a direct computation on a tiny case (float64)."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal

from genfield.processes import objectives

K, S, D = 5, 3, 4


@pytest.fixture
def case():
    """Per-draw data terms ``(K, S)``, two diagonal Gaussians over ``z`` and draws ``(K, S, D)``."""
    g = torch.Generator().manual_seed(0)
    data = -20 * torch.rand(K, S, generator=g, dtype=torch.float64)  # log-likelihoods far below 0
    mq, mp = torch.randn(2, S, D, generator=g, dtype=torch.float64)
    sq, sp = 0.2 + torch.rand(2, S, D, generator=g, dtype=torch.float64)
    posterior, prior = Independent(Normal(mq, sq), 1), Independent(Normal(mp, sp), 1)
    z = mq + sq * torch.randn(K, S, D, generator=g, dtype=torch.float64)
    return data, z, prior, posterior


def diagonal_log_density(z: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> float:
    """``log N(z | mean, diag std^2)`` of one vector, term by term."""
    return sum(
        -0.5 * math.log(2 * math.pi) - math.log(s) - 0.5 * ((x - m) / s) ** 2
        for x, m, s in zip(z.tolist(), mean.tolist(), std.tolist())
    )


def slow_log_mean_exp(values: list[float]) -> float:
    """``log(1/K sum_k exp(v_k))`` in plain floats, shifted by the maximum (exact in float64 here)."""
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values) / len(values))


def test_elbo_is_the_mean_data_term_minus_the_kl_of_the_full_covariance_gaussians(case):
    data, z, prior, posterior = case
    elbo = objectives.elbo(data, z, prior, posterior)
    for s in range(S):  # KL of the same Gaussians as full-covariance MultivariateNormals, by torch
        q = MultivariateNormal(posterior.mean[s], torch.diag(posterior.variance[s]))
        p = MultivariateNormal(prior.mean[s], torch.diag(prior.variance[s]))
        kl = torch.distributions.kl_divergence(q, p)
        torch.testing.assert_close(elbo[s], data[:, s].mean() - kl)
    assert elbo.shape == (S,)


def test_importance_marginal_likelihood_against_a_slow_loop(case):
    data, z, prior, posterior = case
    ml = objectives.importance_marginal_likelihood(data, z, prior, posterior)
    for s in range(S):
        terms = [
            float(data[k, s])
            + diagonal_log_density(z[k, s], prior.mean[s], prior.stddev[s])
            - diagonal_log_density(z[k, s], posterior.mean[s], posterior.stddev[s])
            for k in range(K)
        ]
        assert float(ml[s]) == pytest.approx(slow_log_mean_exp(terms), rel=1e-12, abs=1e-10)


def test_prior_marginal_likelihood_is_the_log_mean_of_the_likelihoods(case):
    data, z, prior, posterior = case
    ml = objectives.prior_marginal_likelihood(data, z, prior, posterior)
    for s in range(S):
        assert float(ml[s]) == pytest.approx(slow_log_mean_exp(data[:, s].tolist()), rel=1e-12)
    # a lower bound of the log of the mean likelihood is the mean log-likelihood (Jensen), strictly here
    assert (ml > data.mean(0)).all()


def test_log_mean_exp_is_stable_where_exp_underflows():
    values = torch.tensor([[-1000.0, -1001.0], [-1002.0, -1000.5]], dtype=torch.float64)
    out = objectives.log_mean_exp(values, dim=1)
    expected = [slow_log_mean_exp(row) for row in values.tolist()]
    torch.testing.assert_close(out, torch.tensor(expected, dtype=torch.float64))
    assert torch.isfinite(out).all() and torch.log(values.exp().mean(1)).isinf().all()


def test_conditional_log_likelihood_sums_the_observations():
    log_prob = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(1))
    expected = [[sum(row) for row in draw] for draw in log_prob.tolist()]
    torch.testing.assert_close(objectives.conditional_log_likelihood(log_prob), torch.tensor(expected))


@pytest.mark.parametrize(
    "objective,proposal,function,draws_from",
    [
        ("elbo", "posterior", objectives.elbo, "posterior"),
        ("elbo", "prior", objectives.elbo, "posterior"),  # the ELBO always samples the posterior
        ("ml", "posterior", objectives.importance_marginal_likelihood, "posterior"),
        ("ml", "prior", objectives.prior_marginal_likelihood, "prior"),
    ],
)
def test_latent_objective_picks_the_objective_and_its_proposal(objective, proposal, function, draws_from):
    assert objectives.latent_objective(objective, proposal) == (function, draws_from)
