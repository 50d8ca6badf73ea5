r"""iBaML's posterior predictive at new queries (``learner`` below: an :class:`~genfield.meta.ibaml.IBaML`).

``predictive="laplace"`` (default): the linearized-Laplace posterior under the learned prior and
noise (:mod:`genfield.meta.laplace`): mean ``y(mu)``, variance
``diag(K_** - K_*c (K_cc + sigma^2 I)^{-1} K_c*)`` with the prior's tangent kernel
``K_ab = J_a e^l J_b^T`` at the adapted mean. It keeps the posterior correlations that the mean-field
``q`` drops, so predictions are confident where the signal was observed and not elsewhere (``q``'s
variances contract by each weight's *summed* curvature and cannot tell a random sample of observed
pixels from the rest). ``predictive="mean_field"``: ``num_samples`` draws ``phi_j ~ q``, mean
``1/J sum_j y(phi_j)``, variance ``Var_j y(phi_j)``. Both add ``sigma^2`` when ``predictive_noise``
(the noise of a new observation).
"""

from __future__ import annotations

import torch

from genfield.errors import InputError
from genfield.forward import ForwardMap
from genfield.interface import Prediction
from genfield.meta.bayes import Posterior
from genfield.meta.laplace import linearized_variance
from genfield.meta.learner import AdaptedState, MetaLearner


def posterior_predictive(
    learner: MetaLearner,
    state: AdaptedState,
    queries: torch.Tensor,
    query_map: ForwardMap,
    num_samples: int,
    variance: bool = True,
) -> Prediction:
    """The predictive of ``learner`` (its ``predictive`` option) at ``queries`` through
    ``query_map``; ``variance=False`` with the Laplace predictive returns the mean alone (no
    Jacobians)."""
    if state.logvar is None:
        raise InputError("iBaML prediction needs an adapted state with posterior log-variances")
    if learner.predictive == "laplace" and state.context is not None:
        if not variance:
            with torch.no_grad():
                return Prediction(learner.observe(state.params, queries, query_map))
        return _laplace(learner, state, queries, query_map)
    with torch.no_grad():
        noise = {
            k: torch.randn(num_samples, *t.shape, dtype=t.dtype, device=t.device)
            for k, t in state.params.items()
        }
        draws = learner.sample_observations(
            Posterior(state.params, state.logvar), noise, queries, query_map
        )
        spread = draws.var(0, unbiased=False)
        return _with_noise(learner, draws.mean(0), spread, state, query_map, draws)


def _laplace(
    learner: MetaLearner, state: AdaptedState, queries: torch.Tensor, query_map: ForwardMap
) -> Prediction:
    _, prior_logvar = learner.prior()
    variance = linearized_variance(
        lambda p, q: learner.observe(p, q, state.context_map),
        lambda p, q: learner.observe(p, q, query_map),
        state.params,
        prior_logvar,
        learner.obs_noise,
        state.context.queries,
        queries,
    )
    with torch.no_grad():
        mean = learner.observe(state.params, queries, query_map)
    return _with_noise(learner, mean, variance, state, query_map)


def _with_noise(
    learner: MetaLearner, mean, variance, state: AdaptedState, query_map: ForwardMap, samples=None
) -> Prediction:
    """Add ``sigma^2`` when predicting a new noisy observation (``predictive_noise``), and say so
    (``noise_variance``) so that uncertainty maps can show the signal's own. ``sigma`` is the noise
    of the context's kind of measurement: queries through another forward map (CT pixels of a field
    observed through projections) get the signal's variance alone."""
    same_kind = state.context_map is None or query_map.same_measurement(state.context_map)
    if not (learner.predictive_noise and same_kind):
        return Prediction(mean, variance, samples)
    noise = learner.obs_noise.detach().square()
    return Prediction(mean, variance + noise, samples, noise_variance=noise)
