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
from test_meta_gradients import cosine, finite_differences, flat, newton, tiny_batch, tiny_field, unflat

from genfield.comparison import load_group
from genfield.fields import build_field
from genfield.kinds import options_for_kind
from genfield.meta import build_meta_learner
from genfield.meta.likelihood import gaussian_nll
from genfield.meta.tree import leaves, tree_leaves

pytestmark = pytest.mark.usefixtures("float64_one_thread")


def default_ibaml(field=None, kind=None, **overrides):
    """An iBaML learner with the shipped top-level options, or with ``by_kind[kind]`` merged over them."""
    options = dict(load_group("method", "ibaml")["options"])
    options = options_for_kind(options, kind, "meta-learner") if kind else options
    options.pop("by_kind", None)
    field = tiny_field() if field is None else field
    return build_meta_learner("ibaml", field, **{**options, "noise_seed": 0, **overrides})


def converged_gradient(learner, batch, names):
    """Central differences of the outer loss at the inner optimum, in the meta-parameters ``names``."""
    noise = learner.draw_noise(batch.num_signals)

    def free_energy(v):
        return learner.free_energy(v, noise, batch.context, batch.forward_map).sum()

    start = learner.adapt_posterior(batch.context, batch.forward_map, noise, 200)
    v_star = newton(free_energy, start, iterations=8)
    with torch.enable_grad():
        at = leaves(v_star)
        stationarity = torch.autograd.grad(free_energy(at), tree_leaves(at))
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


@pytest.mark.parametrize("kind", [None, "image"])
def test_default_meta_gradient_matches_the_converged_bilevel_gradient_in_every_block(kind):
    """The shipped top-level options, and what images train with (``by_kind.image``: its noise,
    outer objective and steps on the mean)."""
    batch = tiny_batch(2)
    learner = default_ibaml(kind=kind)
    got = learner.meta_gradient(batch)
    assert learner.last_metrics["skipped"] == 0
    for block, names in blocks(learner).items():
        numeric = converged_gradient(learner, batch, names)
        implicit = torch.cat([got[k].reshape(-1) for k in names])
        assert cosine(implicit, numeric) >= 0.99, block


def test_mean_outer_objective_gradient_matches_the_converged_bilevel_gradient_in_every_block():
    """``outer_objective="mean"`` scores the target NLL at ``mu`` alone: the right-hand side has no
    rho block, yet ``l`` still moves ``mu*`` through the inner optimum's mu-rho coupling."""
    batch = tiny_batch(2)
    learner = default_ibaml(outer_objective="mean")
    noise = learner.draw_noise(batch.num_signals)
    v = learner.adapt_posterior(batch.context, batch.forward_map, noise, learner.inner_steps)
    target = batch.target
    at_mean = gaussian_nll(
        learner.observe(v.mu, target.queries, batch.forward_map), target.values, learner.log_sigma
    )
    torch.testing.assert_close(
        learner.target_loss(v, noise, target, batch.forward_map),
        at_mean.mean() / target.values[0].numel(),
    )
    got = learner.meta_gradient(batch)
    assert learner.last_metrics["skipped"] == 0
    for block, names in blocks(learner).items():
        numeric = converged_gradient(learner, batch, names)
        assert numeric.abs().max() > 0, block
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
    assert (flat(v.rho) - flat(v_star.rho)).abs().max() < 1e-2


def test_default_curvature_is_the_hessian_where_observations_are_linear_in_the_weights():
    """Only the output layer adapted, no output activation: observations are linear in the adapted
    weights, so Gauss-Newton in the weights is the NLL's Hessian, and the default curvature
    (Gauss-Newton plus the reparameterisation's own rho-rho term) must equal autograd's dense Hessian
    of ``F`` in ``v``. The prior is wide (data-dominated), where that term is half of the rho-rho
    block; the point is the inner optimum, where the term's floor cannot bind."""
    batch = tiny_batch(2)
    linear_head = build_field("siren", head="sdf", hidden=8, n_layers=1, omega0=3.0)  # identity head
    options = dict(field=linear_head, adapt_keys="network.output_layer", prior_std=0.3, learn_obs_noise=False)
    learner = default_ibaml(**options)
    noise = learner.draw_noise(batch.num_signals)
    free_energy = lambda t: learner.free_energy(t, noise, batch.context, batch.forward_map).sum()  # noqa: E731
    # At the optimum (found by small Adam steps and Newton), where the term is 1/4 (1 - e^{rho - l}).
    solver = default_ibaml(
        **options, logvar_step="optimizer", inner_optimizer="adam", precondition="none", inner_lr=1e-2
    )
    v = solver.adapt_posterior(batch.context, batch.forward_map, noise, 300)
    v = leaves(newton(free_energy, v, iterations=8))
    with torch.enable_grad():
        pred = learner.sample_observations(v, noise, batch.context.queries, batch.forward_map)
        nll = gaussian_nll(pred, batch.context.values, learner.log_sigma).mean(0).sum()
        grad_nll = torch.autograd.grad(nll, tree_leaves(v), create_graph=True)
        hvp, diagonal = learner.curvature_operator(v, pred, grad_nll)
        columns = [flat(hvp(unflat(e, v))) for e in torch.eye(len(flat(v)))]
    _, l = learner.prior()
    for k, rho in v.rho.items():  # the floor of rho_curvature is not what makes the two agree
        assert (diagonal.rho[k] > 0.25 * torch.exp(rho - l[k].detach()) + 1e-6).all()
    dense = torch.autograd.functional.hessian(lambda x: free_energy(unflat(x, v)), flat(v).detach())
    torch.testing.assert_close(torch.stack(columns, 1), dense, rtol=1e-8, atol=1e-10)
