"""iBaML's mean step cap: the Gauss-Newton minimiser along the step, and a step that no longer
raises the free energy where the uncapped diagonal Newton step does."""

from __future__ import annotations

import pytest
import torch
from test_meta_gradients import tiny_batch, tiny_field

from genfield.meta import build_meta_learner
from genfield.meta.bayes import Posterior
from genfield.meta.ibaml_inner import gauss_newton_minimiser, nll_curvature_along
from genfield.meta.tree import leaves, tree_leaves, tree_map, tree_unflatten

pytestmark = pytest.mark.usefixtures("float64_one_thread")


def off_prior(learner, batch, seed: int = 1) -> Posterior:
    """A posterior away from the prior in every mean and log-variance."""
    v = learner.adapt_posterior(batch.context, batch.forward_map, learner.draw_noise(batch.num_signals), 2)
    g = torch.Generator().manual_seed(seed)
    return tree_map(lambda t: t + 0.3 * t.abs().mean() * torch.randn(t.shape, generator=g), v)


def test_step_length_is_the_minimiser_of_the_dense_gauss_newton_model_along_the_step():
    batch = tiny_batch(2)
    learner = build_meta_learner("ibaml", tiny_field(), noise_seed=0, mc_samples=2, obs_noise=0.3)
    with torch.no_grad():  # per-weight prior variances, so that the KL's curvature is not a multiple of I
        for p in learner.prior_logvar.values():
            p.add_(torch.linspace(-1, 1, p.numel()).reshape(p.shape))
    v = off_prior(learner, batch)
    noise = learner.draw_noise(2)
    ctx, fm = batch.context, batch.forward_map
    at = leaves(v)
    with torch.enable_grad():  # the gradient by autograd of F, not the closed form the inner loop takes
        energy = learner.free_energy(at, noise, ctx, fm).sum()
        grads = tree_unflatten(torch.autograd.grad(energy, tree_leaves(at)), at)
    g = torch.Generator().manual_seed(5)  # a direction that is not the gradient
    step = {
        k: torch.exp(v.rho[k]) * t + 1e-3 * torch.randn(t.shape, generator=g) for k, t in grads.mu.items()
    }
    logvar = learner.prior().detached().logvar
    ours = gauss_newton_minimiser(
        grads.mu, step, nll_curvature_along(learner, v, noise, step, ctx, fm), logvar
    )

    names = list(v.mu)
    sigma2 = float(learner.obs_noise.detach()) ** 2
    expected = []
    for s in range(2):
        shapes = [v.mu[k][s].shape for k in names]
        sizes = [v.mu[k][s].numel() for k in names]

        def predictions(flat_mu, s=s, shapes=shapes, sizes=sizes):
            parts = dict(zip(names, (t.reshape(shape) for t, shape in zip(flat_mu.split(sizes), shapes))))
            mu = {k: torch.cat([v.mu[k][:s], parts[k][None], v.mu[k][s + 1 :]]) for k in names}
            pred = learner.sample_observations(Posterior(mu, v.rho), noise, ctx.queries, fm)
            return pred[:, s].reshape(pred.shape[0], -1)  # (M, N c): signal s's draws

        flat = torch.cat([v.mu[k][s].reshape(-1) for k in names])
        jac = torch.autograd.functional.jacobian(predictions, flat)  # (M, N c, P)
        gauss_newton = torch.einsum("mnp,mnq->pq", jac, jac) / (jac.shape[0] * sigma2)
        curvature = gauss_newton + torch.diag(torch.cat([torch.exp(-logvar[k]).reshape(-1) for k in names]))
        d = torch.cat([step[k][s].reshape(-1) for k in names])
        grad = torch.cat([grads.mu[k][s].reshape(-1) for k in names])
        expected.append(grad @ d / (d @ curvature @ d))
    torch.testing.assert_close(ours, torch.stack(expected), rtol=1e-9, atol=0)
    assert (ours > 0).all() and (ours != 1).all()


def one_step_energy(cap: bool, inner_lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``F`` per signal at the prior and after the mean's part of one inner step (fixed noise: one
    deterministic ``F``; the log-variance kept at the prior's, as the cap only shortens the mean's
    step, and the first fixed-point step of ``rho`` from one draw may raise ``F`` by itself)."""
    batch = tiny_batch(3)
    learner = build_meta_learner(
        "ibaml", tiny_field(), noise_seed=0, inner_lr=inner_lr, mean_step_cap=cap, prior_std=0.3,
        obs_noise=0.05,
    )
    noise = learner.draw_noise(3)
    ctx, fm = batch.context, batch.forward_map
    start = learner.prior().detached().posterior(3)
    stepped = Posterior(learner.adapt_posterior(ctx, fm, noise, 1).mu, start.rho)
    before = learner.free_energy(start, noise, ctx, fm)
    after = learner.free_energy(stepped, noise, ctx, fm)
    return before.detach(), after.detach()


def test_capped_mean_step_does_not_raise_the_free_energy_where_the_uncapped_one_does():
    before, uncapped = one_step_energy(cap=False, inner_lr=20.0)
    assert (uncapped > before).any(), (before, uncapped)  # the case is one the cap must fix
    before, capped = one_step_energy(cap=True, inner_lr=20.0)
    assert (capped <= before).all(), (before, capped)
    assert (capped < uncapped).all()


def test_cap_leaves_short_steps_alone_and_the_explicit_path_differentiable():
    batch = tiny_batch(2)
    ctx, fm = batch.context, batch.forward_map
    runs = {}
    for cap in (False, True):
        learner = build_meta_learner("ibaml", tiny_field(), noise_seed=0, inner_lr=1e-3, mean_step_cap=cap)
        noise = learner.draw_noise(2)
        runs[cap] = learner.adapt_posterior(ctx, fm, noise, 3)
    for a, b in zip(tree_leaves(runs[False]), tree_leaves(runs[True]), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)  # min(1, t*) = 1: the same steps

    learner = build_meta_learner("ibaml", tiny_field(), noise_seed=0, inner_lr=20.0)
    noise = learner.draw_noise(2)
    v = learner.adapt_posterior(ctx, fm, noise, 3, create_graph=True)
    first_order = learner.adapt_posterior(ctx, fm, noise, 3)
    for a, b in zip(tree_leaves(v), tree_leaves(first_order), strict=True):
        torch.testing.assert_close(a.detach(), b, rtol=1e-9, atol=1e-12)
    loss = learner.target_loss(v, noise, batch.target, fm)
    grads = torch.autograd.grad(loss, list(learner.prior_mean.values()))
    assert all(torch.isfinite(t).all() and t.abs().sum() > 0 for t in grads)


def test_the_step_cap_reads_the_first_draw_of_each_antithetic_pair():
    from genfield.meta.ibaml_inner import first_of_pairs

    learner = build_meta_learner("ibaml", tiny_field(), noise_seed=0, mc_samples=4, antithetic=True)
    noise = learner.draw_noise(3)
    half = first_of_pairs(noise, antithetic=True)
    for name, eps in noise.items():
        assert half[name].shape[0] == 2
        torch.testing.assert_close(torch.cat([half[name], -half[name]]), eps)  # the pairs draw_noise made
    odd = {k: t[:3] for k, t in noise.items()}
    assert first_of_pairs(odd, antithetic=True) is odd and first_of_pairs(noise, antithetic=False) is noise
