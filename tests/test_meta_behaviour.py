"""Behaviour of the estimators: explicit vs implicit Bayesian gradients as K grows, CG accuracy,
skipped meta-steps on bad numerics, refusal of second-order estimators without double backward,
option checking and partial adaptation (Functa-style latents)."""

from __future__ import annotations

import warnings

import pytest
import torch
from test_meta_gradients import OLD_IBAML, _ibaml_dense, flat, tiny_batch, tiny_field

from genfield.datasets.batch import Observations
from genfield.errors import InputError
from genfield.fields import build_field
from genfield.meta import MetaStepSkipped, build_meta_learner
from genfield.meta.tree import detached

pytestmark = pytest.mark.usefixtures("float64_one_thread")


def sgd_ibaml(**options):
    settings = {
        **OLD_IBAML,
        **dict(
            inner_optimizer="sgd", inner_lr=2e-3, inner_lr_logvar=0.5, prior_std=0.3,
            obs_noise=0.2, mc_samples=2, noise_seed=3, cg_iterations=300, cg_tol=1e-10,
        ),
    }
    return build_meta_learner("ibaml", tiny_field(), **{**settings, **options})


def test_explicit_bayesian_gradient_approaches_implicit_as_k_grows():
    batch, learner = tiny_batch(1), sgd_ibaml()
    noise = learner.draw_noise(1)
    params = learner.meta_parameters()
    errors = []
    for k in (10, 30, 100, 300):
        v = learner.adapt_posterior(batch.context, batch.forward_map, noise, k, create_graph=True)
        loss = learner.target_loss(v, noise, batch.target, batch.forward_map)
        explicit = flat(dict(zip(params, torch.autograd.grad(loss, list(params.values())))))
        grads, _ = learner.implicit_gradient(detached(v), noise, batch)
        implicit = torch.cat([grads[n].reshape(-1) for n in params])
        errors.append(((explicit - implicit).norm() / implicit.norm()).item())
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[0] > 0.1 and errors[-1] < 1e-2, errors


def test_implicit_error_falls_with_cg_iterations():
    batch, learner = tiny_batch(2), sgd_ibaml()
    noise = learner.draw_noise(2)
    v = learner.adapt_posterior(batch.context, batch.forward_map, noise, 300)
    dense = _ibaml_dense(learner, batch, noise, v)
    names = list(learner.meta_parameters())
    errors = []
    for iterations in (1, 3, 10, 30, 100):
        learner.cg_iterations = iterations
        grads, _ = learner.implicit_gradient(v, noise, batch)
        implicit = torch.cat([grads[n].reshape(-1) for n in names])
        errors.append(((implicit - dense).norm() / dense.norm()).item())
    assert errors[-1] < 1e-6 and errors[0] > 100 * errors[-1], errors
    assert all(b <= a * 1.5 for a, b in zip(errors, errors[1:])), errors  # CG: ~monotone


@pytest.mark.parametrize("name", ["imaml", "ibaml"])
def test_unconverged_cg_warns_and_skips_the_meta_step(name):
    batch = tiny_batch(2)
    learner = build_meta_learner(name, tiny_field(), inner_steps=3, cg_iterations=1, cg_tol=1e-12)
    with pytest.warns(MetaStepSkipped, match="residual"):
        metrics = learner.compute_gradients(batch)
    assert metrics["skipped"].item() == 1
    assert all(p.grad is None for p in learner.parameters())


@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "imaml", "ibaml"])
def test_non_finite_meta_gradient_never_reaches_grad(name):
    batch = tiny_batch(2)
    bad = batch.context.values.clone()
    bad[0, 0, 0] = float("nan")
    batch.context = Observations(batch.context.queries, bad)
    learner = build_meta_learner(name, tiny_field(), inner_steps=2)
    with pytest.warns(MetaStepSkipped):
        metrics = learner.compute_gradients(batch)
    assert metrics["skipped"].item() == 1
    assert all(p.grad is None for p in learner.parameters())


