r"""The implicit meta-gradient of a bilevel problem, written once (iMAML and iBaML supply their parts).

Per signal the inner problem is ``v*(theta) = argmin_v F(v, theta)``, so ``v*`` satisfies the
stationarity condition ``g(v*, theta) = grad_v F(v*, theta) = 0``. Differentiating it in ``theta``
(implicit function theorem) gives ``A dv*/dtheta = -B`` with ``A = dg/dv`` and ``B = dg/dtheta``,
hence for an outer loss ``L(v*(theta), theta)``

    dL/dtheta = dL/dtheta|_direct - B^T x,        A x = grad_v L(v*)

(Rajeswaran et al. 2019, eq. 6; Zhang et al. 2023, eq. 9). As in ``torchopt.diff.implicit`` the
caller states the condition and the solver does the rest; here the condition comes in the parts
that batched per-signal problems need:

* ``stationarity``: the part of ``g`` that autograd differentiates, built with ``create_graph``
  at the leaves ``point`` (e.g. the context loss's gradient);
* ``curvature`` (optional): products ``p -> (dg/dv) p`` that replace that part's double backward
  (a Gauss-Newton matrix, positive semi-definite where the exact Hessian is indefinite);
* ``diagonal``: the closed-form diagonal part of ``A`` (iMAML's proximal ``lam``, iBaML's KL
  curvature), also the Jacobi preconditioner when ``precondition``; ``damping`` adds ``delta I``;
* ``cross``: outer arguments whose ``B^T x`` autograd takes through ``stationarity`` (shared
  weights, a learned noise), and ``closed_form_cross``: ``x -> B^T x`` for the arguments whose
  mixed derivative is known analytically (iMAML's ``-lam I``, iBaML's KL).

``x`` comes from one batched conjugate-gradient solve per signal (:mod:`genfield.meta.cg`); the
diagnostics stay tensors (no host synchronisation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from genfield.meta.cg import conjugate_gradient
from genfield.meta.tree import Params, tree_leaves, tree_leaves_like, tree_map, tree_unflatten

Operator = Callable[[Params], Params]


@dataclass
class ImplicitGradient:
    """The meta-gradient by argument name, the solution ``x`` of ``A x = grad_v L``, and the solve's
    diagnostics: per-signal relative residual and iterations, and one convergence flag."""

    gradients: dict[str, torch.Tensor]
    x: Params
    residual: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor

    def metrics(self) -> dict[str, torch.Tensor]:
        """The diagnostics as a learner reports them (``ok`` gates the meta-step)."""
        return {
            "cg_residual": self.residual.max().detach(),
            "cg_iterations": self.iterations.max(),
            "ok": self.converged,
        }


def stationarity_of(value: torch.Tensor, point: Params) -> Params:
    """``grad_v value`` at the leaves ``point`` with its graph (``create_graph``), shaped like it."""
    return tree_unflatten(torch.autograd.grad(value, tree_leaves(point), create_graph=True), point)


def linear_operator(
    point: Params,
    stationarity: Params,
    curvature: Operator | None = None,
    diagonal: Params | float = 0.0,
) -> Operator:
    """``p -> A p``: ``curvature(p)`` (by default the double backward of ``stationarity`` in
    ``point``) plus ``diagonal * p``."""
    at, grads = tree_leaves(point), tree_leaves_like(stationarity, point)

    def autograd_curvature(p: Params) -> Params:
        hv = torch.autograd.grad(grads, at, tree_leaves_like(p, point), retain_graph=True)
        return tree_unflatten(hv, point)

    products = autograd_curvature if curvature is None else curvature
    if isinstance(diagonal, (int, float)):
        return lambda p: tree_map(lambda h, v: h + diagonal * v, products(p), p)
    return lambda p: tree_map(lambda h, d, v: h + d * v, products(p), diagonal, p)


def implicit_gradient(
    point: Params,
    stationarity: Params,
    outer_gradient: Params,
    *,
    curvature: Operator | None = None,
    diagonal: Params | float = 0.0,
    cross: Mapping[str, torch.Tensor] | None = None,
    direct: Mapping[str, torch.Tensor] | None = None,
    closed_form_cross: Callable[[Params], Mapping[str, torch.Tensor]] | None = None,
    iterations: int = 20,
    damping: float = 0.0,
    tol: float = 0.1,
    precondition: bool = False,
    early_exit: bool = True,
) -> ImplicitGradient:
    """``dL/dtheta = direct - B^T x`` with ``A x = outer_gradient``; see the module docstring.

    ``point``: the inner solution's leaves; ``stationarity``: the autograd part of ``grad_v F`` at
    them (same structure); ``outer_gradient``: ``grad_v L`` there. ``direct``: the outer loss's
    own gradients by argument name (kept as they are for names with no cross term); ``cross``: the
    tensors, by name, whose cross term ``(d stationarity / dw)^T x`` autograd takes (summed over
    signals); ``closed_form_cross(x)``: ``B^T x`` by name for the other arguments. ``early_exit``:
    CG stops once every residual is below ``tol`` (:func:`~genfield.meta.cg.conjugate_gradient`).
    """
    operator = linear_operator(point, stationarity, curvature, diagonal)
    jacobi = None
    if precondition:
        jacobi = tree_map(lambda d, v: 1 / (d.expand_as(v) + damping), diagonal, point)
    solve = conjugate_gradient(
        operator, outer_gradient, iterations, damping, tol, preconditioner=jacobi, early_exit=early_exit
    )
    gradients = dict(direct or {})
    cross_terms = dict(closed_form_cross(solve.x)) if closed_form_cross is not None else {}
    if cross:
        by_autograd = torch.autograd.grad(
            tree_leaves_like(stationarity, point),
            list(cross.values()),
            tree_leaves_like(solve.x, point),
            allow_unused=True,
            materialize_grads=True,
        )
        cross_terms.update(zip(cross, by_autograd))
    for name, term in cross_terms.items():
        gradients[name] = gradients[name] - term if name in gradients else -term
    return ImplicitGradient(gradients, solve.x, solve.relative_residual, solve.iterations, solve.converged)


def outer_gradients(
    loss: torch.Tensor, point: Params, arguments: Mapping[str, torch.Tensor]
) -> tuple[Params, dict[str, torch.Tensor]]:
    """``(grad_v L at point, {name: dL/dw|_direct})``: the right-hand side and the direct terms."""
    wanted: Sequence[torch.Tensor] = [*tree_leaves(point), *arguments.values()]
    grads = torch.autograd.grad(loss, wanted, allow_unused=True, materialize_grads=True)
    count = len(tree_leaves(point))
    return tree_unflatten(grads[:count], point), dict(zip(arguments, grads[count:]))
