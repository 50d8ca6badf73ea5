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

How the inner steps move ``v`` (preconditioned means, a closed-form fixed point for the
log-variances; none changes the stationary points) is :mod:`genfield.meta.ibaml_inner`.
``relative_prior`` sets the initial prior standard deviation of each tensor to ``prior_std`` times
its initial RMS: a SIREN's first layer and its hidden layers differ ~30x in scale and an isotropic
prior wide enough for one turns the other into noise (phase noise ``omega_0 sigma sqrt(n)`` of
several radians at ``prior_std=0.02``).

with ``NLL`` the Gaussian negative log-likelihood summed over observations
(:mod:`genfield.meta.likelihood`) and the KL in closed form (:mod:`genfield.meta.bayes`).

Outer objective (per target observation, averaged over signals):

    L(v) = 1/M sum_j NLL_tgt(mu + e^{rho/2} eps_j)      (outer_objective="expected", the paper's)
    L(v) = NLL_tgt(mu)                                   (outer_objective="mean")

Meta-gradient: at ``v* = argmin F``, one CG solve ``A x = grad_v L(v*)`` with the curvature ``A``
of ``F`` in ``v`` and the closed-form cross terms of the KL in the prior
(:mod:`genfield.meta.ibaml_gradient`). Nothing is backpropagated through the inner trajectory:
memory does not grow with K.

Prediction: the linearized-Laplace or mean-field posterior predictive,
:mod:`genfield.meta.ibaml_predictive`.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import replace

import torch
from einops import rearrange, repeat
from torch import nn

from genfield.calibration import hold_std_scale, scaled
from genfield.datasets.batch import Observations, SignalBatch
from genfield.distributed import randn_for_shard
from genfield.errors import InputError
from genfield.forward import ForwardMap
from genfield.interface import Prediction
from genfield.meta.bayes import (
    Posterior,
    Prior,
    kl_diag_gaussians,
    kl_gradient,
    reparameterise,
)
from genfield.meta.ibaml_config import (  # noqa: F401 - the option sets, re-exported
    INNER_GRADIENTS,
    INNER_NOISE,
    LOGVAR_STEPS,
    NOISE_GRADIENTS,
    PRECONDITIONERS,
    PREDICTIVES,
    IBaMLConfig,
)
from genfield.meta.ibaml_gradient import curvature_operator, ibaml_gradient
from genfield.meta.ibaml_inner import (  # noqa: F401 - ADAM_*, logvar_fixed_point_step: their former home
    ADAM_BETAS,
    ADAM_EPS,
    first_of_pairs,
    fixed_point_transform,
    logvar_fixed_point_step,
    mean_preconditioner,
    mean_rates,
    mean_step_cap,
    nll_curvature_along,
)
from genfield.meta.ibaml_predictive import posterior_predictive
from genfield.meta.implicit import Operator
from genfield.meta.inner import inner_loop
from genfield.meta.learner import AdaptedState, MetaLearner, _module_key, field_tree
from genfield.meta.likelihood import gaussian_nll
from genfield.meta.tree import Tree


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
            config.curvature,
            config.inner_noise,
            config.precondition,
        )
        super().__init__(field, inner_optimizer=config.inner_optimizer, inner_lr=config.inner_lr, **options)
        hold_std_scale(self)  # the factor on every predicted std, set on validation signals
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
        self.cg_tol, self.cg_early_exit = config.cg_tol, config.cg_early_exit
        self.lr_scale_logvar, self.lr_scale_obs_noise = config.lr_scale_logvar, config.lr_scale_obs_noise
        self.antithetic = config.antithetic
        self.mean_step_cap = config.mean_step_cap
        self.outer_objective = config.outer_objective

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
        lr = lr * self.lr_scale  # a kind's own outer rate (MetaLearner.optimizer_groups)
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
        return {k: rearrange(reparameterise(mu[k], rho[k], noise[k]), "m s ... -> (m s) ...") for k in mu}

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
        with torch.enable_grad():
            nll = self.compiled_inner(self.first_order_loss, self, phi, context, forward_map)
            grads = torch.autograd.grad(nll, list(phi.values()))
        grad_mu, grad_rho = {}, {}
        with torch.no_grad():
            for k, g in zip(phi, grads):
                g = rearrange(g, "(m s) ... -> m s ...", m=draws)
                mean_kl, logvar_kl = kl_gradient(mu[k], rho[k], m[k], l[k])
                grad_mu[k] = g.sum(0) + mean_kl
                grad_rho[k] = 0.5 * torch.exp(0.5 * rho[k]) * (noise[k] * g).sum(0) + logvar_kl
        return Posterior({k: grad_mu[k] for k in mu}, {k: grad_rho[k] for k in rho})

    @staticmethod
    def first_order_loss(
        learner: MetaLearner, phi: Tree, obs: Observations, forward_map: ForwardMap
    ) -> torch.Tensor:
        """``sum_j NLL(w_j) / M`` of the context ``obs`` at the draws ``phi`` ``{name: (M S, ...)}``
        (draw-major, :meth:`draws`): the one term of :meth:`free_energy_gradient` that needs the
        field's backward."""
        draws = len(next(iter(phi.values()))) // obs.num_signals
        queries = repeat(obs.queries, "s ... -> (m s) ...", m=draws)
        pred = rearrange(learner.observe(phi, queries, forward_map), "(m s) ... -> m s ...", m=draws)
        return gaussian_nll(pred, obs.values, learner.log_sigma.detach()).sum() / draws

    def target_loss(self, v: Posterior, noise: Tree, target: Observations, forward_map) -> torch.Tensor:
        """The outer objective ``L(v)``: expected NLL per target value, mean over signals; with
        ``outer_objective="mean"`` the NLL at ``mu`` (one draw of zero noise: no gradient in rho)."""
        per_value = target.values.shape[1] * target.values.shape[2]
        if self.outer_objective == "mean":
            noise = {k: torch.zeros_like(e[:1]) for k, e in noise.items()}
        return self.expected_nll(v, noise, target, forward_map).mean() / per_value

    # -- inner loop -----------------------------------------------------------------------------
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
        ``shard`` places fresh draws in a distributed meta-batch (:meth:`draw_noise`). With
        ``mean_step_cap`` every step on ``mu`` is cut at the Gauss-Newton minimiser along it, under
        the noise of that step's gradient (:func:`~genfield.meta.ibaml_inner.mean_step_cap`).
        """
        S = context.num_signals
        if init is None:
            prior = self.prior() if create_graph else self.prior().detached()
            init = prior.posterior(S)
        logvar = self.prior().logvar
        if not create_graph:
            logvar = {k: t.detach() for k, t in logvar.items()}
        rates_mu = mean_rates(self.inner_lr, self.inner_optimizer, self.precondition, logvar, create_graph)
        if noise is None and self.noise_seed is not None:  # every seeded draw is this one: draw it once
            noise = self.draw_noise(S, shard=shard)

        drawn: dict[str, Tree] = {}  # this step's noise: its gradient's, and its step cap's

        def step_noise() -> Tree:
            drawn["eps"] = self.draw_noise(S, shard=shard) if noise is None else noise
            return drawn["eps"]

        def objective(v: Posterior) -> torch.Tensor:
            return self.free_energy(v, step_noise(), context, forward_map, not create_graph).sum()

        def gradient(v: Posterior) -> Posterior:
            return self.free_energy_gradient(v, step_noise(), context, forward_map)

        limit_step = None
        if self.mean_step_cap:
            limit_step = mean_step_cap(
                lambda v, u: nll_curvature_along(
                    self,
                    v,
                    first_of_pairs(drawn["eps"], self.antithetic),
                    u,
                    context,
                    forward_map,
                    create_graph,
                ),
                logvar,
            )

        if self.logvar_step == "optimizer":
            rates = Posterior(rates_mu, {k: self.inner_lr_logvar for k in init.rho})
            optimizer = self.inner_optimizer
            precondition = (
                None if optimizer == "adam" else mean_preconditioner(self.precondition, logvar, create_graph)
            )  # Adam: its rates carry the prior scale (mean_rates)
        else:  # the hook takes the whole step; the loop applies it as SGD at rate 1
            rates = Posterior(rates_mu, {k: 1.0 for k in init.rho})
            optimizer, precondition = (
                "sgd",
                fixed_point_transform(
                    self.inner_optimizer, self.precondition, logvar, self.inner_lr_logvar, create_graph
                ),
            )
        closed_form = self.inner_gradient == "closed_form" and not create_graph
        with self.compiled_inner.timing() if closed_form else nullcontext():
            return inner_loop(
                objective,
                init,
                steps,
                rates,
                optimizer,
                create_graph=create_graph,
                precondition=precondition,
                gradient=gradient if closed_form else None,
                limit_step=limit_step,
            )

    def _inner_noise(self, noise: Tree) -> Tree | None:
        return noise if self.inner_noise == "fixed" else None

    def adapt(self, context: Observations, forward_map: ForwardMap, steps: int | None = None) -> AdaptedState:
        steps = self.inner_steps if steps is None else steps
        noise = self._inner_noise(self.draw_noise(context.num_signals))
        mu, rho = self.adapt_posterior(context, forward_map, noise, steps)
        return AdaptedState(mu, rho, context, forward_map)

    # -- meta-gradient --------------------------------------------------------------------------
    def implicit_gradient(
        self, v: Posterior, noise: Tree, batch: SignalBatch
    ) -> tuple[Tree, dict[str, torch.Tensor]]:
        """The meta-gradient at a (near-)stationary ``v`` of ``F``
        (:func:`~genfield.meta.ibaml_gradient.ibaml_gradient`)."""
        return ibaml_gradient(self, v, noise, batch)

    def curvature_operator(
        self, v: Posterior, pred_ctx: torch.Tensor, grad_nll: tuple[torch.Tensor, ...]
    ) -> tuple[Operator, Posterior]:
        """``(p -> A p, diagonal)`` (:func:`~genfield.meta.ibaml_gradient.curvature_operator`)."""
        return curvature_operator(self, v, pred_ctx, grad_nll)

    def _outer_and_gradient(self, batch: SignalBatch) -> tuple[Tree, dict[str, torch.Tensor]]:
        noise = self.draw_noise(batch.num_signals, shard=batch.shard)  # shard: under torch.distributed
        v = self.adapt_posterior(
            batch.context, batch.forward_map, self._inner_noise(noise), self.inner_steps, shard=batch.shard
        )
        return self.implicit_gradient(v, noise, batch)

    def outer_loss(self, batch: SignalBatch) -> torch.Tensor:
        noise = self.draw_noise(batch.num_signals)
        v = self.adapt_posterior(batch.context, batch.forward_map, self._inner_noise(noise), self.inner_steps)
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
        """The posterior predictive at ``queries`` (:mod:`genfield.meta.ibaml_predictive`), its std
        times the calibrated ``std_scale`` (:mod:`genfield.calibration`)."""
        return scaled(
            posterior_predictive(self, state, queries, query_map, num_samples, variance), self.std_scale
        )
