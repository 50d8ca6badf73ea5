r"""iBaML's inner steps: how ``v = (mu, rho)`` moves towards the stationary point of ``F``.

None of these change the stationary points of ``F``, hence not the implicit meta-gradient; they
decide how close ``K`` inner steps get to them, which the implicit gradient assumes (its l-block
weighs ``rho - l`` and ``mu - m`` directly).

Mean. Steps on ``mu`` can be preconditioned by a variance (``precondition``): ``e^{l}`` or
``e^{rho}`` times the gradient for SGD, or an Adam rate measured in prior standard deviations. The
posterior variance is, at ``dF/drho = 0``, the inverse diagonal curvature of ``F`` in ``mu``, so that
step is a diagonal Newton step (variational online Gauss-Newton).

Log-variance (``logvar_step="fixed_point"``, default). The mean-field optimum in ``rho`` has a closed
form in the diagonal data curvature ``h``, ``e^{-rho*} = e^{-l} + h``, and ``dF/drho`` measures
``h``, so each step moves ``rho`` (a damped fraction of) the way to that fixed point
(:func:`logvar_fixed_point_step`). With ``precondition="posterior"`` the step on ``mu`` then uses the
variance just set. Together they reach the inner optimum of a prior-dominated problem in a few
steps. Adam on ``rho`` (``logvar_step="optimizer"``) moves every ``rho`` by about its rate on its
first steps whatever the gradient, so after a few steps ``rho`` is nats from the optimum.

Mean step cap (``mean_step_cap``, default). A diagonal Newton step is as long as the diagonal
curvature allows; where the curvature of ``F`` in ``mu`` has strong off-diagonal terms (a SIREN on
occupancy from a few hundred points) it is far too long, ``F`` grows by orders of magnitude at the
first step and the meta-training loss is not finite. Along the update ``u`` each step is about to
take, the Gauss-Newton model ``F(mu - t u) ~ F - t g.u + t^2/2 u.A u`` (``A`` the Gauss-Newton
matrix of the expected NLL plus the KL's ``e^{-l}``) is least at ``t* = g.u / u.A u``; the step is
cut to ``min(1, t*) u`` per signal (:func:`mean_step_cap`), with one Jacobian-vector product of the
predictions of the draws (:func:`nll_curvature_along`; with antithetic pairs, of the first draw of
each pair, :func:`first_of_pairs`). Only the path changes, not the stationary points.

Each builder returns a gradient transform ``(v, grads) -> step direction`` for
:func:`~genfield.meta.inner.inner_loop` (its ``precondition``), or per-tensor rates.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from einops import rearrange, repeat

from genfield.datasets.batch import Observations
from genfield.forward import ForwardMap
from genfield.meta.bayes import Posterior
from genfield.meta.learner import MetaLearner
from genfield.meta.tree import Tree, per_signal, tree_dot

#: Adam's moment decays and denominator guard in the inner loop (as :func:`inner_loop`'s defaults).
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8

Transform = Callable[[Posterior, Posterior], Posterior]
#: ``(v, grads, update) -> update taken`` (:func:`~genfield.meta.inner.inner_loop`'s ``limit_step``).
StepLimit = Callable[[Posterior, Posterior, Posterior], Posterior]


def logvar_fixed_point_step(grad_rho: torch.Tensor) -> torch.Tensor:
    """``rho - rho*`` for the log-variance gradient ``g = dF/drho``.

    ``g = 1/2 (e^{rho} (e^{-l} + h) - 1)`` with ``h`` the (Monte-Carlo, reparameterised) data
    curvature of the weight, so the mean-field fixed point ``e^{-rho*} = e^{-l} + h`` lies at
    ``rho - rho* = log(1 + 2 g)``: zero iff ``g = 0``, equal to ``2 g`` for small ``g``, and
    logarithmic where ``h`` is large (a SIREN's first layer: ``e^l h ~ 100``), where a gradient step
    would send the variance to ``e^{-50}``. ``1 + 2 g`` is clipped below at ``e^-2`` (a noisy or
    negative ``h`` raises ``rho`` by at most 2 nats)."""
    return torch.log((1 + 2 * grad_rho).clamp_min(math.exp(-2)))


def mean_preconditioner(precondition: str, prior_logvar: Tree, create_graph: bool) -> Transform | None:
    """``grad_mu F -> e^{l} grad_mu F`` (``"prior"``) or ``e^{rho} grad_mu F`` (``"posterior"``);
    ``None`` for ``"none"``. ``rho`` gets ``0.5 log(1 + 2 g)`` (:func:`logvar_fixed_point_step`), so
    that with SGD at ``inner_lr_logvar = 2`` the log-variance jumps to its fixed point.

    With the prior variance the KL's pull on ``mu`` has unit curvature, so ``inner_lr`` is a fraction
    of the way back to ``m`` per step, whatever the scale of each weight. The posterior variance is,
    at a stationary point of ``F``, the inverse of the diagonal curvature ``diag(H_nll) + e^{-l}`` of
    ``F`` in ``mu`` (Gaussian variational fixed point), so that step is a diagonal Newton step.
    ``create_graph`` keeps the prior's graph (the explicit, backprop-through-K meta-gradient)."""
    if precondition == "none":
        return None

    def transform(v: Posterior, grads: Posterior) -> Posterior:
        rho = {k: 0.5 * logvar_fixed_point_step(g) for k, g in grads.rho.items()}
        scales = prior_logvar if precondition == "prior" else v.rho
        mu = {}
        for k, g in grads.mu.items():
            scale = scales[k] if create_graph else scales[k].detach()
            mu[k] = torch.exp(scale) * g
        return Posterior(mu, rho)

    return transform


def mean_rates(
    inner_lr: float, optimizer: str, precondition: str, prior_logvar: Tree, create_graph: bool
) -> dict[str, float | torch.Tensor]:
    """Inner learning rates of ``mu``. Adam's steps are about ``inner_lr`` per weight whatever the
    gradient's scale, so with a preconditioner its rate is measured in prior standard deviations,
    ``inner_lr e^{l/2}`` (weights of a SIREN differ in scale by 30x)."""
    if optimizer != "adam" or precondition == "none":
        return {k: inner_lr for k in prior_logvar}
    return {
        k: inner_lr * torch.exp(0.5 * (t if create_graph else t.detach())) for k, t in prior_logvar.items()
    }


def fixed_point_transform(
    optimizer: str,
    precondition: str,
    prior_logvar: Tree,
    logvar_rate: float,
    create_graph: bool,
) -> Transform:
    """The whole inner step of ``logvar_step="fixed_point"``, as a gradient transform for SGD at
    rate 1 on ``rho`` (``mu`` keeps its own rates).

    ``mu`` gets its optimizer's direction (Adam's bias-corrected ratio of moments, or the
    preconditioned SGD gradient). ``rho`` moves a fraction ``eta_t = max(logvar_rate, 1/t)`` of the
    way to the closed-form fixed point of the current curvature estimate
    (:func:`logvar_fixed_point_step`): the first step jumps there, later ones average the
    log-precision targets of successive draws (a running mean while ``1/t > logvar_rate``). With
    fixed noise the error contracts by ``1 - eta_t`` per step, so a few inner steps reach
    ``dF/drho = 0``. The transform keeps Adam's moments between calls: build one per inner loop."""
    precondition_mean = (
        None if optimizer == "adam" else mean_preconditioner(precondition, prior_logvar, create_graph)
    )
    first: Tree = {}
    second: Tree = {}
    step = 0

    def transform(v: Posterior, grads: Posterior) -> Posterior:
        nonlocal step
        step += 1
        rate = max(logvar_rate, 1 / step)
        logvar = {k: rate * logvar_fixed_point_step(g) for k, g in grads.rho.items()}
        mean = dict(grads.mu)
        if optimizer == "adam":
            (b1, b2), c1, c2 = ADAM_BETAS, 1 - ADAM_BETAS[0] ** step, 1 - ADAM_BETAS[1] ** step
            for k, g in mean.items():
                first[k] = b1 * first.get(k, 0) + (1 - b1) * g
                second[k] = b2 * second.get(k, 0) + (1 - b2) * g.square()
                mean[k] = (first[k] / c1) / ((second[k] / c2).sqrt() + ADAM_EPS)
        elif precondition_mean is not None:  # "posterior": the variance this step sets
            variance_set = {k: v.rho[k] - d for k, d in logvar.items()}
            mean = precondition_mean(Posterior(v.mu, variance_set), Posterior(mean, {})).mu
        return Posterior(mean, logvar)

    return transform


def nll_curvature_along(
    learner: MetaLearner,
    v: Posterior,
    noise: Tree,
    direction: Tree,
    obs: Observations,
    forward_map: ForwardMap,
    create_graph: bool = False,
) -> torch.Tensor:
    """``u . G u`` per signal, ``(S,)``: the Gauss-Newton matrix ``G = 1/M sum_j J_j^T J_j / sigma^2``
    of ``learner``'s Monte-Carlo expected NLL in ``mu`` along ``direction`` ``u`` (``{name: (S, ...)}``).

    ``J_j`` is the Jacobian of the predicted observations at draw ``w_j = mu + e^{rho/2} eps_j`` (and
    ``dw_j/dmu = I``), so ``u . J_j^T J_j u = |J_j u|^2``: one ``torch.func.jvp`` through the field
    for all draws and signals at once. ``create_graph`` keeps the graph into ``v``, the prior and the
    noise level (the explicit meta-gradient); otherwise all inputs are detached."""
    keep = (lambda t: t) if create_graph else torch.Tensor.detach
    draws = len(next(iter(noise.values())))
    phi = {k: keep(t) for k, t in learner.draws(v, noise).items()}
    tangent = {k: repeat(keep(direction[k]), "s ... -> (m s) ...", m=draws) for k in phi}
    queries = repeat(obs.queries, "s ... -> (m s) ...", m=draws)
    with torch.enable_grad() if create_graph else torch.no_grad():
        if create_graph:
            norms = squared_jvp_norms(learner, phi, tangent, queries, forward_map)
        else:  # first order: eager or compiled, as the learner's ``compile`` decides
            norms = learner.compiled_inner(squared_jvp_norms, learner, phi, tangent, queries, forward_map)
        squared = rearrange(norms, "(m s) -> m s", m=draws).mean(0)
        return squared * torch.exp(-2 * keep(learner.log_sigma))


def first_of_pairs(noise: Tree, antithetic: bool) -> Tree:
    """The first draw of each antithetic pair ``(eps, -eps)`` (:meth:`IBaML.draw_noise` stacks the
    ``+eps`` half first), or ``noise`` itself without pairs (or with an odd count). For the step
    cap's Gauss-Newton curvature either half is an unbiased estimate of the same expectation
    (``eps`` and ``-eps`` have one law); the pair only lowers its variance, which a step length
    barely feels, so the cap takes half the forward-mode passes (``bench_ibaml_cost``)."""
    draws = len(next(iter(noise.values())))
    if not antithetic or draws % 2:
        return noise
    return {k: t[: draws // 2] for k, t in noise.items()}


def squared_jvp_norms(
    learner: MetaLearner, phi: Tree, tangent: Tree, queries: torch.Tensor, forward_map: ForwardMap
) -> torch.Tensor:
    """``|J u|^2`` of every row of ``phi`` ``{name: (R, ...)}``: one forward-mode pass through the
    field observed at ``queries`` ``(R, N, d)``, along ``tangent`` (``phi``'s structure)."""
    _, change = torch.func.jvp(lambda p: learner.observe(p, queries, forward_map), (phi,), (tangent,))
    return change.square().flatten(1).sum(1)


def gauss_newton_minimiser(
    grad_mu: Tree, update_mu: Tree, nll_curvature: torch.Tensor, prior_logvar: Tree
) -> torch.Tensor:
    """``t* = g.u / (u.A u)`` per signal, ``(S,)``: the minimiser along the update ``u`` of the
    Gauss-Newton model ``F(mu - t u) ~ F - t g.u + t^2/2 u.A u``, with ``A = G + diag(e^{-l})`` and
    ``nll_curvature = u.G u`` (:func:`nll_curvature_along`). Where ``u.A u = 0`` (no step) ``t* = 1``."""
    slope = tree_dot(grad_mu, update_mu)
    kl = tree_dot(update_mu, {k: torch.exp(-prior_logvar[k]) * u for k, u in update_mu.items()})
    curvature = nll_curvature + kl
    positive = curvature > 0
    return torch.where(positive, slope / torch.where(positive, curvature, 1), torch.ones_like(slope))


def mean_step_cap(
    curvature_along: Callable[[Posterior, Tree], torch.Tensor], prior_logvar: Tree
) -> StepLimit:
    """The update of ``mu`` cut to ``min(1, t*)`` of itself per signal, ``t*`` the Gauss-Newton
    minimiser along it (:func:`gauss_newton_minimiser`); the update of ``rho`` is untouched.

    ``curvature_along(v, u)`` is ``u.G u`` at ``v`` with the noise of the step's gradient
    (:func:`nll_curvature_along`). ``t*`` is floored at 0: an update the model says goes uphill
    (possible with Adam's momentum, never with a positive diagonal preconditioner) is not taken."""

    def limit(v: Posterior, grads: Posterior, update: Posterior) -> Posterior:
        t = gauss_newton_minimiser(grads.mu, update.mu, curvature_along(v, update.mu), prior_logvar)
        scale = t.clamp(0, 1)
        return Posterior({k: per_signal(scale, u) * u for k, u in update.mu.items()}, update.rho)

    return limit
