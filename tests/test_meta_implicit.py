"""The shared implicit solver (genfield.meta.implicit) against dense algebra, iMAML through it against
the solver it replaced, iBaML's typed containers and options, and checkpoints of the previous format.

References: a quadratic bilevel problem whose inner solution is ``torch.linalg.solve`` and whose
meta-gradient is autograd through that dense solve; CG's finite termination (``k`` distinct
eigenvalues, ``k`` steps); iMAML's previous meta-gradient code, kept below as written.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_meta_gradients import newton, tiny_batch, tiny_field

from genfield.checkpoint import OPTIONAL_BUFFERS, load_checkpoint, read_checkpoint_metadata
from genfield.errors import InputError
from genfield.fields import build_field
from genfield.meta import build_meta_learner
from genfield.meta.bayes import Posterior
from genfield.meta.cg import conjugate_gradient, gauss_newton_hvp
from genfield.meta.ibaml import IBaML
from genfield.meta.ibaml_config import IBaMLConfig
from genfield.meta.implicit import implicit_gradient, stationarity_of
from genfield.meta.likelihood import mse
from genfield.meta.tree import leaves, tree_dot, tree_leaves, tree_unflatten

pytestmark = pytest.mark.usefixtures("float64_one_thread")

CHECKPOINTS = Path(__file__).parent / "data" / "checkpoints"


# -- a quadratic bilevel problem -----------------------------------------------------------------
def _quadratic(S=3, seed=0):
    """Per signal ``F_s(v) = 1/2 v^T (H_s + diag d_s) v - v^T (theta + W c_s)``, ``v`` a posterior-
    shaped container of 3 + 4 numbers; outer ``L = sum_s 1/2 ||v*_s - y_s||^2 + ||W||^2``."""
    g = torch.Generator().manual_seed(seed)
    n = 7
    q = torch.randn(S, n, n, generator=g)
    hessian = q @ q.transpose(1, 2) / n
    diagonal = 0.5 + torch.rand(S, n, generator=g)
    theta = torch.randn(n, generator=g, requires_grad=True)
    weight = torch.randn(n, 2, generator=g, requires_grad=True)
    c = torch.randn(S, 2, generator=g)
    y = torch.randn(S, n, generator=g)
    return hessian, diagonal, theta, weight, c, y


def _as_posterior(flat: torch.Tensor) -> Posterior:
    return Posterior({"a": flat[:, :3]}, {"b": flat[:, 3:].reshape(-1, 2, 2)})


def _as_flat(tree) -> torch.Tensor:
    return torch.cat([t.flatten(1) for t in tree_leaves(tree)], 1)


def _dense_reference(hessian, diagonal, theta, weight, c, y):
    """The meta-gradient by autograd through the dense inner solve."""
    a = hessian + torch.diag_embed(diagonal)
    rhs = theta + torch.einsum("nk,sk->sn", weight, c)
    v_star = torch.linalg.solve(a, rhs)
    outer = 0.5 * (v_star - y).square().sum() + weight.square().sum()
    return v_star.detach(), torch.autograd.grad(outer, [theta, weight])


@pytest.mark.parametrize("precondition", [False, True])
@pytest.mark.parametrize("gauss_newton_like", [False, True])
def test_shared_solver_matches_the_dense_implicit_gradient_of_a_quadratic_bilevel_problem(
    precondition, gauss_newton_like
):
    hessian, diagonal, theta, weight, c, y = _quadratic()
    v_star, (d_theta, d_weight) = _dense_reference(hessian, diagonal, theta, weight, c, y)
    point = leaves(_as_posterior(v_star))
    with torch.enable_grad():
        v = _as_flat(point)
        # the autograd part of F: the Hessian term and the W coupling; the diagonal and theta's
        # coupling (B = -I) are handed over in closed form
        f_auto = 0.5 * torch.einsum("si,sij,sj->", v, hessian, v) - torch.einsum("si,ik,sk->", v, weight, c)
        stationarity = stationarity_of(f_auto, point)
        outer = 0.5 * (v - y).square().sum() + weight.square().sum()
        b = tree_unflatten(torch.autograd.grad(outer, tree_leaves(point), retain_graph=True), point)
        direct = {"w": torch.autograd.grad(outer, weight)[0]}
    curvature = None
    if gauss_newton_like:  # the curvature as an explicit operator instead of double backward
        curvature = lambda p: _as_posterior(torch.einsum("sij,sj->si", hessian, _as_flat(p)))  # noqa: E731
    solve = implicit_gradient(
        point,
        stationarity,
        b,
        curvature=curvature,
        diagonal=_as_posterior(diagonal),
        cross={"w": weight},
        direct=direct,
        closed_form_cross=lambda x: {"theta": -_as_flat(x).sum(0)},
        iterations=50,
        tol=1e-12,
        precondition=precondition,
    )
    torch.testing.assert_close(solve.gradients["theta"], d_theta, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(solve.gradients["w"], d_weight, rtol=1e-6, atol=1e-9)
    assert bool(solve.converged) and (solve.residual < 1e-10).all()
    assert (solve.iterations <= 7).all()  # CG terminates within the dimension of each system


def test_cg_reports_each_signals_iterations_which_equal_its_count_of_distinct_eigenvalues():
    """CG from zero on ``diag(lambda)`` with ``k`` distinct eigenvalues ends after ``k`` steps."""
    eigenvalues = torch.tensor([[2.0, 2.0, 2.0, 2.0], [1.0, 3.0, 1.0, 3.0], [1.0, 2.0, 4.0, 8.0]])
    b = {"x": torch.ones(3, 4)}
    solve = conjugate_gradient(lambda p: {"x": eigenvalues * p["x"]}, b, iterations=10, tol=1e-10)
    assert solve.iterations.tolist() == [1, 2, 4]
    torch.testing.assert_close(solve.x["x"], 1 / eigenvalues)


def test_cg_early_exit_saves_the_products_and_returns_the_full_counts_solution():
    """Once every residual is below tol the loop ends: the same solution, fewer products."""
    torch.manual_seed(0)
    q = torch.linalg.qr(torch.randn(3, 6, 6)).Q
    spectrum = torch.tensor([1.0, 1.0, 2.0, 2.0, 5.0, 5.0]).expand(3, -1)  # 3 distinct eigenvalues
    matrices = q @ torch.diag_embed(spectrum) @ q.transpose(-1, -2)
    calls = []

    def hvp(p):
        calls.append(1)
        return {"x": torch.einsum("sij,sj->si", matrices, p["x"])}

    b = {"x": torch.randn(3, 6)}
    results = {}
    for early in (True, False):
        calls.clear()
        results[early] = conjugate_gradient(hvp, b, iterations=12, tol=1e-6, early_exit=early), len(calls)
    (early, early_calls), (full, full_calls) = results[True], results[False]
    torch.testing.assert_close(early.x["x"], full.x["x"])
    torch.testing.assert_close(early.x["x"], torch.linalg.solve(matrices, b["x"]))
    assert early.iterations.tolist() == full.iterations.tolist() == [3, 3, 3]
    assert full_calls == 12 + 1 and early_calls == 3 + 1  # + the true-residual product


# -- iMAML through the shared solver equals the code it replaced -----------------------------------
def _previous_imaml_gradient(learner, phi, batch):
    """iMAML's meta-gradient as written before the shared solver (one copy, kept as the reference)."""
    phi = leaves(phi)
    shared = {k: p for k, p in learner.meta_parameters().items() if k.startswith("shared/")}
    with torch.enable_grad():
        pred_ctx = learner.observe(phi, batch.context.queries, batch.forward_map)
        ctx = mse(pred_ctx, batch.context.values)
        grad_ctx = torch.autograd.grad(ctx.sum(), list(phi.values()), create_graph=True)
        tgt = learner.observe(phi, batch.target.queries, batch.forward_map)
        outer = mse(tgt, batch.target.values).mean()
        b = torch.autograd.grad(
            outer, [*phi.values(), *shared.values()], allow_unused=True, materialize_grads=True
        )
    b_phi = dict(zip(phi, b[: len(phi)]))
    if learner.curvature == "gauss_newton":
        ggn = gauss_newton_hvp(pred_ctx, phi, 2.0 / pred_ctx[0].numel())

    def hvp(p):
        if learner.curvature == "gauss_newton":
            hv = list(ggn(p).values())
        else:
            hv = torch.autograd.grad(grad_ctx, list(phi.values()), [p[k] for k in phi], retain_graph=True)
        return {k: h + learner.lam * p[k] for k, h in zip(phi, hv)}

    solve = conjugate_gradient(hvp, b_phi, learner.cg_iterations, learner.cg_damping, learner.cg_tol)
    grads = {f"init/{k}": learner.lam * x.sum(0) for k, x in solve.x.items()}
    if shared:
        cross = torch.autograd.grad(
            grad_ctx,
            list(shared.values()),
            [solve.x[k] for k in phi],
            allow_unused=True,
            materialize_grads=True,
        )
        grads.update({k: d - c for k, d, c in zip(shared, b[len(phi) :], cross)})
    return grads, solve.relative_residual.max()


