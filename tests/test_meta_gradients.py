"""Meta-gradients against independent references on a problem small enough for dense algebra.

The field is a SIREN of hidden width 8 (33 weights) on a few pixels of a real face, in float64.
References: finite differences of the outer loss with the inner problem solved to convergence (a
few Newton steps with a dense Hessian polish the library's inner loop), exact dense solves of the
implicit linear systems with autograd's Hessians and mixed Jacobians (independent of the analytic KL
derivatives and of CG), and plain per-signal Python loops for FOMAML and Reptile.
"""

from __future__ import annotations

import pytest
import torch
from skimage.data import lfw_subset

from genfield.datasets.batch import Observations, SignalBatch
from genfield.fields import build_field, grid_coords
from genfield.forward import PointMap
from genfield.meta import build_meta_learner
from genfield.meta.likelihood import mse
from genfield.meta.tree import detached, tree_leaves, tree_unflatten

pytestmark = pytest.mark.usefixtures("float64_one_thread")


def tiny_batch(num_signals: int = 2, size: int = 5, n_context: int = 10) -> SignalBatch:
    """``num_signals`` real faces downsampled to ``size x size``; a random context of pixels."""
    faces = torch.tensor(lfw_subset()[:num_signals, ::5, ::5][:, :size, :size].copy())
    values = faces.reshape(num_signals, size * size, 1)
    coords = grid_coords((size, size)).expand(num_signals, -1, -1)
    g = torch.Generator().manual_seed(0)
    index = torch.stack([torch.randperm(size * size, generator=g)[:n_context] for _ in faces])
    context = Observations(
        torch.gather(coords, 1, index[..., None].expand(-1, -1, 2)),
        torch.gather(values, 1, index[..., None]),
    )
    return SignalBatch("image", PointMap(), context, Observations(coords.clone(), values))


def tiny_field():
    return build_field("siren", head="grey", hidden=8, n_layers=1, omega0=3.0)


def flat(tree):
    """Every tensor of a parameter tree (a dict, or a container such as iBaML's posterior), in one vector."""
    return torch.cat([t.reshape(-1) for t in tree_leaves(tree)])


def unflat(vector, like):
    """``vector`` cut into tensors shaped like ``like``'s, in its structure."""
    out, start = [], 0
    for t in tree_leaves(like):
        out.append(vector[start : start + t.numel()].reshape(t.shape))
        start += t.numel()
    return tree_unflatten(out, like)


def newton(objective, start, iterations=6):
    """Minimise ``objective(tree)`` by Newton's method with a dense Hessian (tiny problems)."""
    x = flat(start).detach()
    f = lambda vec: objective(unflat(vec, start))  # noqa: E731
    for _ in range(iterations):
        h = torch.autograd.functional.hessian(f, x, vectorize=True)
        g = torch.autograd.functional.jacobian(f, x)
        x = x - torch.linalg.solve(h, g)
    return unflat(x, start)


def cosine(a, b):
    return torch.nn.functional.cosine_similarity(a, b, dim=0).item()


def finite_differences(loss, params: dict, h: float = 1e-5):
    """Central differences of ``loss()`` in every entry of every tensor of ``params``."""
    grads = []
    for p in params.values():
        g = torch.zeros(p.numel())
        for i in range(p.numel()):
            with torch.no_grad():
                p.view(-1)[i] += h
                up = loss()
                p.view(-1)[i] -= 2 * h
                down = loss()
                p.view(-1)[i] += h
            g[i] = (up - down) / (2 * h)
        grads.append(g)
    return torch.cat(grads)


# -- MAML, FOMAML, Reptile ----------------------------------------------------------------------
def test_maml_matches_finite_differences_including_meta_sgd_rates():
    batch = tiny_batch()
    learner = build_meta_learner("maml", tiny_field(), inner_steps=3, inner_lr=0.5, meta_sgd=True)
    grads = learner.meta_gradient(batch)
    params = learner.meta_parameters()
    assert set(grads) == set(params) and any(k.startswith("inner_lr/") for k in params)
    analytic = torch.cat([grads[k].reshape(-1) for k in params])
    numeric = finite_differences(lambda: learner.outer_loss(batch).item(), params)
    assert cosine(analytic, numeric) > 0.99999
    assert torch.allclose(analytic, numeric, atol=1e-7, rtol=1e-4)


