"""iMAML: implicit meta-gradients with an isotropic proximal prior (Rajeswaran et al. 2019).

Inner problem of signal ``s`` (K steps of SGD or Adam from ``theta``):

    phi*_s(theta) = argmin_phi  G(phi, theta) = L_ctx,s(phi) + lam / 2 ||phi - theta||^2

At a stationary point ``grad_phi G = 0``; differentiating it in ``theta`` (implicit function
theorem) gives ``(H + lam I) dphi*/dtheta = lam I`` with ``H = grad^2 L_ctx(phi*)``, hence

    dL_tgt(phi*)/dtheta = lam (H + lam I)^-1 grad L_tgt(phi*) = (I + H / lam)^-1 grad L_tgt(phi*).

The linear system is solved per signal by conjugate gradient (:mod:`genfield.meta.implicit`, the
solver iBaML shares) with Hessian-vector products by double backward on one graph of
``grad L_ctx``; ``cg_damping`` adds ``delta I`` to ``H + lam I``. ``curvature="gauss_newton"``
replaces ``H`` by the (positive semi-definite) Gauss-Newton matrix, an approximation that keeps CG
convergent when the field's exact Hessian is indefinite (typical for SIRENs far from a fit).
Nothing is kept of the inner trajectory, so memory does not grow with K.
Non-adapted (shared) parameters ``w`` get ``dL_tgt/dw - (d^2 L_ctx / dw dphi) x`` where ``x`` solves
the system (the same implicit-function argument).
"""

from __future__ import annotations

import torch

from genfield.datasets.batch import Observations, SignalBatch
from genfield.errors import InputError, unknown_name
from genfield.forward import ForwardMap
from genfield.meta.cg import CURVATURES, gauss_newton_hvp
from genfield.meta.explicit import InitLearner
from genfield.meta.implicit import implicit_gradient, outer_gradients, stationarity_of
from genfield.meta.inner import InnerHealth
from genfield.meta.likelihood import mse
from genfield.meta.tree import Tree, leaves


class IMAML(InitLearner):
    """iMAML; see the module docstring. ``lam`` is the proximal strength."""

    name = "imaml"
    needs_double_backward = True

    def __init__(
        self,
        field,
        *,
        lam: float = 1.0,
        cg_iterations: int = 20,
        cg_damping: float = 0.0,
        cg_tol: float = 0.1,
        curvature: str = "hessian",
        **options,
    ) -> None:
        if options.get("meta_sgd"):
            raise InputError("meta_sgd=True needs the second-order 'maml' estimator")
        if curvature not in CURVATURES:
            raise unknown_name("curvature", curvature, CURVATURES)
        if lam <= 0 or cg_iterations < 1 or cg_damping < 0:
            raise InputError(f"lam={lam} cg_iterations={cg_iterations} cg_damping={cg_damping}")
        super().__init__(field, **options)
        self.lam, self.cg_iterations = lam, cg_iterations
        self.cg_damping, self.cg_tol, self.curvature = cg_damping, cg_tol, curvature

    def inner_loss(self, params: Tree, obs: Observations, forward_map: ForwardMap) -> torch.Tensor:
        theta = self.theta()
        prox = sum((params[k] - theta[k].detach()).square().flatten(1).sum(1) for k in params)
        return super().inner_loss(params, obs, forward_map) + 0.5 * self.lam * prox

    def implicit_gradient(
        self, phi: Tree, batch: SignalBatch
    ) -> tuple[Tree, dict[str, torch.Tensor]]:
        """The meta-gradient at adapted parameters ``phi`` (assumed stationary for the inner problem).

        iMAML's parts of :func:`~genfield.meta.implicit.implicit_gradient`: the context loss's
        gradient (its Hessian or Gauss-Newton matrix) plus the proximal ``lam I`` as the curvature,
        ``B = -lam I`` for the initialisation and autograd's cross terms for shared weights."""
        phi = leaves(phi)
        shared = self.shared_meta_parameters()
        with torch.enable_grad():
            pred_ctx = self.observe(phi, batch.context.queries, batch.forward_map)
            grad_ctx = stationarity_of(mse(pred_ctx, batch.context.values).sum(), phi)
            tgt = self.observe(phi, batch.target.queries, batch.forward_map)
            outer = mse(tgt, batch.target.values).mean()
            b_phi, direct = outer_gradients(outer, phi, shared)
        curvature = None
        if self.curvature == "gauss_newton":  # MSE = 1/(N c) ||y - f||^2: weight 2 / (N c)
            curvature = gauss_newton_hvp(pred_ctx, phi, 2.0 / pred_ctx[0].numel())
        solve = implicit_gradient(
            phi,
            grad_ctx,
            b_phi,
            curvature=curvature,
            diagonal=self.lam,
            cross=shared,
            direct=direct,
            closed_form_cross=lambda x: self.named("init", {k: -self.lam * t.sum(0) for k, t in x.items()}),
            iterations=self.cg_iterations,
            damping=self.cg_damping,
            tol=self.cg_tol,
        )
        return solve.gradients, {"loss": outer.detach(), **solve.metrics()}

    def _outer_and_gradient(self, batch: SignalBatch) -> tuple[Tree, dict[str, torch.Tensor]]:
        health = InnerHealth()
        phi = self._adapted(batch.context, batch.forward_map, self.inner_steps, False, health)
        grads, metrics = self.implicit_gradient(phi, batch)
        metrics["inner_finite"] = health.all_finite()
        metrics["ok"] = metrics["ok"] & metrics["inner_finite"]
        return grads, metrics

    def outer_loss(self, batch: SignalBatch) -> torch.Tensor:
        phi = self._adapted(batch.context, batch.forward_map, self.inner_steps, False)
        return mse(self.observe(phi, batch.target.queries, batch.forward_map), batch.target.values).mean()
