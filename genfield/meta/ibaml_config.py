"""iBaML's options, validated once: :class:`IBaMLConfig` (what each option does: :mod:`genfield.meta.ibaml`).

Every option has its default here, in one signature, and one check; a bad value is one
:class:`~genfield.errors.InputError` naming the option and its valid range.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from genfield.errors import InputError, unknown_name
from genfield.meta.cg import CURVATURES
from genfield.meta.inner import INNER_OPTIMIZERS

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
#: The outer objective: the target NLL in expectation over q, or at q's mean (what PSNR scores).
OUTER_OBJECTIVES = ("expected", "mean")

#: The options that name one of a fixed set of choices.
CHOICES = {
    "curvature": CURVATURES,
    "inner_noise": INNER_NOISE,
    "precondition": PRECONDITIONERS,
    "predictive": PREDICTIVES,
    "noise_gradient": NOISE_GRADIENTS,
    "logvar_step": LOGVAR_STEPS,
    "inner_gradient": INNER_GRADIENTS,
    "inner_optimizer": INNER_OPTIMIZERS,
    "outer_objective": OUTER_OBJECTIVES,
}
#: Numeric options: (lowest valid value, whether that value itself is valid).
BOUNDS = {
    "prior_std": (0, False),
    "obs_noise": (0, False),
    "mc_samples": (1, True),
    "cg_iterations": (1, True),
    "cg_damping": (0, True),
    "cg_tol": (0, False),
    "inner_lr": (0, False),
    "lr_scale_logvar": (0, False),
    "lr_scale_obs_noise": (0, False),
}


@dataclass(frozen=True)
class IBaMLConfig:
    """iBaML's own options (the inner-loop ones :class:`~genfield.meta.learner.MetaLearner` shares
    are ``inner_optimizer`` and ``inner_lr``, whose iBaML defaults live here).

    ``prior_std`` (initial prior standard deviation), ``inner_lr_logvar`` (inner learning rate of
    ``rho``; ``None``: ``inner_lr``), ``mc_samples``, ``obs_noise`` (sigma), ``learn_obs_noise``,
    ``cg_iterations``, ``cg_damping``, ``cg_tol``, ``cg_early_exit`` (stop CG once every residual is
    below ``cg_tol``; ``false``: the full count with no host read), ``curvature`` (``hessian`` or
    ``gauss_newton``), ``noise_seed`` (draw the Monte-Carlo noise from this seed at every
    meta-step: common random numbers across calls, for tests), ``predictive_noise`` (add sigma^2
    to predictive variances), ``inner_noise`` (``fresh`` or ``fixed``), ``precondition``
    (``none``, ``prior``, ``posterior``; the last needs SGD), ``relative_prior``, ``lr_scale_logvar``
    and ``lr_scale_obs_noise`` (outer Adam rates of the prior log-variance and the noise, relative
    to the others), ``antithetic``, ``predictive`` (``laplace`` or ``mean_field``),
    ``noise_gradient`` (``direct`` or ``implicit``), ``logvar_step`` (``fixed_point``: the damped
    closed-form update of ``rho`` whatever the mean's optimizer, ``inner_lr_logvar`` its damping;
    ``optimizer``: ``rho`` stepped like ``mu``), ``inner_gradient`` (``closed_form``: the
    first-order inner steps take :meth:`~genfield.meta.ibaml.IBaML.free_energy_gradient`;
    ``autograd``: the same numbers by autograd of the free energy, the reference it is checked and
    timed against; a differentiable inner loop always uses autograd), ``mean_step_cap`` (cut each
    step on ``mu`` at the minimiser of the Gauss-Newton model of ``F`` along it: a diagonal Newton
    step overshoots where the curvature has strong off-diagonal terms, e.g. SIREN occupancy),
    ``outer_objective`` (``expected``: the paper's ``E_q[NLL_tgt]``; ``mean``: ``NLL_tgt(mu)``, the
    target NLL of the posterior mean, which is what a PSNR scores: the expected NLL adds the spread
    ``tr(J Sigma J^T) / sigma^2`` of the draws at the targets, which the outer step can only shrink
    by narrowing the prior, i.e. by adapting less; the intervals come from the calibrated
    predictive either way).
    """

    prior_std: float = 0.0125
    inner_lr_logvar: float | None = 0.1
    mc_samples: int = 2
    obs_noise: float = 0.1
    learn_obs_noise: bool = True
    cg_iterations: int = 20
    cg_damping: float = 0.0
    cg_tol: float = 0.1
    cg_early_exit: bool = True
    noise_seed: int | None = None
    predictive_noise: bool = True
    inner_optimizer: str = "sgd"
    inner_lr: float = 0.5
    curvature: str = "gauss_newton"
    inner_noise: str = "fresh"
    precondition: str = "posterior"
    relative_prior: bool = False
    lr_scale_logvar: float = 30.0
    lr_scale_obs_noise: float = 5.0
    antithetic: bool = True
    predictive: str = "laplace"
    noise_gradient: str = "direct"
    logvar_step: str = "fixed_point"
    inner_gradient: str = "closed_form"
    mean_step_cap: bool = True
    outer_objective: str = "expected"

    def __post_init__(self) -> None:
        for name, valid in CHOICES.items():
            if getattr(self, name) not in valid:
                raise unknown_name(name, getattr(self, name), valid)
        for name, (low, closed) in BOUNDS.items():
            value = getattr(self, name)
            if not (value >= low if closed else value > low):
                raise InputError(f"{name}={value}: need a value {'>=' if closed else '>'} {low}")
        for name in ("mean_step_cap", "cg_early_exit"):
            if not isinstance(getattr(self, name), bool):
                raise InputError(f"{name}={getattr(self, name)!r}: need true or false")
        lr = self.inner_lr_logvar
        if lr is not None and self.logvar_step == "fixed_point" and not 0 < lr < 2:
            raise InputError(
                f"inner_lr_logvar={lr}: the damping of the fixed-point step of rho "
                "(logvar_step='fixed_point') must lie in (0, 2); 1 jumps to the fixed point"
            )
        if lr is not None and lr <= 0:
            raise InputError(f"inner_lr_logvar={lr}: need a value > 0 (or None: inner_lr)")
        if self.precondition == "posterior" and self.inner_optimizer == "adam":
            raise InputError("precondition='posterior' needs inner_optimizer='sgd'")

    @classmethod
    def names(cls) -> set[str]:
        """The option names."""
        return {f.name for f in fields(cls)}
