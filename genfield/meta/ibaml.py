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

Nothing is backpropagated through the inner trajectory: memory does not grow with K.

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

import torch
from einops import rearrange, repeat
from torch import nn

from genfield.datasets.batch import Observations, SignalBatch
from genfield.distributed import randn_for_shard
from genfield.errors import InputError, unknown_name
from genfield.forward import ForwardMap
from genfield.interface import Prediction
from genfield.meta.bayes import (
    kl_cross_transpose,
    kl_curvature,
    kl_diag_gaussians,
    kl_gradient,
    reparameterise,
    rho_curvature,
)
from genfield.meta.cg import CURVATURES, conjugate_gradient, gauss_newton_hvp
from genfield.meta.inner import inner_loop
from genfield.meta.laplace import linearized_variance
from genfield.meta.learner import AdaptedState, MetaLearner, _module_key
from genfield.meta.likelihood import gaussian_nll
from genfield.meta.tree import Tree, expand_signals, leaves

#: Monte-Carlo noise of the inner loop: one draw per meta-step, or a fresh draw per inner step.
INNER_NOISE = ("fixed", "fresh")
#: Diagonal preconditioners of the inner gradient of the posterior mean.
PRECONDITIONERS = ("none", "prior", "posterior")
#: The learned noise's meta-gradient: the target NLL's own (direct) or through the inner optimum too.
NOISE_GRADIENTS = ("direct", "implicit")
#: Predictive distributions: linearized Laplace under the prior, or samples of the mean-field q.
PREDICTIVES = ("laplace", "mean_field")
#: Inner updates of the posterior log-variance: the damped closed-form fixed point, or the optimizer's.
LOGVAR_STEPS = ("fixed_point", "optimizer")
#: The inner gradient of the free energy: closed form around the field's backward, or autograd of all.
INNER_GRADIENTS = ("closed_form", "autograd")
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


def _split(v: Tree) -> tuple[Tree, Tree]:
    mu = {k[3:]: t for k, t in v.items() if k.startswith("mu/")}
    rho = {k[4:]: t for k, t in v.items() if k.startswith("rho/")}
    return mu, rho


def _join(mu: Tree, rho: Tree) -> Tree:
    return {**{f"mu/{k}": t for k, t in mu.items()}, **{f"rho/{k}": t for k, t in rho.items()}}