@pytest.mark.parametrize(
    "options",
    [
        dict(curvature="hessian"),
        dict(curvature="gauss_newton", adapt_keys="network.output_layer", cg_damping=0.1),
    ],
)
def test_imaml_meta_gradient_through_the_shared_solver_equals_the_previous_one(options):
    batch = tiny_batch()
    learner = build_meta_learner(
        "imaml",
        tiny_field(),
        inner_steps=20,
        inner_lr=0.3,
        lam=0.5,
        cg_iterations=6,
        cg_tol=1e-12,
        **options,
    )
    objective = lambda phi: learner.inner_loss(phi, batch.context, batch.forward_map).sum()  # noqa: E731
    phi = newton(objective, learner.adapt(batch.context, batch.forward_map).params, iterations=3)
    got, metrics = learner.implicit_gradient(phi, batch)
    expected, residual = _previous_imaml_gradient(learner, phi, batch)
    assert set(got) == set(expected) == set(learner.meta_parameters())
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(metrics["cg_residual"], residual, rtol=1e-12, atol=0)
    assert 1 <= int(metrics["cg_iterations"]) <= 6


# -- iBaML's containers and options ---------------------------------------------------------------
def test_ibaml_posterior_is_a_container_with_the_priors_keys_and_tree_ops_see_both_fields():
    learner = build_meta_learner("ibaml", tiny_field(), inner_steps=2, noise_seed=0)
    batch = tiny_batch(2)
    v = learner.adapt_posterior(batch.context, batch.forward_map, learner.draw_noise(2), 2)
    m, l = learner.prior()
    assert isinstance(v, Posterior) and set(v.mu) == set(v.rho) == set(m) == set(l)
    expected = sum((t * t).flatten(1).sum(1) for t in [*v.mu.values(), *v.rho.values()])
    torch.testing.assert_close(tree_dot(v, v), expected)


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("prior_std", 0.0, "prior_std=0.0: need a value > 0"),
        ("mc_samples", 0, "mc_samples=0: need a value >= 1"),
        ("cg_damping", -0.1, "cg_damping=-0.1: need a value >= 0"),
        ("cg_tol", 0.0, "cg_tol=0.0: need a value > 0"),
        ("lr_scale_logvar", -1.0, "lr_scale_logvar=-1.0: need a value > 0"),
        ("inner_lr_logvar", 2.0, "inner_lr_logvar=2.0: .* must lie in \\(0, 2\\)"),
        ("curvature", "newton", "unknown curvature 'newton'; valid names: gauss_newton, hessian"),
        ("inner_optimizer", "lbfgs", "unknown inner_optimizer 'lbfgs'; valid names: adam, sgd"),
        ("inner_gradient", "numeric", "unknown inner_gradient 'numeric'; valid names: autograd, closed_form"),
        ("mean_step_cap", "yes", "mean_step_cap='yes': need true or false"),
        ("cg_early_exit", 1, "cg_early_exit=1: need true or false"),
    ],
)
def test_a_bad_ibaml_option_is_one_input_error_naming_it_and_its_valid_range(option, value, message):
    with pytest.raises(InputError, match=message):
        IBaMLConfig(**{option: value})
    with pytest.raises(InputError, match=message):
        build_meta_learner("ibaml", tiny_field(), **{option: value})


