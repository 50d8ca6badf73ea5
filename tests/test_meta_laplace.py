"""iBaML's linearized-Laplace predictive against a dense parameter-space computation.

The module computes the predictive variance in function space (Woodbury, an ``N_c x N_c`` Cholesky,
per-observation Jacobians in chunks); the reference here builds the full Jacobian of a flat weight
vector with ``torch.autograd.functional.jacobian`` and inverts the ``P x P`` posterior precision
``P^{-1} + J_c^T J_c / sigma^2`` directly — two different routes to the same numbers."""

from __future__ import annotations

import math

import pytest
import torch

from genfield.datasets.batch import Observations
from genfield.fields import build_field, grid_coords
from genfield.forward import PointMap
from genfield.forward.ct import ParallelBeamProjection, ct_queries
from genfield.meta import build_meta_learner, laplace
from genfield.meta.laplace import linearized_variance


def tiny_problem(forward_map, context_queries, seed=0):
    torch.manual_seed(seed)
    field = build_field("siren", head="grey", hidden=6, n_layers=1)
    base = {k: v.double() for k, v in field.init(seed).items()}
    signals = 2
    params = {k: v + 0.1 * torch.randn(signals, *v.shape, dtype=v.dtype) for k, v in base.items()}
    prior_logvar = {k: torch.randn_like(v) - 2.0 for k, v in base.items()}

    def observe(map_):
        return lambda p, q: map_(field.bind(p), q)

    queries = grid_coords((3, 3)).double().expand(signals, -1, -1)
    return field, params, prior_logvar, observe(forward_map), observe(PointMap()), context_queries, queries


def dense_variance(field, params, prior_logvar, context_map, context_queries, queries, sigma):
    """Parameter space: Sigma = (P^-1 + J_c^T J_c / sigma^2)^-1, Var = diag(J_* Sigma J_*^T)."""
    names = list(params)
    shapes = [params[k].shape[1:] for k in names]
    sizes = [math.prod(s) for s in shapes]
    log_p = torch.cat([prior_logvar[k].flatten() for k in names])
    out = []
    for s in range(context_queries.shape[0]):
        flat = torch.cat([params[k][s].flatten() for k in names])

        def unflatten(vector):
            parts = vector.split(sizes)
            return {k: p.reshape(1, *shape) for k, p, shape in zip(names, parts, shapes)}

        def ctx(vector, cq=context_queries[s : s + 1]):
            return context_map(field.bind(unflatten(vector)), cq).flatten()

        def qry(vector, q=queries[s : s + 1]):
            return field(unflatten(vector), q).flatten()

        jc = torch.autograd.functional.jacobian(ctx, flat)
        jq = torch.autograd.functional.jacobian(qry, flat)
        precision = torch.diag(torch.exp(-log_p)) + jc.T @ jc / sigma**2
        covariance = torch.linalg.inv(precision)
        out.append(torch.einsum("np,pq,nq->n", jq, covariance, jq))
    return torch.stack(out)


@pytest.mark.parametrize("context", ["points", "ct"])
def test_linearized_variance_matches_dense_parameter_space_solve(context):
    if context == "points":
        forward_map = PointMap()
        context_queries = torch.rand(2, 5, 2, generator=torch.Generator().manual_seed(3)).double() * 2 - 1
    else:  # ray integrals through the projector: Jacobians of whole rays, not of points
        forward_map = ParallelBeamProjection(n_samples=8)
        angles = torch.tensor([0.3, 1.9], dtype=torch.float64)
        context_queries = ct_queries(angles, 4).double().expand(2, -1, -1)
    field, params, logvar, obs_ctx, obs_q, cq, queries = tiny_problem(forward_map, context_queries)
    sigma = torch.tensor(0.05, dtype=torch.float64)
    got = linearized_variance(obs_ctx, obs_q, params, logvar, sigma, cq, queries)[..., 0]
    want = dense_variance(field, params, logvar, forward_map, cq, queries, sigma.item())
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-10)


def test_linearized_variance_is_below_noise_at_observed_points_and_chunking_is_exact(monkeypatch):
    field, params, logvar, obs_ctx, obs_q, _, queries = tiny_problem(PointMap(), None)
    sigma = torch.tensor(0.01, dtype=torch.float64)
    observed = queries[:, :4]
    full = linearized_variance(obs_ctx, obs_q, params, logvar, sigma, observed, queries)[..., 0]
    prior_only = linearized_variance(obs_ctx, obs_q, params, logvar, torch.tensor(1e6), observed, queries)
    assert (full[:, :4] <= sigma**2 * (1 + 1e-6)).all()  # a datum pins its own prediction
    assert (full[:, 4:] > 10 * sigma**2).any()  # ... and leaves others uncertain
    assert (full <= prior_only[..., 0] + 1e-12).all()  # conditioning never adds variance
    monkeypatch.setattr(laplace, "JACOBIAN_BUDGET", 1)  # one observation per chunk
    torch.testing.assert_close(
        linearized_variance(obs_ctx, obs_q, params, logvar, sigma, observed, queries)[..., 0], full
    )
    subset = linearized_variance(obs_ctx, obs_q, params, logvar, sigma, observed, queries, max_context=2)
    assert (subset[..., 0] >= full - 1e-12).all()  # fewer data: conservative, never narrower


