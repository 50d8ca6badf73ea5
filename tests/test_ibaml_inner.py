"""iBaML's inner step: the closed-form free-energy gradient against autograd of the free energy."""

from __future__ import annotations

import pytest
import torch
from test_meta_gradients import tiny_batch, tiny_field

from genfield.meta import build_meta_learner
from genfield.meta.tree import leaves, tree_leaves, tree_map, tree_unflatten

pytestmark = pytest.mark.usefixtures("float64_one_thread")


def off_prior(learner, batch, seed: int = 1):
    """A posterior away from the prior in every weight (mean and log-variance), so that the KL's and
    the reparameterisation's terms all enter the gradient."""
    v = learner.adapt_posterior(batch.context, batch.forward_map, learner.draw_noise(batch.num_signals), 2)
    g = torch.Generator().manual_seed(seed)
    return tree_map(lambda t: t + 0.3 * t.abs().mean() * torch.randn(t.shape, generator=g), v)


@pytest.mark.parametrize(
    "options",
    [
        {"mc_samples": 2, "antithetic": True, "relative_prior": True},
        {"mc_samples": 3, "antithetic": False},
        {"mc_samples": 1, "adapt_keys": "network.output_layer"},  # shared hidden weights
    ],
)
def test_closed_form_free_energy_gradient_equals_autograd(options):
    batch = tiny_batch(3)
    learner = build_meta_learner("ibaml", tiny_field(), noise_seed=0, **options)
    with torch.no_grad():  # a prior and a noise level away from their initial values
        for p in learner.prior_logvar.values():
            p.add_(torch.linspace(-1, 1, p.numel()).reshape(p.shape))
        learner.log_sigma.fill_(-1.5)
    v = off_prior(learner, batch)
    noise = learner.draw_noise(batch.num_signals)
    at = leaves(v)
    with torch.enable_grad():
        energy = learner.free_energy(at, noise, batch.context, batch.forward_map).sum()
        reference = tree_unflatten(torch.autograd.grad(energy, tree_leaves(at)), at)
    got = learner.free_energy_gradient(v, noise, batch.context, batch.forward_map)
    assert type(got) is type(v)
    for part in v._fields:  # mu, rho: the same tensors, in the same order
        assert list(getattr(got, part)) == list(getattr(v, part))
        for k, t in getattr(got, part).items():
            assert not t.requires_grad
            expected = getattr(reference, part)[k]
            torch.testing.assert_close(t, expected, rtol=1e-10, atol=1e-12, msg=f"{part} {k}")


@pytest.mark.parametrize("seed", [None, 0])
def test_inner_loop_is_the_same_with_either_gradient(seed):
    """K fresh-noise inner steps (global generator, or seeded: one draw reused) give the same
    posterior whether the gradient is in closed form or by autograd."""
    batch = tiny_batch(2)
    field = tiny_field()
    results = []
    for inner_gradient in ("closed_form", "autograd"):
        learner = build_meta_learner("ibaml", field, noise_seed=seed, inner_gradient=inner_gradient)
        torch.manual_seed(3)
        results.append(learner.adapt_posterior(batch.context, batch.forward_map, None, 6))
    start = learner.adapt_posterior(batch.context, batch.forward_map, None, 0)  # the prior
    moved = tree_map(lambda a, b: (a - b).abs().sum(), results[0], start)
    assert sum(tree_leaves(moved)) > 0  # the steps moved
    for a, b in zip(tree_leaves(results[0]), tree_leaves(results[1]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
