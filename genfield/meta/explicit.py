"""Explicit estimators: MAML (backprop through K), first-order MAML and Reptile.

All three learn an initialisation ``theta`` from which K inner steps on a signal's context loss
``L_ctx`` give adapted parameters ``phi_K(theta)``; the outer loss is the target loss
``L_tgt(phi_K)`` averaged over the signals of the meta-batch.

* **MAML** (Finn et al. 2017): ``dL_tgt(phi_K(theta)) / dtheta`` by backpropagation through the K
  steps (second order; memory grows linearly with K). With ``meta_sgd=True`` the inner learning rates
  are per-parameter meta-parameters (Meta-SGD, Li et al. 2017) learned by the same gradient.
* **FOMAML**: drop the second-order terms, ``dphi_K / dtheta ~ I``: the meta-gradient is
  ``mean_s grad L_tgt(phi_K,s)``.
* **Reptile** (Nichol et al. 2018; the Learned Initializations recipe of Tancik et al. 2021): the
  meta-gradient is ``mean_s (theta - phi_K,s)``; a gradient step on it moves ``theta`` towards the
  adapted parameters.

Parameters that are not adapted (``adapt_keys``) receive the gradient of the outer loss: exact for
MAML, at ``phi_K`` held fixed for FOMAML and Reptile.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from genfield.datasets.batch import Observations, SignalBatch
from genfield.errors import InputError, unknown_name
from genfield.forward import ForwardMap
from genfield.meta.inner import InnerHealth, cap_rates, inner_loop, top_curvature, warn_non_finite
from genfield.meta.learner import AdaptedState, MetaLearner, _module_key, field_tree
from genfield.meta.likelihood import mse
from genfield.meta.tree import Tree, expand_signals, leaves

INNER_LR_SHAPES = ("parameter", "layer")


class InitLearner(MetaLearner):
    """A learner whose meta-parameters include an initialisation ``init/...`` of the adapted keys.

    ``meta_sgd=True`` learns the inner rates too (Meta-SGD, Li et al. 2017), one per parameter entry
    (``inner_lr_per="parameter"``) or one per parameter tensor (``"layer"``: the per-layer rates of
    MAML++, Antoniou et al. 2019). With ``inner_lr_max`` the learned rate is bounded,
    ``alpha = inner_lr_max * sigmoid(rho)`` with ``rho`` the meta-parameter, started at
    ``alpha = inner_lr``: the outer loop can lower a rate as the curvature at the initialisation grows
    (an SGD step diverges along a direction of curvature ``lambda`` once ``alpha lambda > 2``) but
    never raise it past the bound.

    ``curvature_cap=c`` bounds the inner rate by the curvature instead: before the inner loop, each
    signal's largest Hessian eigenvalue magnitude ``|lambda|`` of the context loss at the
    initialisation is estimated (``curvature_iterations`` steps of power iteration,
    :func:`~genfield.meta.inner.top_curvature`) and that signal's rates are scaled so that
    ``alpha |lambda| <= c`` (:func:`~genfield.meta.inner.cap_rates`).
    Why: MAML's outer loop sharpens its initialisation (a sharper one adapts faster in K steps) until
    ``alpha lambda`` passes 2; the inner loop then diverges along the sharpest direction and the
    meta-gradient, a product of K factors ``(I - alpha H)``, explodes.
    """

    def __init__(
        self,
        field,
        *,
        meta_sgd: bool = False,
        inner_lr_per: str = "parameter",
        inner_lr_max: float | None = None,
        curvature_cap: float | None = None,
        curvature_iterations: int = 3,
        **options,
    ) -> None:
        super().__init__(field, **options)
        if curvature_cap is not None and not 0 < curvature_cap < 2:
            raise InputError(f"curvature_cap={curvature_cap}: need a value in (0, 2) (SGD diverges at 2)")
        if curvature_iterations < 1:
            raise InputError(f"curvature_iterations={curvature_iterations}: need >= 1")
        self.curvature_cap, self.curvature_iterations = curvature_cap, curvature_iterations
        if inner_lr_per not in INNER_LR_SHAPES:
            raise unknown_name("inner_lr_per", inner_lr_per, INNER_LR_SHAPES)
        if inner_lr_max is not None and not inner_lr_max > self.inner_lr:
            raise InputError(f"inner_lr_max={inner_lr_max}: need a bound above inner_lr={self.inner_lr}")
        self.init = nn.ParameterDict({_module_key(k): nn.Parameter(v) for k, v in self._initial.items()})
        self.meta_sgd, self.inner_lr_max = meta_sgd, inner_lr_max
        start = (
            self.inner_lr
            if inner_lr_max is None
            else math.log(self.inner_lr / (inner_lr_max - self.inner_lr))
        )

        def rate(v: torch.Tensor) -> torch.Tensor:
            return torch.full_like(v, start) if inner_lr_per == "parameter" else v.new_full((), start)

        self.inner_lrs = nn.ParameterDict(
            {_module_key(k): nn.Parameter(rate(v)) for k, v in self._initial.items()} if meta_sgd else {}
        )

    def meta_parameters(self) -> dict[str, nn.Parameter]:
        return {
            **self._group("init", self.init),
            **self._group("inner_lr", self.inner_lrs),
            **super().meta_parameters(),
        }

    def theta(self) -> Tree:
        """The learned initialisation ``{field name: tensor}``."""
        return field_tree(self.init)

    def _rates(self) -> float | Tree:
        """The inner rates: the fixed ``inner_lr``, or the learned (bounded) Meta-SGD rates."""
        if not self.meta_sgd:
            return self.inner_lr
        rates = field_tree(self.inner_lrs)
        if self.inner_lr_max is None:
            return rates
        return {k: self.inner_lr_max * torch.sigmoid(p) for k, p in rates.items()}

    def context_objective(self, context: Observations, forward_map: ForwardMap):
        """The inner objective: the sum over signals of each signal's context loss."""
        return lambda params: self.inner_loss(params, context, forward_map).sum()

    def inner_loss(self, params: Tree, obs: Observations, forward_map: ForwardMap) -> torch.Tensor:
        """Per-signal inner objective ``(S,)`` (context MSE; iMAML adds its proximal term)."""
        return mse(self.observe(params, obs.queries, forward_map), obs.values)

    def _adapted(
        self,
        context: Observations,
        forward_map: ForwardMap,
        steps: int,
        create_graph: bool,
        health: InnerHealth | None = None,
    ) -> Tree:
        theta = self.theta()
        if not create_graph:
            theta = {k: v.detach() for k, v in theta.items()}
        init = expand_signals(theta, context.num_signals)
        objective = self.context_objective(context, forward_map)
        rates = self._rates()
        if self.curvature_cap is not None and steps > 0:
            exact = self.field.supports_double_backward
            curvature = top_curvature(objective, init, self.curvature_iterations, double_backward=exact)
            rates = cap_rates(rates, init, curvature, self.curvature_cap)
        if create_graph:
            return inner_loop(
                objective, init, steps, rates, self.inner_optimizer, create_graph=True, health=health
            )
        compiled = self.compiled_inner
        with compiled.timing():
            return inner_loop(
                lambda params: compiled(self.first_order_loss, self, params, context, forward_map),
                init,
                steps,
                rates,
                self.inner_optimizer,
                health=health,
            )

    @staticmethod
    def first_order_loss(
        learner: MetaLearner, params: Tree, obs: Observations, forward_map: ForwardMap
    ) -> torch.Tensor:
        """The inner objective of every signal, summed (:meth:`inner_loss`; iMAML's proximal term
        included)."""
        return learner.inner_loss(params, obs, forward_map).sum()

    def adapt(self, context: Observations, forward_map: ForwardMap, steps: int | None = None) -> AdaptedState:
        steps = self.inner_steps if steps is None else steps
        health = InnerHealth()
        params = self._adapted(context, forward_map, steps, create_graph=False, health=health)
        warn_non_finite(self.name, health.finite)  # the one host sync of an adaptation
        return AdaptedState(params, finite=health.finite)

    def outer_loss(self, batch: SignalBatch) -> torch.Tensor:
        phi = self._adapted(batch.context, batch.forward_map, self.inner_steps, torch.is_grad_enabled())
        return mse(self.observe(phi, batch.target.queries, batch.forward_map), batch.target.values).mean()