def _per_signal_sgd(field, theta, context, steps, lr):
    """A plain loop over signals: K SGD steps on one signal's context MSE at a time."""
    adapted = []
    for s in range(context.num_signals):
        phi = {k: v.detach().clone() for k, v in theta.items()}
        for _ in range(steps):
            phi = {k: v.requires_grad_() for k, v in phi.items()}
            loss = (field(phi, context.queries[s]) - context.values[s]).square().mean()
            grads = torch.autograd.grad(loss, list(phi.values()))
            phi = {k: (v - lr * g).detach() for (k, v), g in zip(phi.items(), grads)}
        adapted.append(phi)
    return adapted


@pytest.mark.parametrize("name", ["fomaml", "reptile"])
def test_first_order_estimators_match_their_definitions(name):
    batch, field = tiny_batch(3), tiny_field()
    learner = build_meta_learner(name, field, inner_steps=4, inner_lr=0.3)
    grads = learner.meta_gradient(batch)
    theta = learner.theta()
    adapted = _per_signal_sgd(field, theta, batch.context, 4, 0.3)
    for k in theta:
        if name == "reptile":  # mean_s (theta - phi_s)
            expected = torch.stack([theta[k].detach() - phi[k] for phi in adapted]).mean(0)
        else:  # mean_s grad L_tgt(phi_s), the outer loss being the mean over signals
            per_signal = []
            for s, phi in enumerate(adapted):
                phi = {j: v.requires_grad_() for j, v in phi.items()}
                tgt = (field(phi, batch.target.queries[s]) - batch.target.values[s]).square().mean()
                per_signal.append(torch.autograd.grad(tgt, phi[k])[0])
            expected = torch.stack(per_signal).mean(0)
        torch.testing.assert_close(grads[f"init/{k}"], expected, rtol=1e-9, atol=1e-12)


# -- iMAML ---------------------------------------------------------------------------------------
def _imaml_setup():
    batch = tiny_batch()
    learner = build_meta_learner(
        "imaml", tiny_field(), inner_steps=100, inner_lr=0.3, lam=0.5,
        cg_iterations=200, cg_tol=1e-10,
    )
    objective = lambda phi: learner.inner_loss(phi, batch.context, batch.forward_map).sum()  # noqa: E731
    return batch, learner, objective


def test_imaml_matches_dense_solve_and_finite_differences():
    batch, learner, objective = _imaml_setup()
    phi_star = newton(objective, learner.adapt(batch.context, batch.forward_map).params)
    grads, metrics = learner.implicit_gradient(phi_star, batch)
    assert metrics["ok"] and metrics["cg_residual"] < 1e-8
    implicit = flat(grads)

    # dense: lam (H_ctx + lam I)^-1 grad L_tgt per signal, Hessians by autograd
    dense = 0
    for s in range(batch.num_signals):
        one = {k: v[s] for k, v in phi_star.items()}
        ctx = lambda x, s=s, one=one: mse(  # noqa: E731
            learner.observe({k: t[None] for k, t in unflat(x, one).items()},
                            batch.context.queries[s : s + 1], batch.forward_map),
            batch.context.values[s : s + 1],
        ).sum()
        tgt = lambda x, s=s, one=one: mse(  # noqa: E731
            learner.observe({k: t[None] for k, t in unflat(x, one).items()},
                            batch.target.queries[s : s + 1], batch.forward_map),
            batch.target.values[s : s + 1],
        ).sum() / batch.num_signals
        x = flat(one)
        hess = torch.autograd.functional.hessian(ctx, x)
        b = torch.autograd.functional.jacobian(tgt, x)
        dense = dense + learner.lam * torch.linalg.solve(hess + learner.lam * torch.eye(len(x)), b)
    assert cosine(implicit, dense) > 0.999999
    torch.testing.assert_close(implicit, dense, rtol=1e-6, atol=1e-10)

    # finite differences of the outer loss with the inner problem solved to convergence
    theta = learner.meta_parameters()

    def outer():
        phi = newton(objective, phi_star, iterations=2)
        return mse(learner.observe(phi, batch.target.queries, batch.forward_map),
                   batch.target.values).mean().item()

    numeric = finite_differences(outer, theta)
    assert cosine(implicit, numeric) > 0.999
    torch.testing.assert_close(implicit, numeric, rtol=1e-3, atol=1e-6)


