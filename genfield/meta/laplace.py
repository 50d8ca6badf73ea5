r"""The linearized-Laplace predictive of a field under a diagonal Gaussian prior.

iBaML meta-learns a prior ``N(m, diag e^l)`` over the field weights and fits each signal with a
*mean-field* posterior ``q = N(mu, diag e^rho)``. A mean-field posterior is what makes the implicit
meta-gradient cheap, but it is a poor predictive: its variances contract by the *summed* data
curvature of each weight, ``e^{-rho} = e^{-l} + sum_n J_n^2 / sigma^2``, so when the observed
pixels are a random sample of the image it cannot tell them from the unobserved ones (measured on
16 x 16 faces: the predictive std differed by 1e-4 between them, with a sign that depended on the
seed). What tells them apart is the posterior *correlation* between weights.

This module keeps the correlations. Linearise the predictions around the adapted mean,
``y(phi) ~ y(mu) + J (phi - mu)``, keep iBaML's prior and Gaussian likelihood, and the posterior over
the weights is Gaussian with covariance (the generalized Gauss-Newton Laplace approximation;
MacKay 1992; Immer et al., "Improving predictions of Bayesian neural nets via local
linearization", AISTATS 2021):

    Sigma = (P^{-1} + J_c^T J_c / sigma^2)^{-1},        P = diag(e^l).

In function space (Woodbury) the predictive variance at queries ``*`` is the posterior variance of a
Gaussian process with the *empirical neural tangent kernel under the prior*, ``K_ab = J_a P J_b^T``:

    Var[y_*] = diag(K_**) - diag(K_*c (K_cc + sigma^2 I)^{-1} K_c*)      (+ sigma^2 for a new
                                                                          observation)

which needs one ``N_c x N_c`` Cholesky factor per signal (``N_c`` context values) and per-observation
Jacobians, never a ``P x P`` matrix. The predictive mean is ``y(mu)``, the network at the point of
linearisation (the GLM predictive). A context value's variance is at most ``sigma^2`` (before the
observation noise), so observed pixels are, by construction, the confident ones.

Jacobians are per observation (``vmap`` over observations of ``jacrev`` of one observation), so
their cost grows with ``N * P`` rather than ``N^2 * P``; queries go in chunks so memory stays
bounded. Every forward map here observes each query on its own (a pixel, a ray integral, a rendered
ray), which is what makes per-observation Jacobians exact.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from einops import rearrange
from torch.func import jacrev, vmap

from genfield.meta.tree import Tree
from genfield.profiling import accounts_suspended

#: ``observe(params {name: (S, ...)}, queries (S, N, q)) -> (S, N, c)``
Observe = Callable[[Tree, torch.Tensor], torch.Tensor]

#: Floats of per-observation Jacobian held at once (64 MiB in float32).
JACOBIAN_BUDGET = 2**24


def scaled_jacobian(
    observe: Observe, params: Tree, prior_logvar: Tree, queries: torch.Tensor
) -> torch.Tensor:
    """``J P^{1/2}``: per-observation Jacobians of ``observe`` in the weights, ``(S, N, c, P)``.

    Each row is scaled by the prior standard deviations, so ``J~ J~^T = J P J^T``."""

    def one(single: Tree, query: torch.Tensor) -> torch.Tensor:
        batched = {k: t.unsqueeze(0) for k, t in single.items()}
        return observe(batched, query[None, None])[0, 0]  # (c,)

    jac = vmap(vmap(jacrev(one), in_dims=(None, 0)), in_dims=(0, 0))(params, queries)
    scaled = [
        rearrange(jac[k] * torch.exp(0.5 * prior_logvar[k]), "s n c ... -> s n c (...)")
        for k in params
    ]
    return torch.cat(scaled, dim=-1)


def safe_cholesky(matrix: torch.Tensor, max_tries: int = 6) -> torch.Tensor:
    """Cholesky factor of a batch of symmetric positive-definite matrices, adding jitter
    (``1e-10`` up to ``1e-5`` of the mean diagonal) where rounding made one indefinite: a field far
    from its prior (large weights) gives a kernel whose entries dwarf ``sigma^2``."""
    factor, info = torch.linalg.cholesky_ex(matrix)
    scale = matrix.diagonal(dim1=-2, dim2=-1).mean(-1, keepdim=True)
    jitter = 1e-10
    for _ in range(max_tries):
        if not bool(info.any()):  # one host check per prediction, not per step
            return factor
        eye = torch.diag_embed(torch.ones_like(matrix[..., 0]))
        factor, info = torch.linalg.cholesky_ex(matrix + (jitter * scale)[..., None] * eye)
        jitter *= 10
    raise torch.linalg.LinAlgError(
        f"the context kernel is not positive definite even with {jitter / 10:.0e} x its diagonal "
        "added: the adapted field's Jacobians are not finite or the noise is zero"
    )


def _chunk_size(num_signals: int, channels: int, num_weights: int) -> int:
    return max(1, JACOBIAN_BUDGET // max(1, num_signals * channels * num_weights))


@accounts_suspended()  # torch.func refuses saved-tensor hooks (genfield.profiling.measure on CPU)
def linearized_variance(
    observe_context: Observe,
    observe_query: Observe,
    params: Tree,
    prior_logvar: Tree,
    obs_noise: torch.Tensor,
    context_queries: torch.Tensor,
    queries: torch.Tensor,
    max_context: int = 4096,
) -> torch.Tensor:
    """The epistemic predictive variance ``(S, M, c)`` at ``queries`` (module docstring).

    Args:
        observe_context: the context's forward map applied to per-signal weights.
        observe_query: the query forward map applied to per-signal weights.
        params: the adapted weights ``{name: (S, ...)}`` (the point of linearisation).
        prior_logvar: the prior log-variances ``{name: shape}`` (no signal dimension).
        obs_noise: the likelihood's noise standard deviation ``sigma``.
        context_queries: ``(S, N_c, q)`` the context observations' queries.
        queries: ``(S, M, q)`` where to predict.
        max_context: the most context values the ``N_c x N_c`` kernel holds; beyond it a fixed
            random subset of the context observations is used (the posterior then conditions on
            fewer data, so its variances can only grow: conservative, never overconfident).
    """
    params = {k: t.detach() for k, t in params.items()}
    prior_logvar = {k: t.detach() for k, t in prior_logvar.items()}
    num_signals = context_queries.shape[0]
    num_weights = sum(t[0].numel() for t in params.values())
    with torch.no_grad():
        channels = observe_query(params, queries[:, :1]).shape[-1]
    chunk = _chunk_size(num_signals, channels, num_weights)
    if context_queries.shape[1] * channels > max_context:  # a subset: wider, never narrower, intervals
        keep = max(1, max_context // channels)
        order = torch.randperm(context_queries.shape[1], generator=torch.Generator().manual_seed(0))
        context_queries = context_queries[:, order[:keep].to(context_queries.device)]

    context_rows = torch.cat(
        [
            scaled_jacobian(observe_context, params, prior_logvar, part).double().flatten(1, 2)
            for part in context_queries.split(chunk, dim=1)
        ],
        dim=1,
    )  # (S, N_c c, P)
    kernel = context_rows @ context_rows.transpose(1, 2)
    eye = torch.eye(kernel.shape[-1], dtype=kernel.dtype, device=kernel.device)
    cholesky = safe_cholesky(kernel + obs_noise.detach().double().square() * eye)

    variances = []
    for part in queries.split(chunk, dim=1):
        rows = scaled_jacobian(observe_query, params, prior_logvar, part).double()  # (S, B, c, P)
        prior_variance = rows.square().sum(-1)
        cross = rearrange(torch.einsum("sbcp,snp->snbc", rows, context_rows), "s n b c -> s n (b c)")
        whitened = torch.linalg.solve_triangular(cholesky, cross, upper=False)
        explained = rearrange(whitened.square().sum(1), "s (b c) -> s b c", c=rows.shape[2])
        variances.append((prior_variance - explained).clamp_min(0))
    dtype = next(iter(params.values())).dtype
    return torch.cat(variances, dim=1).to(dtype)