class MAML(InitLearner):
    """MAML (``first_order=False``) and FOMAML (``first_order=True``); see the module docstring."""

    def __init__(self, field, *, first_order: bool = False, **options) -> None:
        self.first_order = first_order
        self.name = "fomaml" if first_order else "maml"
        self.needs_double_backward = not first_order
        if first_order and options.get("meta_sgd"):
            raise InputError("meta_sgd=True needs the second-order 'maml' estimator")
        super().__init__(field, **options)

    def _outer_and_gradient(self, batch: SignalBatch) -> tuple[Tree, dict[str, torch.Tensor]]:
        named = self.meta_parameters()
        health = InnerHealth()
        with torch.enable_grad():
            phi = self._adapted(
                batch.context, batch.forward_map, self.inner_steps, not self.first_order, health
            )
            if self.first_order:
                phi = leaves(phi)
            pred = self.observe(phi, batch.target.queries, batch.forward_map)
            outer = mse(pred, batch.target.values).mean()
            wrt = list(phi.values()) + list(named.values()) if self.first_order else list(named.values())
            grads = torch.autograd.grad(outer, wrt, allow_unused=True, materialize_grads=True)
        if self.first_order:
            by_phi = dict(zip(phi, grads[: len(phi)]))
            grads = dict(zip(named, grads[len(phi) :]))
            grads.update(self.named("init", {k: g.sum(0) for k, g in by_phi.items()}))
        else:
            grads = dict(zip(named, grads))
        return grads, {"loss": outer.detach(), "ok": health.all_finite(), "inner_finite": health.all_finite()}


class Reptile(InitLearner):
    """Reptile: meta-gradient ``mean_s (theta - phi_K,s)``; see the module docstring."""

    name = "reptile"

    def __init__(self, field, **options) -> None:
        if options.get("meta_sgd"):
            raise InputError("meta_sgd=True needs the second-order 'maml' estimator")
        super().__init__(field, **options)

    def _outer_and_gradient(self, batch: SignalBatch) -> tuple[Tree, dict[str, torch.Tensor]]:
        health = InnerHealth()
        phi = self._adapted(batch.context, batch.forward_map, self.inner_steps, False, health)
        theta = self.theta()
        grads = self.named("init", {k: (theta[k].detach() - v).mean(0) for k, v in phi.items()})
        shared = self.shared_meta_parameters()
        with torch.set_grad_enabled(bool(shared)):
            pred = self.observe(phi, batch.target.queries, batch.forward_map)
            outer = mse(pred, batch.target.values).mean()
        if shared:
            direct = torch.autograd.grad(
                outer, list(shared.values()), allow_unused=True, materialize_grads=True
            )
            grads.update(zip(shared, direct))
        return grads, {"loss": outer.detach(), "ok": health.all_finite(), "inner_finite": health.all_finite()}