def test_ibaml_config_is_accepted_whole_and_options_override_it():
    config = IBaMLConfig(mc_samples=4, cg_iterations=7)
    learner = build_meta_learner("ibaml", tiny_field())
    assert learner.config == IBaMLConfig()
    learner = IBaML(tiny_field(), config=config, cg_iterations=9)
    assert (learner.mc_samples, learner.cg_iterations) == (4, 9)


# -- checkpoints written before the containers still load -----------------------------------------
@pytest.mark.parametrize("name", ["imaml", "ibaml"])
def test_a_checkpoint_of_the_previous_format_loads_with_its_optimizer_state(name):
    path = CHECKPOINTS / f"{name}-v1.safetensors"
    options = read_checkpoint_metadata(path)["config"]["method"]["options"]
    field = build_field("siren", head="grey", hidden=4, n_layers=1, omega0=3.0)
    learner = build_meta_learner(name, field, **options)
    optimizer = torch.optim.Adam(learner.optimizer_groups(1e-2), lr=1e-2)
    load_checkpoint(path, learner, optimizer, restore_rng=False)
    stored = load_file(str(path))
    for key, value in learner.state_dict().items():
        if key in OPTIONAL_BUFFERS:  # newer than the file: its neutral value
            assert f"model/{key}" not in stored and float(value) == 1.0
            continue
        torch.testing.assert_close(value, stored[f"model/{key}"].to(value.dtype), rtol=0, atol=0)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    assert all(optimizer.state[p]["step"] == 1 for p in params)  # every parameter's Adam moments
    grads = learner.meta_gradient(tiny_batch(2))
    assert set(grads) == set(learner.meta_parameters())


