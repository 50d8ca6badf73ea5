"""iMAML: implicit meta-gradients with an isotropic proximal prior (Rajeswaran et al. 2019).

Inner problem of signal ``s`` (K steps of SGD or Adam from ``theta``):

    phi*_s(theta) = argmin_phi  G(phi, theta) = L_ctx,s(phi) + lam / 2 ||phi - theta||^2

At a stationary point ``grad_phi G = 0``; differentiating it in ``theta`` (implicit function
theorem) gives ``(H + lam I) dphi*/dtheta = lam I`` with ``H = grad^2 L_ctx(phi*)``, hence

    dL_tgt(phi*)/dtheta = lam (H + lam I)^-1 grad L_tgt(phi*) = (I + H / lam)^-1 grad L_tgt(phi*).

The linear system is solved per signal by conjugate gradient (:mod:`genfield.meta.cg`) with
Hessian-vector products by double backward on one graph of ``grad L_ctx``; ``cg_damping`` adds
``delta I`` to ``H + lam I``. ``curvature="gauss_newton"`` replaces ``H`` by the (positive
semi-definite) Gauss-Newton matrix, an approximation that keeps CG convergent when the field's exact
Hessian is indefinite (typical for SIRENs far from a fit).
Nothing is kept of the inner trajectory, so memory does not grow with K.
Non-adapted (shared) parameters ``w`` get ``dL_tgt/dw - (d^2 L_ctx / dw dphi) x`` where ``x`` solves
the system (the same implicit-function argument).
"""

from __future__ import annotations

import torch

from genfield.datasets.batch import Observations, SignalBatch
from genfield.errors import InputError, unknown_name
from genfield.forward import ForwardMap
from genfield.meta.cg import CURVATURES, conjugate_gradient, gauss_newton_hvp
from genfield.meta.explicit import InitLearner
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
        """The meta-gradient at adapted parameters ``phi`` (assumed stationary for the inner problem)."""
        phi = leaves(phi)
        shared = {k: p for k, p in self.meta_parameters().items() if k.startswith("shared/")}
        with torch.enable_grad():
            pred_ctx = self.observe(phi, batch.context.queries, batch.forward_map)
            ctx = mse(pred_ctx, batch.context.values)
            grad_ctx = torch.autograd.grad(ctx.sum(), list(phi.values()), create_graph=True)
            tgt = self.observe(phi, batch.target.queries, batch.forward_map)
            outer = mse(tgt, batch.target.values).mean()
            b = torch.autograd.grad(
                outer, [*phi.values(), *shared.values()], allow_unused=True, materialize_grads=True
            )
        b_phi = dict(zip(phi, b[: len(phi)]))

        if self.curvature == "gauss_newton":  # MSE = 1/(N c) ||y - f||^2: weight 2 / (N c)
            ggn = gauss_newton_hvp(pred_ctx, phi, 2.0 / pred_ctx[0].numel())

        def hvp(p: Tree) -> Tree:
            if self.curvature == "gauss_newton":
                hv = list(ggn(p).values())
            else:
                hv = torch.autograd.grad(
                    grad_ctx, list(phi.values()), [p[k] for k in phi], retain_graph=True
                )
            return {k: h + self.lam * p[k] for k, h in zip(phi, hv)}

        solve = conjugate_gradient(hvp, b_phi, self.cg_iterations, self.cg_damping, self.cg_tol)
        grads = {f"init/{k}": self.lam * x.sum(0) for k, x in solve.x.items()}
        if shared:
            cross = torch.autograd.grad(
                grad_ctx, list(shared.values()), [solve.x[k] for k in phi],
                allow_unused=True, materialize_grads=True,
            )
            grads.update({k: d - c for k, d, c in zip(shared, b[len(phi) :], cross)})
        metrics = {
            "loss": outer.detach(),
            "cg_residual": solve.relative_residual.max().detach(),
            "ok": solve.converged,
        }
        return grads, metrics

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