# -- iBaML ---------------------------------------------------------------------------------------
#: The exact-gradient checks below solve a fixed-noise inner problem with the full Hessian; pin the
#: settings they were written for (the defaults are checked in test_ibaml_gradient.py).
OLD_IBAML = dict(
    inner_optimizer="adam", precondition="none", curvature="hessian", learn_obs_noise=False,
    antithetic=False, inner_lr_logvar=None, logvar_step="optimizer",
)
def _ibaml_setup(num_signals=1, **options):
    batch = tiny_batch(num_signals)
    settings = dict(
        inner_steps=300, inner_lr=1e-2, prior_std=0.3, obs_noise=0.2, mc_samples=2,
        noise_seed=3, cg_iterations=300, cg_tol=1e-10, **OLD_IBAML,
    )
    learner = build_meta_learner("ibaml", tiny_field(), **{**settings, **options})
    noise = learner.draw_noise(batch.num_signals)
    free_energy = lambda v: learner.free_energy(  # noqa: E731
        v, noise, batch.context, batch.forward_map
    ).sum()
    return batch, learner, noise, free_energy


def _ibaml_dense(learner, batch, noise, v):
    """-B^T A^-1 grad_v L with A, B the autograd Hessian / mixed Jacobian of F (all signals)."""
    m, l = learner.prior()
    theta = {**{f"m/{k}": t for k, t in m.items()}, **{f"l/{k}": t for k, t in l.items()}}
    x, th = flat(v).detach(), flat(theta).detach()

    def free_energy(vec, th_vec):
        t = unflat(th_vec, theta)
        with torch.no_grad():
            for k, p in theta.items():
                p.copy_(t[k].detach())
        vt = unflat(vec, v)
        mu, rho = vt
        from genfield.meta.bayes import kl_diag_gaussians

        kl = sum(kl_diag_gaussians(mu[k], rho[k], t[f"m/{k}"], t[f"l/{k}"]).sum() for k in mu)
        return learner.expected_nll(vt, noise, batch.context, batch.forward_map).sum() + kl

    outer = lambda vec: learner.target_loss(unflat(vec, v), noise, batch.target, batch.forward_map)  # noqa: E731
    a = torch.autograd.functional.hessian(lambda vec: free_energy(vec, th), x)
    grad_v = lambda vec, th_vec: torch.autograd.grad(  # noqa: E731
        free_energy(vec, th_vec), vec, create_graph=True)[0]
    b_mixed = torch.autograd.functional.jacobian(lambda t: grad_v(x.clone().requires_grad_(), t), th)
    rhs = torch.autograd.functional.jacobian(outer, x)
    return -b_mixed.T @ torch.linalg.solve(a, rhs)


def test_ibaml_matches_dense_solve_and_finite_differences():
    batch, learner, noise, free_energy = _ibaml_setup()
    v0 = learner.adapt_posterior(batch.context, batch.forward_map, noise, learner.inner_steps)
    v_star = newton(free_energy, v0)
    grads, metrics = learner.implicit_gradient(v_star, noise, batch)
    assert metrics["ok"] and metrics["cg_residual"] < 1e-8
    names = list(learner.meta_parameters())
    implicit = torch.cat([grads[k].reshape(-1) for k in names])

    dense = _ibaml_dense(learner, batch, noise, v_star)
    assert cosine(implicit, dense) > 0.999999
    torch.testing.assert_close(implicit, dense, rtol=1e-6, atol=1e-10)

    def outer():
        v = newton(free_energy, v_star, iterations=2)
        return learner.target_loss(v, noise, batch.target, batch.forward_map).item()

    numeric = finite_differences(outer, learner.meta_parameters())
    assert cosine(implicit, numeric) > 0.999
    torch.testing.assert_close(implicit, numeric, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("noise_gradient", ["direct", "implicit"])
def test_ibaml_learned_noise_gradient_is_the_target_nll_gradient_by_default(noise_gradient):
    """``noise_gradient="direct"``: d L_target / d log sigma at the adapted posterior, nothing
    through the inner optimum; ``"implicit"`` adds the (different) cross term."""
    batch = tiny_batch()
    kwargs = dict(inner_steps=3, noise_seed=0, inner_noise="fixed", learn_obs_noise=True)
    learner = build_meta_learner("ibaml", tiny_field(), noise_gradient=noise_gradient, **kwargs)
    got = learner.meta_gradient(batch)["log_sigma"]
    noise = learner.draw_noise(batch.num_signals)
    v = learner.adapt_posterior(batch.context, batch.forward_map, noise, learner.inner_steps)
    v = detached(v)
    direct = torch.autograd.grad(
        learner.target_loss(v, noise, batch.target, batch.forward_map), learner.log_sigma
    )[0]
    if noise_gradient == "direct":
        torch.testing.assert_close(got, direct)
    else:
        assert (got - direct).abs() > 1e-3 * direct.abs()