class IBaML(MetaLearner):
    """iBaML; see the module docstring for the model and the meta-gradient.

    Options beyond :class:`MetaLearner`'s: ``prior_std`` (initial prior standard deviation),
    ``inner_lr_logvar`` (inner learning rate of ``rho``; ``None``: ``inner_lr``), ``mc_samples``,
    ``obs_noise`` (sigma), ``learn_obs_noise``, ``cg_iterations``, ``cg_damping``, ``cg_tol``,
    ``curvature`` (``hessian`` or ``gauss_newton``), ``noise_seed`` (draw the Monte-Carlo noise
    from this seed at every meta-step: common random
    numbers across calls, for tests), ``predictive_noise`` (add sigma^2 to predictive variances),
    ``inner_noise`` (``fresh`` or ``fixed``), ``precondition`` (``none``, ``prior``,
    ``posterior``; the last needs SGD), ``relative_prior``, ``predictive`` (``laplace`` or
    ``mean_field``, see the module docstring), ``noise_gradient`` (``direct`` or ``implicit``),
    ``logvar_step`` (``fixed_point``: the damped closed-form update of ``rho`` whatever the mean's
    optimizer, ``inner_lr_logvar`` its damping; ``optimizer``: ``rho`` stepped like ``mu``),
    ``inner_gradient`` (``closed_form``: :meth:`free_energy_gradient`; ``autograd``: the same
    numbers by autograd of :meth:`free_energy`, the reference it is checked and timed against).
    """

    name = "ibaml"
    needs_double_backward = True

    def __init__(
        self,
        field,
        *,
        prior_std: float = 0.0125,
        inner_lr_logvar: float | None = 0.1,
        mc_samples: int = 2,
        obs_noise: float = 0.1,
        learn_obs_noise: bool = True,
        cg_iterations: int = 20,
        cg_damping: float = 0.0,
        cg_tol: float = 0.1,
        noise_seed: int | None = None,
        predictive_noise: bool = True,
        inner_optimizer: str = "sgd",
        inner_lr: float = 0.5,
        curvature: str = "gauss_newton",
        inner_noise: str = "fresh",
        precondition: str = "posterior",
        relative_prior: bool = False,
        lr_scale_logvar: float = 30.0,
        lr_scale_obs_noise: float = 5.0,
        antithetic: bool = True,
        predictive: str = "laplace",
        noise_gradient: str = "direct",
        logvar_step: str = "fixed_point",
        inner_gradient: str = "closed_form",
        **options,
    ) -> None:
        if options.pop("meta_sgd", False):
            raise InputError("meta_sgd=True needs the second-order 'maml' estimator")
        if prior_std <= 0 or obs_noise <= 0 or mc_samples < 1 or cg_iterations < 1:
            raise InputError(
                f"prior_std={prior_std} obs_noise={obs_noise} mc_samples={mc_samples} "
                f"cg_iterations={cg_iterations}: need positive values"
            )
        if curvature not in CURVATURES:
            raise unknown_name("curvature", curvature, CURVATURES)
        if inner_noise not in INNER_NOISE:
            raise unknown_name("inner_noise", inner_noise, INNER_NOISE)
        if precondition not in PRECONDITIONERS:
            raise unknown_name("precondition", precondition, PRECONDITIONERS)
        if predictive not in PREDICTIVES:
            raise unknown_name("predictive", predictive, PREDICTIVES)
        if noise_gradient not in NOISE_GRADIENTS:
            raise unknown_name("noise_gradient", noise_gradient, NOISE_GRADIENTS)
        if logvar_step not in LOGVAR_STEPS:
            raise unknown_name("logvar_step", logvar_step, LOGVAR_STEPS)
        if inner_gradient not in INNER_GRADIENTS:
            raise unknown_name("inner_gradient", inner_gradient, INNER_GRADIENTS)
        self.inner_gradient = inner_gradient
        self.predictive, self.noise_gradient, self.logvar_step = predictive, noise_gradient, logvar_step
        if logvar_step == "fixed_point" and inner_lr_logvar is not None and not 0 < inner_lr_logvar < 2:
            raise InputError(
                f"inner_lr_logvar={inner_lr_logvar}: the damping of the fixed-point step of rho "
                "(logvar_step='fixed_point') must lie in (0, 2); 1 jumps to the fixed point"
            )
        if precondition == "posterior" and inner_optimizer == "adam":
            raise InputError("precondition='posterior' needs inner_optimizer='sgd'")
        self.curvature, self.inner_noise, self.precondition = curvature, inner_noise, precondition
        super().__init__(field, inner_optimizer=inner_optimizer, inner_lr=inner_lr, **options)
        self.prior_mean = nn.ParameterDict(
            {_module_key(k): nn.Parameter(v) for k, v in self._initial.items()}
        )
        def initial_logvar(v: torch.Tensor) -> torch.Tensor:
            std = prior_std * (v.square().mean().sqrt().clamp_min(1e-3) if relative_prior else 1)
            return torch.full_like(v, 2 * math.log(std))

        self.prior_logvar = nn.ParameterDict(
            {_module_key(k): nn.Parameter(initial_logvar(v)) for k, v in self._initial.items()}
        )
        log_sigma = torch.tensor(math.log(obs_noise))
        if learn_obs_noise:
            self.log_sigma = nn.Parameter(log_sigma)
        else:
            self.register_buffer("log_sigma", log_sigma)
        self.learn_obs_noise = learn_obs_noise
        self.inner_lr_logvar = self.inner_lr if inner_lr_logvar is None else inner_lr_logvar
        self.mc_samples, self.noise_seed, self.predictive_noise = mc_samples, noise_seed, predictive_noise
        self.cg_iterations, self.cg_damping, self.cg_tol = cg_iterations, cg_damping, cg_tol
        if lr_scale_logvar <= 0 or lr_scale_obs_noise <= 0:
            raise InputError(
                f"lr_scale_logvar={lr_scale_logvar} lr_scale_obs_noise={lr_scale_obs_noise}: "
                "need positive values"
            )
        self.lr_scale_logvar, self.lr_scale_obs_noise = lr_scale_logvar, lr_scale_obs_noise
        self.antithetic = antithetic

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
        named = self.meta_parameters()
        logvar = [p for k, p in named.items() if k.startswith("prior_logvar/")]
        noise = [p for k, p in named.items() if k == "log_sigma"]
        rest = [p for k, p in named.items() if not k.startswith("prior_logvar/") and k != "log_sigma"]
        groups = [{"params": rest, "lr": lr}, {"params": logvar, "lr": lr * self.lr_scale_logvar}]
        if noise:
            groups.append({"params": noise, "lr": lr * self.lr_scale_obs_noise})
        return groups

    def prior(self) -> tuple[Tree, Tree]:
        """The prior mean and log-variance ``({name: m}, {name: l})``."""
        unkey = lambda store: {k.replace("__", "."): p for k, p in store.items()}  # noqa: E731
        return unkey(self.prior_mean), unkey(self.prior_logvar)

    @property
    def obs_noise(self) -> torch.Tensor:
        return self.log_sigma.exp()

    def draw_noise(self, num_signals: int, num_samples: int | None = None) -> Tree:
        """Standard normal noise ``{name: (M, S, ...)}`` for the reparameterisation.

        With ``antithetic`` and an even ``M``, the draws come in pairs ``(eps, -eps)``: the
        residual term ``eps . grad NLL(mu)`` of the log-variance gradient, which is zero in
        expectation but ~10x the curvature signal ``e^{rho} h`` for an unfitted field, cancels
        exactly, and so does the first-order noise of the mean's gradient."""
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
        shard = getattr(self, "_shard", None)
        noise = {
            k: randn_for_shard(draws, num_signals, tuple(p.shape), shard, generator, p.dtype, p.device)
            for k, p in m.items()
        }
        return {k: torch.cat([e, -e]) for k, e in noise.items()} if pairs else noise

    # -- objectives -----------------------------------------------------------------------------
    def sample_observations(
        self, v: Tree, noise: Tree, queries: torch.Tensor, forward_map: ForwardMap
    ) -> torch.Tensor:
        """Observations ``(M, S, N, c)`` of the ``M`` reparameterised draws of every signal."""
        draws = len(next(iter(noise.values())))
        queries = repeat(queries, "s ... -> (m s) ...", m=draws)
        pred = self.observe(self.draws(v, noise), queries, forward_map)
        return rearrange(pred, "(m s) ... -> m s ...", m=draws)

    def draws(self, v: Tree, noise: Tree) -> Tree:
        """The reparameterised weights ``mu + e^{rho/2} eps`` of the ``M`` draws of every signal,
        ``{name: (M S, ...)}`` (draw-major: one batch the field evaluates in one vmapped call)."""
        mu, rho = _split(v)
        return {
            k: rearrange(reparameterise(mu[k], rho[k], noise[k]), "m s ... -> (m s) ...") for k in mu
        }

    def expected_nll(
        self, v: Tree, noise: Tree, obs: Observations, forward_map: ForwardMap
    ) -> torch.Tensor:
        """Monte-Carlo ``E_q[NLL]`` of each signal's observations, summed over them: ``(S,)``."""
        pred = self.sample_observations(v, noise, obs.queries, forward_map)
        return gaussian_nll(pred, obs.values, self.log_sigma).mean(0)

    def kl(self, v: Tree, detach_prior: bool = False) -> torch.Tensor:
        """``KL(q_v || p_theta)`` of each signal: ``(S,)``."""
        mu, rho = _split(v)
        m, l = self.prior()
        if detach_prior:  # the first-order inner loop must not keep graphs into the prior
            m, l = ({k: t.detach() for k, t in d.items()} for d in (m, l))
        return sum(kl_diag_gaussians(mu[k], rho[k], m[k], l[k]).flatten(1).sum(1) for k in mu)

    def free_energy(
        self,
        v: Tree,
        noise: Tree,
        context: Observations,
        forward_map: ForwardMap,
        detach_prior: bool = False,
    ) -> torch.Tensor:
        """The inner objective ``F(v, theta)`` of each signal: ``(S,)``."""
        return self.expected_nll(v, noise, context, forward_map) + self.kl(v, detach_prior)

    def free_energy_gradient(
        self, v: Tree, noise: Tree, context: Observations, forward_map: ForwardMap
    ) -> Tree:
        """``grad_v F`` of every signal (detached), with one autograd call through the field alone.

        The KL and the reparameterisation ``w_j = mu + e^{rho/2} eps_j`` have closed-form
        derivatives (:mod:`genfield.meta.bayes`), so only ``g_j = grad_w NLL(w_j) / M`` needs the
        field's backward, taken at detached draws:

            dF/dmu  = sum_j g_j + (mu - m) e^{-l}
            dF/drho = 1/2 e^{rho/2} sum_j eps_j g_j + 1/2 (e^{rho - l} - 1)

        The same numbers as autograd of :meth:`free_energy`, without its graph of the sampling and
        the KL (per tensor: exp, products, the prior's broadcasts, and their backward)."""
        mu, rho = _split(v)
        m, l = self.prior()
        draws = len(next(iter(noise.values())))
        with torch.no_grad():
            phi = {k: t.requires_grad_(True) for k, t in self.draws(v, noise).items()}
            queries = repeat(context.queries, "s ... -> (m s) ...", m=draws)
        with torch.enable_grad():
            pred = rearrange(self.observe(phi, queries, forward_map), "(m s) ... -> m s ...", m=draws)
            nll = gaussian_nll(pred, context.values, self.log_sigma.detach()).sum() / draws
            grads = torch.autograd.grad(nll, list(phi.values()))
        out = {}
        with torch.no_grad():
            for k, g in zip(phi, grads):
                g = rearrange(g, "(m s) ... -> m s ...", m=draws)
                mean_kl, logvar_kl = kl_gradient(mu[k], rho[k], m[k].detach(), l[k].detach())
                out[f"mu/{k}"] = g.sum(0) + mean_kl
                out[f"rho/{k}"] = 0.5 * torch.exp(0.5 * rho[k]) * (noise[k] * g).sum(0) + logvar_kl
        return {k: out[k] for k in v}

    def target_loss(self, v: Tree, noise: Tree, target: Observations, forward_map) -> torch.Tensor:
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

        def precondition(v: Tree, grads: Tree) -> Tree:
            out = dict(grads)
            for k, g in grads.items():
                if k.startswith("rho/"):  # log fixed-point step: stable where the data curvature is large
                    out[k] = 0.5 * logvar_fixed_point_step(g)
                    continue
                if self.precondition == "prior":
                    scale = l[k[3:]] if create_graph else l[k[3:]].detach()
                else:
                    scale = v[f"rho/{k[3:]}"] if create_graph else v[f"rho/{k[3:]}"].detach()
                out[k] = torch.exp(scale) * g
            return out

        return precondition

    def _mean_rates(self, create_graph: bool) -> dict[str, float | torch.Tensor]:
        """Inner learning rates of ``mu``. Adam's steps are about ``inner_lr`` per weight whatever
        the gradient's scale, so with ``precondition="prior"`` its rate is measured in prior
        standard deviations, ``inner_lr e^{l/2}`` (weights of a SIREN differ in scale by 30x)."""
        m, l = self.prior()
        if self.inner_optimizer != "adam" or self.precondition == "none":
            return {f"mu/{k}": self.inner_lr for k in m}
        return {
            f"mu/{k}": self.inner_lr * torch.exp(0.5 * (t if create_graph else t.detach()))
            for k, t in l.items()
        }

    def adapt_posterior(
        self,
        context: Observations,
        forward_map: ForwardMap,
        noise: Tree | None,
        steps: int,
        init: Tree | None = None,
        create_graph: bool = False,
    ) -> Tree:
        """``v_K``: K inner steps on ``F`` from the prior (or from ``init``).

        ``noise`` is held fixed for all K steps (``F`` is then one deterministic function); with
        ``noise=None`` every step draws fresh noise (:meth:`draw_noise`), a stochastic-gradient
        descent on the exact expectation ``E_q[NLL]`` that cannot overfit one set of draws.
        ``create_graph=True`` keeps the trajectory differentiable in the prior: the *explicit*
        (backprop-through-K) Bayesian meta-gradient, for comparison with the implicit one.
        """
        S = context.num_signals
        if init is None:
            m, l = self.prior()
            if not create_graph:
                m, l = ({k: t.detach() for k, t in d.items()} for d in (m, l))
            init = _join(expand_signals(m, S), expand_signals(l, S))
        rates = self._mean_rates(create_graph)
        if noise is None and self.noise_seed is not None:  # every seeded draw is this one: draw it once
            noise = self.draw_noise(S)

        def objective(v: Tree) -> torch.Tensor:
            eps = self.draw_noise(S) if noise is None else noise
            return self.free_energy(v, eps, context, forward_map, not create_graph).sum()

        def gradient(v: Tree) -> Tree:
            eps = self.draw_noise(S) if noise is None else noise
            return self.free_energy_gradient(v, eps, context, forward_map)

        if self.logvar_step == "optimizer":
            rates.update({k: self.inner_lr_logvar for k in init if k.startswith("rho/")})
            optimizer, precondition = self.inner_optimizer, self._preconditioner(create_graph)
        else:  # the hook takes the whole step; the loop applies it as SGD at rate 1
            rates.update({k: 1.0 for k in init if k.startswith("rho/")})
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

        def hook(v: Tree, grads: Tree) -> Tree:
            nonlocal step
            step += 1
            rate = max(self.inner_lr_logvar, 1 / step)
            logvar = {k: rate * logvar_fixed_point_step(g) for k, g in grads.items() if k.startswith("rho/")}
            mean = {k: g for k, g in grads.items() if k.startswith("mu/")}
            if self.inner_optimizer == "adam":
                (b1, b2), c1, c2 = ADAM_BETAS, 1 - ADAM_BETAS[0] ** step, 1 - ADAM_BETAS[1] ** step
                for k, g in mean.items():
                    first[k] = b1 * first.get(k, 0) + (1 - b1) * g
                    second[k] = b2 * second.get(k, 0) + (1 - b2) * g.square()
                    mean[k] = (first[k] / c1) / ((second[k] / c2).sqrt() + ADAM_EPS)
            elif mean_precondition is not None:  # "posterior": the variance this step sets
                mean = mean_precondition({**v, **{k: v[k] - d for k, d in logvar.items()}}, mean)
            return {**mean, **logvar}

        return hook

    def _inner_noise(self, noise: Tree) -> Tree | None:
        return noise if self.inner_noise == "fixed" else None

    def adapt(
        self, context: Observations, forward_map: ForwardMap, steps: int | None = None
    ) -> AdaptedState:
        steps = self.inner_steps if steps is None else steps
        noise = self._inner_noise(self.draw_noise(context.num_signals))
        mu, rho = _split(self.adapt_posterior(context, forward_map, noise, steps))
        return AdaptedState(mu, rho, context, forward_map)

    # -- meta-gradient --------------------------------------------------------------------------
    def implicit_gradient(
        self, v: Tree, noise: Tree, batch: SignalBatch
    ) -> tuple[Tree, dict[str, torch.Tensor]]:
        """The meta-gradient at a (near-)stationary ``v`` of ``F``; see the module docstring."""
        v = leaves(v)
        named = self.meta_parameters()
        extra = {k: p for k, p in named.items() if k.startswith("shared/") or k == "log_sigma"}
        with torch.enable_grad():
            pred_ctx = self.sample_observations(v, noise, batch.context.queries, batch.forward_map)
            nll_ctx = gaussian_nll(pred_ctx, batch.context.values, self.log_sigma).mean(0).sum()
            grad_nll = torch.autograd.grad(nll_ctx, list(v.values()), create_graph=True)
            outer = self.target_loss(v, noise, batch.target, batch.forward_map)
            b = torch.autograd.grad(
                outer, [*v.values(), *extra.values()], allow_unused=True, materialize_grads=True
            )
        b_v = dict(zip(v, b[: len(v)]))
        mu, rho = _split(v)
        m, l = self.prior()
        m = {k: t.detach() for k, t in m.items()}
        l = {k: t.detach() for k, t in l.items()}
        hvp, curvature = self.curvature_operator(v, pred_ctx, grad_nll)

        # Jacobi preconditioner from the diagonal part (the KL's, and the rho term): with a prior whose
        # variances span decades (relative_prior on a SIREN) plain CG would stall; (P A) ~ I + P H_nll.
        jacobi = {k: 1 / (c.expand_as(v[k]) + self.cg_damping) for k, c in curvature.items()}
        solve = conjugate_gradient(
            hvp, b_v, self.cg_iterations, self.cg_damping, self.cg_tol, preconditioner=jacobi
        )
        x_mu, x_rho = _split(solve.x)
        grads = {}
        for k in mu:
            cross_m, cross_l = kl_cross_transpose(
                x_mu[k], x_rho[k], mu[k].detach(), rho[k].detach(), m[k], l[k]
            )
            grads[f"prior_mean/{k}"] = -cross_m.sum(0)
            grads[f"prior_logvar/{k}"] = -cross_l.sum(0)
        if extra:
            cross = torch.autograd.grad(
                grad_nll, list(extra.values()), [solve.x[k] for k in v],
                allow_unused=True, materialize_grads=True,
            )
            grads.update({k: d - c for k, d, c in zip(extra, b[len(v) :], cross)})
            if self.noise_gradient == "direct" and "log_sigma" in extra:
                grads["log_sigma"] = b[len(v) + list(extra).index("log_sigma")]
        metrics = {
            "loss": outer.detach(),
            "cg_residual": solve.relative_residual.max().detach(),
            "obs_noise": self.obs_noise.detach(),
            "ok": solve.converged,
        }
        return grads, metrics

    def curvature_operator(
        self, v: Tree, pred_ctx: torch.Tensor, grad_nll: tuple[torch.Tensor, ...]
    ) -> tuple[object, Tree]:
        """``(p -> A p, diagonal)``: products with the curvature ``A`` of ``F`` in ``v`` at the
        leaves ``v`` (``pred_ctx``: the sampled context predictions, ``grad_nll``: the expected
        context NLL's gradient in ``v`` with its graph), and the diagonal part that is not the NLL's
        Hessian or Gauss-Newton term (the KL's; with Gauss-Newton also the reparameterisation's
        rho-rho term, :func:`~genfield.meta.bayes.rho_curvature`), the Jacobi preconditioner's."""
        mu, rho = _split(v)
        _, l = self.prior()
        curvature = {}
        for k in mu:
            curvature[f"mu/{k}"], curvature[f"rho/{k}"] = kl_curvature(rho[k].detach(), l[k].detach())
        if self.curvature == "gauss_newton":  # NLL = 1/M sum_j ||y - f_j||^2 / (2 sigma^2) + c
            weight = torch.exp(-2 * self.log_sigma.detach()) / len(pred_ctx)
            ggn = gauss_newton_hvp(pred_ctx, v, weight)
            grad_v = dict(zip(v, grad_nll))
            for k in rho:  # the reparameterisation's own curvature, which Gauss-Newton leaves out
                curvature[f"rho/{k}"] = rho_curvature(grad_v[f"rho/{k}"].detach(), curvature[f"rho/{k}"])

        def hvp(p: Tree) -> Tree:
            if self.curvature == "gauss_newton":
                hv = list(ggn(p).values())
            else:
                hv = torch.autograd.grad(grad_nll, list(v.values()), [p[k] for k in v], retain_graph=True)
            return {k: h + curvature[k] * p[k] for k, h in zip(v, hv)}

        return hvp, curvature

    def _outer_and_gradient(self, batch: SignalBatch) -> tuple[Tree, dict[str, torch.Tensor]]:
        self._shard = batch.extras.get("shard")  # (offset, global size) under torch.distributed
        try:
            noise = self.draw_noise(batch.num_signals)
            v = self.adapt_posterior(
                batch.context, batch.forward_map, self._inner_noise(noise), self.inner_steps
            )
            return self.implicit_gradient(v, noise, batch)
        finally:
            self._shard = None

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
                _join(state.params, state.logvar), noise, queries, query_map
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
