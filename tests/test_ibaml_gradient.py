"""iBaML's *default* meta-gradient against finite differences of the converged bilevel problem.

The inner problem is the sampled free energy ``F(v, theta)`` with the Monte-Carlo noise held fixed
(``noise_seed``: every draw of a meta-step repeats the same noise, so ``F`` is deterministic). The
reference solves it to convergence for every perturbed prior (Newton with a dense Hessian, from the
unperturbed optimum) and differences the outer loss; nothing of the library's curvature, CG or
inner steps enters it. The learner under test keeps the shipped configuration
(``configs/method/ibaml.yaml``): its inner steps, its curvature, its CG budget and tolerance.
"""

from __future__ import annotations

import pytest
import torch
from test_meta_gradients import cosine, finite_differences, flat, newton, tiny_batch, tiny_field

from genfield.comparison import load_group
from genfield.meta import build_meta_learner
from genfield.meta.ibaml import _split

pytestmark = pytest.mark.usefixtures("float64_one_thread")


def default_ibaml(**overrides):
    """An iBaML learner with the shipped image options (``by_kind`` resolved for images)."""
    options = dict(load_group("method", "ibaml")["options"])
    options.pop("by_kind", None)
    return build_meta_learner("ibaml", tiny_field(), **{**options, "noise_seed": 0, **overrides})


def converged_gradient(learner, batch, names):
    """Central differences of the outer loss at the inner optimum, in the meta-parameters ``names``."""
    noise = learner.draw_noise(batch.num_signals)

    def free_energy(v):
        return learner.free_energy(v, noise, batch.context, batch.forward_map).sum()

    start = learner.adapt_posterior(batch.context, batch.forward_map, noise, 200)
    v_star = newton(free_energy, start, iterations=8)
    with torch.enable_grad():
        leaves = {k: t.detach().requires_grad_() for k, t in v_star.items()}
        stationarity = torch.autograd.grad(free_energy(leaves), list(leaves.values()))
    assert flat(dict(enumerate(stationarity))).abs().max() < 1e-9  # the reference is converged

    def outer():
        v = newton(free_energy, v_star, iterations=3)
        return learner.target_loss(v, noise, batch.target, batch.forward_map).item()

    params = learner.meta_parameters()
    return finite_differences(outer, {k: params[k] for k in names}, h=1e-6)


def blocks(learner):
    """Meta-parameter names by block: prior mean, prior log-variance."""
    names = list(learner.meta_parameters())
    return {
        "m": [k for k in names if k.startswith("prior_mean/")],
        "l": [k for k in names if k.startswith("prior_logvar/")],
    }


def test_default_meta_gradient_matches_the_converged_bilevel_gradient_in_every_block():
    batch = tiny_batch(2)
    learner = default_ibaml()
    got = learner.meta_gradient(batch)
    assert learner.last_metrics["skipped"] == 0
    for block, names in blocks(learner).items():
        numeric = converged_gradient(learner, batch, names)
        implicit = torch.cat([got[k].reshape(-1) for k in names])
        assert cosine(implicit, numeric) >= 0.99, block


def test_implicit_noise_gradient_matches_the_converged_bilevel_gradient():
    """The learned noise: by default its gradient is the target NLL's own (``noise_gradient=
    "direct"``, tested in test_meta_gradients); the implicit one is the bilevel derivative."""
    batch = tiny_batch(2)
    learner = default_ibaml(noise_gradient="implicit")
    got = learner.meta_gradient(batch)["log_sigma"]
    numeric = converged_gradient(learner, batch, ["log_sigma"])
    torch.testing.assert_close(got.reshape(1), numeric, rtol=0.02, atol=0)


def test_default_inner_steps_reach_the_posterior_variance_fixed_point():
    """After the default number of inner steps, ``rho - l`` is within 0.01 nat of the optimum's."""
    batch = tiny_batch(2)
    learner = default_ibaml()
    noise = learner.draw_noise(batch.num_signals)
    v = learner.adapt_posterior(batch.context, batch.forward_map, noise, learner.inner_steps)
    v_star = newton(
        lambda t: learner.free_energy(t, noise, batch.context, batch.forward_map).sum(), v, iterations=8
    )
    _, rho = _split(v)
    _, rho_star = _split(v_star)
    assert (flat(rho) - flat(rho_star)).abs().max() < 1e-2