def test_ibaml_cg_early_exit_option_reaches_the_solve_and_keeps_the_gradient(monkeypatch):
    """``cg_early_exit=False`` runs every CG iteration (one curvature product each, plus the final
    residual's); the default stops once all residuals are below ``cg_tol``, with the same gradient."""
    import genfield.meta.ibaml_gradient as ibaml_gradient

    products = []
    build = ibaml_gradient.gauss_newton_hvp

    def counting(*args, **kwargs):
        hvp = build(*args, **kwargs)
        return lambda p: (products.append(1), hvp(p))[1]

    monkeypatch.setattr(ibaml_gradient, "gauss_newton_hvp", counting)
    batch = tiny_batch(2)
    results = {}
    for early in (True, False):
        learner = build_meta_learner(
            "ibaml",
            tiny_field(),
            inner_steps=3,
            noise_seed=0,
            cg_iterations=30,
            cg_tol=0.3,
            cg_early_exit=early,
        )
        products.clear()
        torch.manual_seed(0)
        results[early] = learner._outer_and_gradient(batch), len(products)
    ((early_grads, metrics), early_count), ((full_grads, _), full_count) = results[True], results[False]
    assert int(metrics["cg_iterations"]) < 30
    assert full_count == 30 + 1 and early_count == int(metrics["cg_iterations"]) + 1
    for k in full_grads:
        torch.testing.assert_close(early_grads[k], full_grads[k])