def test_good_step_accumulates_finite_gradients_and_reports_not_skipped():
    batch = tiny_batch(2)
    learner = build_meta_learner("ibaml", tiny_field(), inner_steps=5, cg_iterations=20, cg_tol=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error", MetaStepSkipped)
        metrics = learner.compute_gradients(batch)
    assert metrics["skipped"].item() == 0 and torch.isfinite(metrics["loss"])
    grads = [p.grad for p in learner.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0


@pytest.mark.parametrize("name", ["maml", "imaml", "ibaml"])
def test_second_order_estimators_refuse_fields_without_double_backward(name):
    field = tiny_field()
    # the tiny-cuda-nn encoding is unavailable on CPU; its capability flag is what the learner reads
    field.module.encoding.supports_double_backward = False
    with pytest.raises(InputError, match="double backward"):
        build_meta_learner(name, field)
    for first_order in ("fomaml", "reptile"):
        learner = build_meta_learner(first_order, field, inner_steps=1)
        assert learner.meta_gradient(tiny_batch(1))


def test_bad_names_and_options_are_input_errors():
    with pytest.raises(InputError, match="meta-learner"):
        build_meta_learner("protonet", tiny_field())
    with pytest.raises(InputError, match="lam"):
        build_meta_learner("maml", tiny_field(), lam=1.0)
    with pytest.raises(InputError, match="meta_sgd"):
        build_meta_learner("reptile", tiny_field(), meta_sgd=True)
    with pytest.raises(InputError, match="adapt_keys"):
        build_meta_learner("maml", tiny_field(), adapt_keys="nonexistent")


def _prior_std(learner) -> float:
    """The (uniform) initial prior standard deviation of an iBaML learner."""
    logvar = next(iter(learner.prior_logvar.values()))
    return float(logvar.detach().mul(0.5).exp().mean())


def test_by_kind_overrides_apply_to_their_kind_only():
    by_kind = {"ct": {"prior_std": 0.002, "learn_obs_noise": False}, "image": {"prior_std": 0.05}}
    ct = build_meta_learner("ibaml", tiny_field(), kind="ct", prior_std=0.01, by_kind=by_kind)
    image = build_meta_learner("ibaml", tiny_field(), kind="image", prior_std=0.01, by_kind=by_kind)
    shape = build_meta_learner("ibaml", tiny_field(), kind="shape", prior_std=0.01, by_kind=by_kind)
    assert _prior_std(ct) == pytest.approx(0.002)
    assert _prior_std(image) == pytest.approx(0.05)
    assert _prior_std(shape) == pytest.approx(0.01)
    assert "log_sigma" not in ct.meta_parameters() and "log_sigma" in image.meta_parameters()


def test_bad_by_kind_is_an_input_error():
    with pytest.raises(InputError, match="by_kind has unknown kind"):
        build_meta_learner("maml", tiny_field(), kind="ct", by_kind={"tomography": {"inner_lr": 0.1}})
    with pytest.raises(InputError, match="needs the data kind"):
        build_meta_learner("maml", tiny_field(), by_kind={"ct": {"inner_lr": 0.1}})
    with pytest.raises(InputError, match="lam"):  # options inside by_kind are checked like the rest
        build_meta_learner("maml", tiny_field(), kind="ct", by_kind={"ct": {"lam": 1.0}})


def test_ibaml_config_sets_its_ct_prior_through_build_method():
    """configs/method/ibaml.yaml's by_kind.ct reaches the learner built for CT, and only for CT."""
    from genfield.builders import build_method
    from genfield.comparison import load_group

    cfg = load_group("method", "ibaml", {"options": {"inner_steps": 1}})
    field = build_field("siren", head="attenuation", hidden=8, n_layers=1)
    ct = build_method(cfg, field, {"kind": "ct", "head": "attenuation"})
    image = build_method(cfg, field, {"kind": "image", "head": "grey"})
    ct_options = cfg["options"]["by_kind"]["ct"]
    assert _prior_std(ct) == pytest.approx(ct_options["prior_std"])
    assert _prior_std(image) == pytest.approx(cfg["options"]["prior_std"])
    assert ct.cg_iterations == ct_options["cg_iterations"] != image.cg_iterations


@pytest.mark.parametrize("name", ["maml", "imaml", "ibaml"])
def test_adapting_only_a_latent_gives_shared_weights_the_total_gradient(name):
    """Functa-style: only ``latent`` is adapted; shared weights get direct + implicit cross terms,
    checked by finite differences (inner problem run to convergence with many small steps)."""
    field = build_field("siren", head="grey", hidden=8, n_layers=1, omega0=3.0, modulation="shift",
                        latent_dim=3)
    batch = tiny_batch(2)
    options = dict(inner_steps=400, adapt_keys="latent")
    if name == "ibaml":
        options.update(OLD_IBAML)
        options.update(prior_std=0.3, obs_noise=0.2, noise_seed=1, inner_optimizer="sgd",
                       inner_lr=3e-3, inner_lr_logvar=0.3, cg_iterations=100, cg_tol=1e-10)
    elif name == "imaml":
        options.update(inner_lr=0.3, lam=0.5, cg_iterations=100, cg_tol=1e-10)
    else:
        options.update(inner_steps=3, inner_lr=0.3)
    learner = build_meta_learner(name, field, **options)
    params = {k: p for k, p in learner.meta_parameters().items() if k.startswith("shared/")}
    assert "shared/latent_to_modulation.weight" in params and not any("latent" == k[7:] for k in params)
    grads = learner.meta_gradient(batch)
    # directional derivatives along random directions (each FD needs two converged inner solves)
    g = torch.Generator().manual_seed(0)
    directions = [{k: torch.randn(p.shape, generator=g) for k, p in params.items()} for _ in range(3)]
    h, analytic, numeric = 1e-5, [], []

    def loss_at(step: float) -> float:
        with torch.no_grad():
            for k, p in params.items():
                p += step * d[k]
        value = learner.outer_loss(batch).item()
        with torch.no_grad():
            for k, p in params.items():
                p -= step * d[k]
        return value

    for d in directions:
        analytic.append(sum((grads[k] * d[k]).sum() for k in params).item())
        numeric.append((loss_at(h) - loss_at(-h)) / (2 * h))
    torch.testing.assert_close(torch.tensor(analytic), torch.tensor(numeric), rtol=2e-3, atol=1e-7)


def test_preconditioned_cg_solves_a_badly_scaled_system_that_plain_cg_does_not():
    """A diagonal spanning six decades plus a low-rank coupling (iBaML's relative prior): Jacobi
    preconditioning converges in a few iterations; the answer matches a dense solve."""
    from genfield.meta.cg import conjugate_gradient

    g = torch.Generator().manual_seed(0)
    n = 60
    diag = torch.logspace(0, 6, n)
    u = torch.randn(n, 3, generator=g)
    a = torch.diag(diag) + 10 * u @ u.T
    b = {"w": torch.randn(1, n, generator=g)}
    hvp = lambda p: {"w": p["w"] @ a}  # noqa: E731  (a is symmetric)
    plain = conjugate_gradient(hvp, b, iterations=10, tol=1e-8)
    pre = conjugate_gradient(hvp, b, iterations=10, tol=1e-8, preconditioner={"w": 1 / diag[None]})
    exact = torch.linalg.solve(a, b["w"][0])
    assert plain.relative_residual.item() > 1e-3
    assert pre.relative_residual.item() < 1e-8 and bool(pre.converged)
    torch.testing.assert_close(pre.x["w"][0], exact, rtol=1e-6, atol=1e-12)