def test_ibaml_laplace_predictive_is_deterministic_given_the_adapted_state():
    """Both predictives read one adapted state; only the mean-field one draws Monte-Carlo noise."""
    torch.manual_seed(0)
    field = build_field("siren", head="grey", hidden=8, n_layers=1)
    learner = build_meta_learner("ibaml", field, inner_steps=2)
    coords = grid_coords((6, 6)).expand(2, -1, -1)
    values = torch.rand(2, 36, 1, generator=torch.Generator().manual_seed(0))
    state = learner.adapt(Observations(coords[:, ::4], values[:, ::4]), PointMap())
    assert learner.predictive == "laplace"
    laplace_runs = [learner.predict(state, coords, PointMap(), 8) for _ in range(2)]
    torch.testing.assert_close(laplace_runs[0].variance, laplace_runs[1].variance)
    assert laplace_runs[0].samples is None
    noise = learner.obs_noise.detach().square()  # the signal's std leaves out a new datum's noise
    torch.testing.assert_close(laplace_runs[0].noise_variance, noise)
    torch.testing.assert_close(laplace_runs[0].signal_std.square() + noise, laplace_runs[0].variance)
    mean_only = learner.predict(state, coords, PointMap(), 8, variance=False)
    assert mean_only.variance is None
    torch.testing.assert_close(mean_only.mean, laplace_runs[0].mean)
    learner.predictive = "mean_field"
    sampled = [learner.predict(state, coords, PointMap(), 8) for _ in range(2)]
    assert sampled[0].samples.shape[0] == 8
    assert not torch.equal(sampled[0].variance, sampled[1].variance)
    with pytest.raises(Exception, match="predictive"):
        build_meta_learner("ibaml", field, predictive="exact")


def test_safe_cholesky_adds_jitter_only_where_rounding_broke_definiteness():
    vectors = torch.randn(2, 5, 3, dtype=torch.float64)
    singular = vectors @ vectors.transpose(1, 2)  # rank 3 of 5: not positive definite
    factor = laplace.safe_cholesky(singular)
    assert torch.isfinite(factor).all()
    torch.testing.assert_close(factor @ factor.transpose(1, 2), singular, atol=1e-6, rtol=1e-6)
    well_posed = singular + torch.eye(5, dtype=torch.float64)
    torch.testing.assert_close(laplace.safe_cholesky(well_posed), torch.linalg.cholesky(well_posed))
    with pytest.raises(torch.linalg.LinAlgError, match="not positive definite"):
        laplace.safe_cholesky(-well_posed)


def test_laplace_predictive_runs_inside_a_cpu_memory_account():
    """``genfield compare`` measures evaluation with saved-tensor hooks, which torch.func refuses."""
    from genfield.profiling import measure

    field, params, logvar, obs_ctx, obs_q, _, queries = tiny_problem(PointMap(), None)
    sigma = torch.tensor(0.05, dtype=torch.float64)
    outside = linearized_variance(obs_ctx, obs_q, params, logvar, sigma, queries[:, :4], queries)
    with measure("cpu") as cost:
        inside = linearized_variance(obs_ctx, obs_q, params, logvar, sigma, queries[:, :4], queries)
        torch.ones(3, requires_grad=True).exp().sum().backward()  # the account still counts after
    torch.testing.assert_close(inside, outside)
    assert cost.peak_bytes > 0


def test_ibaml_adds_its_noise_only_to_queries_of_the_context_kind():
    """sigma is the noise of a projection when the context was projections: CT pixels get none."""
    torch.manual_seed(0)
    field = build_field("siren", head="attenuation", hidden=8, n_layers=1)
    learner = build_meta_learner("ibaml", field, inner_steps=1, prior_std=0.002)
    projector = ParallelBeamProjection(n_samples=8)
    queries = ct_queries(torch.tensor([0.2, 1.4]), 6).expand(2, -1, -1)
    context = Observations(queries, torch.rand(2, queries.shape[1], 1))
    state = learner.adapt(context, projector)
    pixels = grid_coords((4, 4)).expand(2, -1, -1)
    on_pixels = learner.predict(state, pixels, PointMap(), 4)
    on_rays = learner.predict(state, queries, projector, 4)
    assert on_pixels.noise_variance is None and on_rays.noise_variance is not None
    torch.testing.assert_close(on_pixels.signal_std, on_pixels.std)
