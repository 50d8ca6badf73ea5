r"""iBaML: Bayesian meta-learning with generalized implicit gradients (Zhang et al., AAAI 2023).

Model. Meta-parameters ``theta = (m, l)``: a prior ``p(phi) = N(m, diag e^l)`` over the adapted field
weights (plus, optionally, shared weights ``w`` and the log noise ``log sigma``). Each signal gets a
Gaussian posterior ``q(phi) = N(mu, diag e^rho)``, ``v = (mu, rho)``, initialised at the prior.

Inner problem (per signal, K steps on ``v``):

    F(v, theta) = 1/M sum_j NLL_ctx(mu + e^{rho/2} eps_j) + KL(q_v || p_theta)

Monte-Carlo noise. ``inner_noise="fresh"`` (default) draws new ``eps`` at every inner step: a
stochastic-gradient descent on the exact ``E_q[NLL]``. With ``inner_noise="fixed"`` (or a
``noise_seed``) one draw is held for all K steps, so ``F`` is one deterministic function (common
random numbers, what the dense-solve and finite-difference tests need). Fixed noise lets a
non-convex field *overfit the draws*: on 16 x 16 faces the M = 2 sample fields fitted the context
(MSE 0.01) while the posterior mean did not (MSE 0.04) and the variance never shrank — the cause of
the flat held-out PSNR and the flat predictive std seen before. The meta-gradient below is taken
at ``v_K`` with one draw held fixed during the solve (the noise the outer loss uses).

Inner steps on ``mu`` can be preconditioned by a variance (``precondition``): ``e^{l}`` or
``e^{rho}`` times the gradient for SGD, or an Adam rate measured in prior standard deviations.
The posterior variance is, at ``dF/drho = 0``, the inverse diagonal curvature of ``F`` in ``mu``, so
that step is a diagonal Newton step (variational online Gauss-Newton); neither changes the
stationary points, hence not the meta-gradient. ``relative_prior`` sets the initial prior standard
deviation of each tensor to ``prior_std`` times its initial RMS: a SIREN's first layer and its
hidden layers differ ~30x in scale and an isotropic prior wide enough for one turns the other into
noise (phase noise ``omega_0 sigma sqrt(n)`` of several radians at ``prior_std=0.02``).

Inner steps on ``rho`` (``logvar_step="fixed_point"``, default): the mean-field optimum in ``rho``
has a closed form in the diagonal data curvature ``h``, ``e^{-rho*} = e^{-l} + h``, and ``dF/drho``
measures ``h``, so each step moves ``rho`` (a damped fraction of) the way to that fixed point
(:func:`logvar_fixed_point_step`). With ``precondition="posterior"`` the step on ``mu`` then uses the
variance just set: ``mu <- mu - inner_lr e^{rho} grad_mu F`` is a diagonal Newton step. Together they
reach the inner optimum of a prior-dominated problem in a few steps, which the implicit gradient
assumes (its l-block weighs ``rho - l`` and ``mu - m`` directly). Adam on ``rho``
(``logvar_step="optimizer"``) moves every ``rho`` by about its rate on its first steps whatever the
gradient, so after a few steps ``rho`` is nats from the optimum and that block points elsewhere.

with ``NLL`` the Gaussian negative log-likelihood summed over observations
(:mod:`genfield.meta.likelihood`) and the KL in closed form (:mod:`genfield.meta.bayes`).

Outer objective (per target observation, averaged over signals):

    L(v) = 1/M sum_j NLL_tgt(mu + e^{rho/2} eps_j)

Meta-gradient. At ``v* = argmin F``, ``grad_v F(v*(theta), theta) = 0``. Differentiating in theta:
``A dv*/dtheta + B = 0`` with ``A = d^2F/dv^2`` and ``B = d^2F/dv dtheta``, so

    dL/dtheta = dL/dtheta|_direct - B^T x,    A x = grad_v L(v*).

``A = H_nll + diag(KL curvature)``: ``H_nll`` is the Hessian of the Monte-Carlo expected NLL in
``v`` (blocks mu-mu, mu-rho, rho-rho, including the first-order term that ``e^{rho/2}`` brings),
applied by double backward with the noise held fixed; the KL adds ``e^{-l}`` on the mu block and
``1/2 e^{rho-l}`` on the rho block. ``x`` comes from one CG solve per signal, Jacobi-preconditioned
by the KL's curvature (the prior variances can span decades). (``curvature="gauss_newton"``
replaces ``H_nll`` by the positive semi-definite Gauss-Newton matrix of the predictions in the
weights, ``J^T J / (M sigma^2)`` pulled back through ``w = mu + e^{rho/2} eps``,
plus the reparameterisation's own second derivative ``1/4 e^{rho/2} eps . grad_w NLL`` on the rho-rho
diagonal (:func:`~genfield.meta.bayes.rho_curvature`; not a residual: in expectation half that
block), so that ``A`` is positive definite at a stationary point and CG converges even where the
exact Hessian of a non-convex field is indefinite; the default.)
The NLL does not depend on ``(m, l)``, so ``B`` for the prior comes from the KL alone and is diagonal:

    dL/dm = sum_s e^{-l} x_mu,s
    dL/dl = sum_s [ (mu_s - m) e^{-l} x_mu,s + 1/2 e^{rho_s - l} x_rho,s ]

(the outer loss has no direct dependence on ``(m, l)``). For shared weights and a learned noise the
cross term comes from the NLL: ``dL/dw = dL/dw|_direct - (d^2 NLL_ctx / dw dv) x`` by one more
double-backward product. For the noise that cross term is only used with
``noise_gradient="implicit"``; by default (``"direct"``) ``log sigma`` follows the target NLL's own
gradient, which settles ``sigma`` at the RMSE of the adapted predictions (calibrated intervals). The
cross term assumes ``v_K`` is the inner optimum; after a few steps it is not, and the term says "a
smaller sigma fits the context harder": on 64 x 64 faces it drove sigma from 0.1 to 0.03 while the
target RMSE stayed at 0.17, the inner steps (whose size scales as 1/sigma^2) grew unstable and the
90 % intervals covered 35 % of held-out pixels.

Nothing is backpropagated through the inner trajectory: memory does not grow with K. The solve and
the cross terms are the shared ones of :mod:`genfield.meta.implicit`; iBaML supplies the
stationarity (the expected NLL's gradient), the curvature, the diagonal and the KL's ``B^T x``.
``v`` is a :class:`~genfield.meta.bayes.Posterior` ``(mu, rho)``, the prior a
:class:`~genfield.meta.bayes.Prior` ``(mean, logvar)``.

Prediction. ``predictive="laplace"`` (default): the linearized-Laplace posterior under the learned
prior and noise (:mod:`genfield.meta.laplace`): mean ``y(mu)``, variance
``diag(K_** - K_*c (K_cc + sigma^2 I)^{-1} K_c*)`` with the prior's tangent kernel
``K_ab = J_a e^l J_b^T`` at the adapted mean. It keeps the posterior correlations that the mean-field
``q`` drops, so predictions are confident where the signal was observed and not elsewhere (``q``'s
variances contract by each weight's *summed* curvature and cannot tell a random sample of observed
pixels from the rest). ``predictive="mean_field"``: ``num_samples`` draws ``phi_j ~ q``, mean
``1/J sum_j y(phi_j)``, variance ``Var_j y(phi_j)``. Both add ``sigma^2`` when ``predictive_noise``
(the noise of a new observation).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from einops import rearrange, repeat
from torch import nn

from genfield.datasets.batch import Observations, SignalBatch
from genfield.distributed import randn_for_shard
from genfield.errors import InputError
from genfield.forward import ForwardMap
from genfield.interface import Prediction
from genfield.meta.bayes import (
    Posterior,
    Prior,
    kl_cross_transpose,
    kl_curvature,
    kl_diag_gaussians,
    kl_gradient,
    reparameterise,
    rho_curvature,
)
from genfield.meta.cg import gauss_newton_hvp
from genfield.meta.ibaml_config import (  # noqa: F401 - the option sets, re-exported
    INNER_GRADIENTS,
    INNER_NOISE,
    LOGVAR_STEPS,
    NOISE_GRADIENTS,
    PRECONDITIONERS,
    PREDICTIVES,
    IBaMLConfig,
)
from genfield.meta.implicit import Operator, implicit_gradient, linear_operator, outer_gradients
from genfield.meta.inner import inner_loop
from genfield.meta.laplace import linearized_variance
from genfield.meta.learner import AdaptedState, MetaLearner, _module_key, field_tree
from genfield.meta.likelihood import gaussian_nll
from genfield.meta.tree import Tree, leaves, tree_leaves, tree_unflatten

#: Adam's moment decays and denominator guard in the inner loop (as :func:`inner_loop`'s defaults).
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8


def logvar_fixed_point_step(grad_rho: torch.Tensor) -> torch.Tensor:
    """``rho - rho*`` for the log-variance gradient ``g = dF/drho``.

    ``g = 1/2 (e^{rho} (e^{-l} + h) - 1)`` with ``h`` the (Monte-Carlo, reparameterised) data
    curvature of the weight, so the mean-field fixed point ``e^{-rho*} = e^{-l} + h`` lies at
    ``rho - rho* = log(1 + 2 g)``: zero iff ``g = 0``, equal to ``2 g`` for small ``g``, and
    logarithmic where ``h`` is large (a SIREN's first layer: ``e^l h ~ 100``), where a gradient step
    would send the variance to ``e^{-50}``. ``1 + 2 g`` is clipped below at ``e^-2`` (a noisy or
    negative ``h`` raises ``rho`` by at most 2 nats)."""
    return torch.log((1 + 2 * grad_rho).clamp_min(math.exp(-2)))


class IBaML(MetaLearner):
    """iBaML; see the module docstring for the model and the meta-gradient.

    Options beyond :class:`MetaLearner`'s: those of :class:`~genfield.meta.ibaml_config.IBaMLConfig`
    (validated there, once), as keywords or whole as ``config`` (keywords override its fields).
    """

    name = "ibaml"
    needs_double_backward = True

    config_class = IBaMLConfig

    def __init__(self, field, *, config: IBaMLConfig | None = None, **options) -> None:
        if options.pop("meta_sgd", False):
            raise InputError("meta_sgd=True needs the second-order 'maml' estimator")
        ours = {k: options.pop(k) for k in IBaMLConfig.names() & set(options)}
        config = IBaMLConfig(**ours) if config is None else replace(config, **ours)
        self.config = config
        self.predictive, self.noise_gradient = config.predictive, config.noise_gradient
        self.logvar_step, self.inner_gradient = config.logvar_step, config.inner_gradient
        self.curvature, self.inner_noise, self.precondition = (
            config.curvature, config.inner_noise, config.precondition
        )
        super().__init__(field, inner_optimizer=config.inner_optimizer, inner_lr=config.inner_lr, **options)
        self.prior_mean = nn.ParameterDict(
            {_module_key(k): nn.Parameter(v) for k, v in self._initial.items()}
        )
        def initial_logvar(v: torch.Tensor) -> torch.Tensor:
            scale = v.square().mean().sqrt().clamp_min(1e-3) if config.relative_prior else 1
            return torch.full_like(v, 2 * math.log(config.prior_std * scale))

        self.prior_logvar = nn.ParameterDict(
            {_module_key(k): nn.Parameter(initial_logvar(v)) for k, v in self._initial.items()}
        )
        log_sigma = torch.tensor(math.log(config.obs_noise))
        if config.learn_obs_noise:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)
        self.learn_obs_noise = config.learn_obs_noise
        lr_logvar = config.inner_lr_logvar
        self.inner_lr_logvar = self.inner_lr if lr_logvar is None else lr_logvar
        self.mc_samples, self.noise_seed = config.mc_samples, config.noise_seed
        self.predictive_noise = config.predictive_noise
        self.cg_iterations, self.cg_damping = config.cg_iterations, config.cg_damping
        self.cg_tol = config.cg_tol
        self.lr_scale_logvar, self.lr_scale_obs_noise = config.lr_scale_logvar, config.lr_scale_obs_noise
        self.antithetic = config.antithetic

    # -- parameters -----------------------------------------------------------------------------
    def meta_parameters(self) -> dict[str, nn.Parameter]:
        named = {
            **self._group("prior_mean", self.prior_mean),
            **self._group("prior_logvar", self.prior_logvar),
            **super().meta_parameters(),
        }
        if self.learn_obs_noise:
            named["log_sigma"] = self.log_sigma
        return named

    def optimizer_groups(self, lr: float) -> list[dict]:
        """Adam groups: the prior log-variance at ``lr_scale_logvar * lr`` and a learned noise at
        ``lr_scale_obs_noise * lr``, everything else at ``lr``. Adam moves each parameter by about
        its rate per step, and a log-variance must travel several nats (a weight's data-to-prior
        balance, ``e^l N / sigma^2``, spans decades) while the mean moves by small fractions of a
        weight: one rate for both leaves the variance frozen."""
        logvar = list(self.prior_logvar.values())
        noise = [self.log_sigma] if self.learn_obs_noise else []
        rest = [*self.prior_mean.values(), *self.shared.values()]
        groups = [{"params": rest, "lr": lr}, {"params": logvar, "lr": lr * self.lr_scale_logvar}]
        if noise:
            groups.append({"params": noise, "lr": lr * self.lr_scale_obs_noise})
        return groups

    def prior(self) -> Prior:
        """The prior ``Prior(mean={name: m}, logvar={name: l})`` (unpacks as ``m, l``)."""
        return Prior(field_tree(self.prior_mean), field_tree(self.prior_logvar))

    @property
    def obs_noise(self) -> torch.Tensor:
        return self.log_sigma.exp()

    def draw_noise(
        self, num_signals: int, num_samples: int | None = None, shard: tuple[int, int] | None = None
    ) -> Tree:
        """Standard normal noise ``{name: (M, S, ...)}`` for the reparameterisation.

        With ``antithetic`` and an even ``M``, the draws come in pairs ``(eps, -eps)``: the
        residual term ``eps . grad NLL(mu)`` of the log-variance gradient, which is zero in
        expectation but ~10x the curvature signal ``e^{rho} h`` for an unfitted field, cancels
        exactly, and so does the first-order noise of the mean's gradient. ``shard``: the signals'
        ``(offset, total)`` in a distributed meta-batch (:attr:`SignalBatch.shard`)."""
        m, _ = self.prior()
        num_samples = self.mc_samples if num_samples is None else num_samples
        generator = None
        if self.noise_seed is not None:
            device = next(iter(m.values())).device
            generator = torch.Generator(device).manual_seed(self.noise_seed)
        pairs = self.antithetic and num_samples % 2 == 0
        draws = num_samples // 2 if pairs else num_samples
        # On a shard of a distributed meta-batch, draw for the whole batch and keep this rank's
        # signals: each signal gets the noise it would get in one process (exact equivalence).
        noise = {
            k: randn_for_shard(draws, num_signals, tuple(p.shape), shard, generator, p.dtype, p.device)
            for k, p in m.items()
        }
        return {k: torch.cat([e, -e]) for k, e in noise.items()} if pairs else noise

    # -- objectives -----------------------------------------------------------------------------
    def sample_observations(
        self, v: Posterior, noise: Tree, queries: torch.Tensor, forward_map: ForwardMap
    ) -> torch.Tensor:
        """Observations ``(M, S, N, c)`` of the ``M`` reparameterised draws of every signal."""
        draws = len(next(iter(noise.values())))
        queries = repeat(queries, "s ... -> (m s) ...", m=draws)
        pred = self.observe(self.draws(v, noise), queries, forward_map)
        return rearrange(pred, "(m s) ... -> m s ...", m=draws)

    def draws(self, v: Posterior, noise: Tree) -> Tree:
        """The reparameterised weights ``mu + e^{rho/2} eps`` of the ``M`` draws of every signal,
        ``{name: (M S, ...)}`` (draw-major: one batch the field evaluates in one vmapped call)."""
        mu, rho = v
        return {
            k: rearrange(reparameterise(mu[k], rho[k], noise[k]), "m s ... -> (m s) ...") for k in mu
        }

    def expected_nll(
        self, v: Posterior, noise: Tree, obs: Observations, forward_map: ForwardMap
    ) -> torch.Tensor:
        """Monte-Carlo ``E_q[NLL]`` of each signal's observations, summed over them: ``(S,)``."""
        pred = self.sample_observations(v, noise, obs.queries, forward_map)
        return gaussian_nll(pred, obs.values, self.log_sigma).mean(0)

    def kl(self, v: Posterior, detach_prior: bool = False) -> torch.Tensor:
        """``KL(q_v || p_theta)`` of each signal: ``(S,)``."""
        mu, rho = v
        m, l = self.prior()
        if detach_prior:  # the first-order inner loop must not keep graphs into the prior
            m, l = ({k: t.detach() for k, t in d.items()} for d in (m, l))
        return sum(kl_diag_gaussians(mu[k], rho[k], m[k], l[k]).flatten(1).sum(1) for k in mu)

    def free_energy(
        self,
        v: Posterior,
        noise: Tree,
        context: Observations,
        forward_map: ForwardMap,
        detach_prior: bool = False,
    ) -> torch.Tensor:
        """The inner objective ``F(v, theta)`` of each signal: ``(S,)``."""
        return self.expected_nll(v, noise, context, forward_map) + self.kl(v, detach_prior)

    def free_energy_gradient(
        self, v: Posterior, noise: Tree, context: Observations, forward_map: ForwardMap
    ) -> Posterior:
        """``grad_v F`` of every signal (detached), with one autograd call through the field alone.

        The KL and the reparameterisation ``w_j = mu + e^{rho/2} eps_j`` have closed-form
        derivatives (:mod:`genfield.meta.bayes`), so only ``g_j = grad_w NLL(w_j) / M`` needs the
        field's backward, taken at detached draws:

            dF/dmu  = sum_j g_j + (mu - m) e^{-l}
            dF/drho = 1/2 e^{rho/2} sum_j eps_j g_j + 1/2 (e^{rho - l} - 1)

        The same numbers as autograd of :meth:`free_energy`, without its graph of the sampling and
        the KL (per tensor: exp, products, the prior's broadcasts, and their backward)."""
        mu, rho = v
        m, l = self.prior().detached()
        draws = len(next(iter(noise.values())))
        with torch.no_grad():
            phi = {k: t.requires_grad_(True) for k, t in self.draws(v, noise).items()}
            queries = repeat(context.queries, "s ... -> (m s) ...", m=draws)
        with torch.enable_grad():
            pred = rearrange(self.observe(phi, queries, forward_map), "(m s) ... -> m s ...", m=draws)
            nll = gaussian_nll(pred, context.values, self.log_sigma.detach()).sum() / draws
            grads = torch.autograd.grad(nll, list(phi.values()))
        grad_mu, grad_rho = {}, {}
        with torch.no_grad():
            for k, g in zip(phi, grads):
                g = rearrange(g, "(m s) ... -> m s ...", m=draws)
                mean_kl, logvar_kl = kl_gradient(mu[k], rho[k], m[k], l[k])
                grad_mu[k] = g.sum(0) + mean_kl
                grad_rho[k] = 0.5 * torch.exp(0.5 * rho[k]) * (noise[k] * g).sum(0) + logvar_kl
        return Posterior({k: grad_mu[k] for k in mu}, {k: grad_rho[k] for k in rho})

    def target_loss(self, v: Posterior, noise: Tree, target: Observations, forward_map) -> torch.Tensor:
        """The outer objective ``L(v)``: expected NLL per target value, mean over signals."""
        per_value = target.values.shape[1] * target.values.shape[2]
        return self.expected_nll(v, noise, target, forward_map).mean() / per_value

    # -- inner loop -----------------------------------------------------------------------------
    def _preconditioner(self, create_graph: bool):
        """``grad_mu F -> e^{l} grad_mu F`` (prior) or ``e^{rho} grad_mu F`` (posterior).

        With the prior variance the KL's pull on ``mu`` has unit curvature, so ``inner_lr`` is a
        fraction of the way back to ``m`` per step, whatever the scale of each weight. The posterior
        variance is, at a stationary point of ``F`` (``dF/drho = 0``), the inverse of the diagonal
        curvature ``diag(H_nll) + e^{-l}`` of ``F`` in ``mu`` (Gaussian variational fixed point),
        so the step is a diagonal Newton step (as in variational online Gauss-Newton). Both leave
        the stationary points of ``F`` — and so the implicit meta-gradient — unchanged.

        With ``logvar_step="optimizer"`` and SGD, the step on ``rho`` is ``inner_lr_logvar`` times
        ``0.5 log(1 + 2 g)`` (:func:`logvar_fixed_point_step`; ``inner_lr_logvar = 2`` jumps to the
        fixed point); with ``"fixed_point"`` the log-variance is stepped by :meth:`_fixed_point_hook`.
        """
        if self.precondition == "none" or self.inner_optimizer == "adam":
            return None  # Adam: see _mean_rates
        _, l = self.prior()

        def precondition(v: Posterior, grads: Posterior) -> Posterior:
            # rho: the log fixed-point step, stable where the data curvature is large
            rho = {k: 0.5 * logvar_fixed_point_step(g) for k, g in grads.rho.items()}
            scales = l if self.precondition == "prior" else v.rho
            mu = {}
            for k, g in grads.mu.items():
                scale = scales[k] if create_graph else scales[k].detach()
                mu[k] = torch.exp(scale) * g
            return Posterior(mu, rho)

        return precondition

    def _mean_rates(self, create_graph: bool) -> dict[str, float | torch.Tensor]:
        """Inner learning rates of ``mu``. Adam's steps are about ``inner_lr`` per weight whatever
        the gradient's scale, so with ``precondition="prior"`` its rate is measured in prior
        standard deviations, ``inner_lr e^{l/2}`` (weights of a SIREN differ in scale by 30x)."""
        m, l = self.prior()
        if self.inner_optimizer != "adam" or self.precondition == "none":
            return {k: self.inner_lr for k in m}
        return {
            k: self.inner_lr * torch.exp(0.5 * (t if create_graph else t.detach()))
            for k, t in l.items()
        }

    def adapt_posterior(
        self,
        context: Observations,
        forward_map: ForwardMap,
        noise: Tree | None,
        steps: int,
        init: Posterior | None = None,
        create_graph: bool = False,
        shard: tuple[int, int] | None = None,
    ) -> Posterior:
        """``v_K``: K inner steps on ``F`` from the prior (or from ``init``).

        ``noise`` is held fixed for all K steps (``F`` is then one deterministic function); with
        ``noise=None`` every step draws fresh noise (:meth:`draw_noise`), a stochastic-gradient
        descent on the exact expectation ``E_q[NLL]`` that cannot overfit one set of draws.
        ``create_graph=True`` keeps the trajectory differentiable in the prior: the *explicit*
        (backprop-through-K) Bayesian meta-gradient, for comparison with the implicit one.
        ``shard`` places fresh draws in a distributed meta-batch (:meth:`draw_noise`).
        """
        S = context.num_signals
        if init is None:
            prior = self.prior() if create_graph else self.prior().detached()
            init = prior.posterior(S)
        mean_rates = self._mean_rates(create_graph)
        if noise is None and self.noise_seed is not None:  # every seeded draw is this one: draw it once
            noise = self.draw_noise(S, shard=shard)

        def objective(v: Posterior) -> torch.Tensor:
            eps = self.draw_noise(S, shard=shard) if noise is None else noise
            return self.free_energy(v, eps, context, forward_map, not create_graph).sum()

        def gradient(v: Posterior) -> Posterior:
            eps = self.draw_noise(S, shard=shard) if noise is None else noise
            return self.free_energy_gradient(v, eps, context, forward_map)

        if self.logvar_step == "optimizer":
            rates = Posterior(mean_rates, {k: self.inner_lr_logvar for k in init.rho})
            optimizer, precondition = self.inner_optimizer, self._preconditioner(create_graph)
        else:  # the hook takes the whole step; the loop applies it as SGD at rate 1
            rates = Posterior(mean_rates, {k: 1.0 for k in init.rho})
            optimizer, precondition = "sgd", self._fixed_point_hook(create_graph)
        return inner_loop(
            objective, init, steps, rates, optimizer, create_graph=create_graph,
            precondition=precondition,
            gradient=gradient if self.inner_gradient == "closed_form" and not create_graph else None,
        )

    def _fixed_point_hook(self, create_graph: bool):
        """The inner step of ``logvar_step="fixed_point"``, as a gradient transform for SGD.

        ``mu`` gets its optimizer's direction (Adam's bias-corrected ratio of moments, or the
        preconditioned SGD gradient). ``rho`` moves a fraction ``eta_t = max(inner_lr_logvar, 1/t)``
        of the way to the closed-form fixed point of the current curvature estimate
        (:func:`logvar_fixed_point_step`): the first step jumps there, later ones average the
        log-precision targets of successive draws (a running mean while ``1/t > inner_lr_logvar``).
        With fixed noise the error contracts by ``1 - eta_t`` per step, so a few inner steps reach
        ``dF/drho = 0`` (where Adam moves every ``rho`` by ~``inner_lr`` on its first steps,
        whatever its gradient, and lands nats from the optimum). Stationary points are unchanged."""
        mean_precondition = self._preconditioner(create_graph)
        first: Tree = {}
        second: Tree = {}
        step = 0

        def hook(v: Posterior, grads: Posterior) -> Posterior:
            nonlocal step
            step += 1
            rate = max(self.inner_lr_logvar, 1 / step)
            logvar = {k: rate * logvar_fixed_point_step(g) for k, g in grads.rho.items()}
            mean = dict(grads.mu)
            if self.inner_optimizer == "adam":
                (b1, b2), c1, c2 = ADAM_BETAS, 1 - ADAM_BETAS[0] ** step, 1 - ADAM_BETAS[1] ** step
                for k, g in mean.items():
                    first[k] = b1 * first.get(k, 0) + (1 - b1) * g
                    second[k] = b2 * second.get(k, 0) + (1 - b2) * g.square()
                    mean[k] = (first[k] / c1) / ((second[k] / c2).sqrt() + ADAM_EPS)
            elif mean_precondition is not None:  # "posterior": the variance this step sets
                variance_set = {k: v.rho[k] - d for k, d in logvar.items()}
                mean = mean_precondition(Posterior(v.mu, variance_set), Posterior(mean, {})).mu
            return Posterior(mean, logvar)

        return hook

    def _inner_noise(self, noise: Tree) -> Tree | None:
        return noise if self.inner_noise == "fixed" else None

    def adapt(
        self, context: Observations, forward_map: ForwardMap, steps: int | None = None
    ) -> AdaptedState:
        steps = self.inner_steps if steps is None else steps
        noise = self._inner_noise(self.draw_noise(context.num_signals))
        mu, rho = self.adapt_posterior(context, forward_map, noise, steps)
        return AdaptedState(mu, rho, context, forward_map)

    # -- meta-gradient --------------------------------------------------------------------------
    def implicit_gradient(
        self, v: Posterior, noise: Tree, batch: SignalBatch
    ) -> tuple[Tree, dict[str, torch.Tensor]]:
        """The meta-gradient at a (near-)stationary ``v`` of ``F``; see the module docstring.

        iBaML's parts of :func:`~genfield.meta.implicit.implicit_gradient`: the expected context
        NLL's gradient (and its Gauss-Newton matrix) with the KL's diagonal curvature (the Jacobi
        preconditioner too), the KL's closed-form cross terms for the prior, and autograd's for
        shared weights and (``noise_gradient="implicit"``) the learned noise."""
        v = leaves(v)
        shared = self.shared_meta_parameters()
        noise_scale = {"log_sigma": self.log_sigma} if self.learn_obs_noise else {}
        cross = {**shared, **(noise_scale if self.noise_gradient == "implicit" else {})}
        with torch.enable_grad():
            pred_ctx = self.sample_observations(v, noise, batch.context.queries, batch.forward_map)
            nll_ctx = gaussian_nll(pred_ctx, batch.context.values, self.log_sigma).mean(0).sum()
            grad_nll = torch.autograd.grad(nll_ctx, tree_leaves(v), create_graph=True)
            outer = self.target_loss(v, noise, batch.target, batch.forward_map)
            b_v, direct = outer_gradients(outer, v, {**shared, **noise_scale})
        curvature, diagonal = self._curvature_parts(v, pred_ctx, grad_nll)
        m, l = self.prior().detached()

        def prior_cross(x: Posterior) -> Tree:  # B^T x for (m, l): the KL's, diagonal
            by_mean, by_logvar = {}, {}
            for k in v.mu:
                cross_m, cross_l = kl_cross_transpose(
                    x.mu[k], x.rho[k], v.mu[k].detach(), v.rho[k].detach(), m[k], l[k]
                )
                by_mean[k], by_logvar[k] = cross_m.sum(0), cross_l.sum(0)
            return {**self.named("prior_mean", by_mean), **self.named("prior_logvar", by_logvar)}

        solve = implicit_gradient(
            v,
            tree_unflatten(grad_nll, v),
            b_v,
            curvature=curvature,
            diagonal=diagonal,
            cross=cross,
            direct=direct,
            closed_form_cross=prior_cross,
            iterations=self.cg_iterations,
            damping=self.cg_damping,
            tol=self.cg_tol,
            precondition=True,  # prior variances spanning decades: (P A) ~ I + P H_nll
        )
        metrics = {"loss": outer.detach(), "obs_noise": self.obs_noise.detach(), **solve.metrics()}
        return solve.gradients, metrics

    def _curvature_parts(
        self, v: Posterior, pred_ctx: torch.Tensor, grad_nll: tuple[torch.Tensor, ...]
    ) -> tuple[Operator | None, Posterior]:
        """``(Gauss-Newton products or None for the NLL's Hessian, the diagonal part of A)``."""
        _, l = self.prior().detached()
        pairs = {k: kl_curvature(v.rho[k].detach(), l[k]) for k in v.mu}
        diagonal = Posterior({k: c for k, (c, _) in pairs.items()}, {k: c for k, (_, c) in pairs.items()})
        if self.curvature == "hessian":
            return None, diagonal
        # NLL = 1/M sum_j ||y - f_j||^2 / (2 sigma^2) + c
        weight = torch.exp(-2 * self.log_sigma.detach()) / len(pred_ctx)
        grad_rho = tree_unflatten(grad_nll, v).rho
        # the reparameterisation's own curvature, which Gauss-Newton leaves out
        rho = {k: rho_curvature(grad_rho[k].detach(), c) for k, c in diagonal.rho.items()}
        return gauss_newton_hvp(pred_ctx, v, weight), Posterior(diagonal.mu, rho)

    def curvature_operator(
        self, v: Posterior, pred_ctx: torch.Tensor, grad_nll: tuple[torch.Tensor, ...]
    ) -> tuple[Operator, Posterior]:
        """``(p -> A p, diagonal)``: products with the curvature ``A`` of ``F`` in ``v`` at the
        leaves ``v`` (``pred_ctx``: the sampled context predictions, ``grad_nll``: the expected
        context NLL's gradient in ``v`` with its graph), and the diagonal part that is not the NLL's
        Hessian or Gauss-Newton term (the KL's; with Gauss-Newton also the reparameterisation's
        rho-rho term, :func:`~genfield.meta.bayes.rho_curvature`), the Jacobi preconditioner's."""
        curvature, diagonal = self._curvature_parts(v, pred_ctx, grad_nll)
        return linear_operator(v, tree_unflatten(grad_nll, v), curvature, diagonal), diagonal

    def _outer_and_gradient(self, batch: SignalBatch) -> tuple[Tree, dict[str, torch.Tensor]]:
        noise = self.draw_noise(batch.num_signals, shard=batch.shard)  # shard: under torch.distributed
        v = self.adapt_posterior(
            batch.context, batch.forward_map, self._inner_noise(noise), self.inner_steps, shard=batch.shard
        )
        return self.implicit_gradient(v, noise, batch)

    def outer_loss(self, batch: SignalBatch) -> torch.Tensor:
        noise = self.draw_noise(batch.num_signals)
        v = self.adapt_posterior(
            batch.context, batch.forward_map, self._inner_noise(noise), self.inner_steps
        )
        with torch.no_grad():
            return self.target_loss(v, noise, batch.target, batch.forward_map)

    # -- prediction -----------------------------------------------------------------------------
    def predict(
        self,
        state: AdaptedState,
        queries: torch.Tensor,
        query_map: ForwardMap,
        num_samples: int,
        variance: bool = True,
    ) -> Prediction:
        """The posterior predictive at ``queries`` (see the module docstring, "Prediction");
        ``variance=False`` with the Laplace predictive returns the mean alone (no Jacobians)."""
        if state.logvar is None:
            raise InputError("iBaML prediction needs an adapted state with posterior log-variances")
        if self.predictive == "laplace" and state.context is not None:
            if not variance:
                with torch.no_grad():
                    return Prediction(self.observe(state.params, queries, query_map))
            return self._laplace_predictive(state, queries, query_map)
        with torch.no_grad():
            noise = {
                k: torch.randn(num_samples, *t.shape, dtype=t.dtype, device=t.device)
                for k, t in state.params.items()
            }
            draws = self.sample_observations(
                Posterior(state.params, state.logvar), noise, queries, query_map
            )
            variance = draws.var(0, unbiased=False)
            return self._prediction(draws.mean(0), variance, state, query_map, draws)

    def _laplace_predictive(
        self, state: AdaptedState, queries: torch.Tensor, query_map: ForwardMap
    ) -> Prediction:
        _, prior_logvar = self.prior()
        variance = linearized_variance(
            lambda p, q: self.observe(p, q, state.context_map),
            lambda p, q: self.observe(p, q, query_map),
            state.params,
            prior_logvar,
            self.obs_noise,
            state.context.queries,
            queries,
        )
        with torch.no_grad():
            mean = self.observe(state.params, queries, query_map)
        return self._prediction(mean, variance, state, query_map)

    def _prediction(
        self, mean, variance, state: AdaptedState, query_map: ForwardMap, samples=None
    ) -> Prediction:
        """Add ``sigma^2`` when predicting a new noisy observation (``predictive_noise``), and say
        so (``noise_variance``) so that uncertainty maps can show the signal's own. ``sigma`` is
        the noise of the context's kind of measurement: queries through another forward map (CT
        pixels of a field observed through projections) get the signal's variance alone."""
        same_kind = state.context_map is None or query_map.same_measurement(state.context_map)
        if not (self.predictive_noise and same_kind):
            return Prediction(mean, variance, samples)
        noise = self.obs_noise.detach().square()
        return Prediction(mean, variance + noise, samples, noise_variance=noise)
