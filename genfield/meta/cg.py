"""Conjugate gradient on a batch of independent symmetric systems, one per signal.

Solves ``(A_s + damping I) x_s = b_s`` for every signal ``s`` at once, where ``A`` is only available
through Hessian-vector products ``hvp(p) -> A p`` (double backward; never a dense matrix). The step
sizes ``alpha_s = r_s.r_s / p_s.A p_s`` and ``beta_s`` are per signal, so each system converges at
its own rate, exactly as if it were solved alone. A signal whose residual is already below ``tol``
(or whose curvature ``p.Ap`` is not positive) stops moving; once every residual is below ``tol``,
the loop ends (``early_exit``: one host read of a boolean per iteration, against an HVP saved per
iteration left; the solution is the same as after the full count). ``early_exit=False`` runs the fixed number
of iterations with no host synchronisation at all. The returned residual is recomputed as ``||b - A x||`` (one
more HVP), so it is the true residual, not the recursion's estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from genfield.meta.tree import (
    Params,
    tree_all_finite,
    tree_axpy,
    tree_dot,
    tree_leaves,
    tree_leaves_like,
    tree_map,
    tree_unflatten,
)

#: Curvature used in the implicit linear systems: the exact Hessian or Gauss-Newton.
CURVATURES = ("hessian", "gauss_newton")


@dataclass
class CGResult:
    """The solution ``x`` and, per signal, the true relative residual ``||b - A x|| / ||b||`` and
    the number of iterations that moved it (all tensors: reading them is the caller's host sync)."""

    x: Params
    relative_residual: torch.Tensor
    converged: torch.Tensor  # one boolean: every signal below tol and everything finite
    iterations: torch.Tensor  # (S,) steps taken before the signal's residual fell below tol


def conjugate_gradient(
    hvp: Callable[[Params], Params],
    b: Params,
    iterations: int = 10,
    damping: float = 0.0,
    tol: float = 1e-2,
    preconditioner: Params | None = None,
    early_exit: bool = True,
) -> CGResult:
    """Solve ``(A + damping I) x = b`` per signal by ``iterations`` steps of CG from ``x = 0``.

    ``b`` is a parameter tree or a container of them. ``preconditioner``: an optional positive
    diagonal ``P ~ (A + damping I)^-1`` (a tree like ``b``); preconditioned CG (``z = P r``) then
    converges at the rate of ``P A``'s conditioning, e.g. when ``A`` is dominated by a diagonal
    prior curvature whose entries span decades. ``early_exit``: stop once every residual is below
    ``tol`` (module docstring).
    """

    def apply(p: Params) -> Params:
        ap = hvp(p)
        return ap if damping == 0 else tree_map(lambda a, v: a + damping * v, ap, p)

    b_norm = tree_dot(b, b).sqrt()
    threshold = (tol * b_norm).square()
    precondition = (lambda r: r) if preconditioner is None else (
        lambda r: tree_map(torch.mul, r, preconditioner)
    )
    x = tree_map(torch.zeros_like, b)
    r = b
    z = precondition(r)
    p = z
    rz, rr = tree_dot(r, z), tree_dot(r, r)
    steps = torch.zeros_like(rr, dtype=torch.long)
    for _ in range(iterations):
        ap = apply(p)
        curvature = tree_dot(p, ap)
        active = (rr > threshold) & (curvature > 0)
        steps = steps + active.long()
        alpha = torch.where(active, rz / torch.where(active, curvature, 1.0), 0.0)
        x = tree_axpy(alpha, p, x)
        r = tree_axpy(-alpha, ap, r)
        z = precondition(r)
        rz_new = tree_dot(r, z)
        beta = torch.where(active, rz_new / torch.where(active, rz, 1.0), 0.0)
        p = tree_axpy(beta, p, z)
        rz = torch.where(active, rz_new, rz)
        rr = torch.where(active, tree_dot(r, r), rr)
        if early_exit and not bool((rr > threshold).any()):
            break  # every signal below tol: no later iteration would move x
    residual = tree_map(torch.sub, b, apply(x))
    relative = tree_dot(residual, residual).sqrt() / b_norm.clamp_min(torch.finfo(b_norm.dtype).tiny)
    converged = (relative <= tol).all() & tree_all_finite(x) & torch.isfinite(relative).all()
    return CGResult(x, relative, converged, steps)


def gauss_newton_hvp(
    outputs: torch.Tensor, inputs: Params, weight: float | torch.Tensor
) -> Callable[[Params], Params]:
    """Products with the Gauss-Newton matrix ``J^T (weight I) J`` of ``outputs`` w.r.t. ``inputs``.

    For a squared-error loss ``weight / 2 ||y - outputs||^2`` this is the Hessian without the
    residual-curvature term: positive semi-definite, so CG on it plus a positive diagonal always
    converges (the exact Hessian of a non-convex field can be indefinite). ``J p`` comes from the
    double-vjp trick: ``J^T u`` is linear in a dummy ``u``, and its vjp in ``u`` is ``J p``.
    """
    dummy = torch.zeros_like(outputs, requires_grad=True)
    at = tree_leaves(inputs)
    jt_u = torch.autograd.grad(outputs, at, dummy, create_graph=True)

    def hvp(p: Params) -> Params:
        jp = torch.autograd.grad(jt_u, dummy, tree_leaves_like(p, inputs), retain_graph=True)[0]
        out = torch.autograd.grad(outputs, at, weight * jp, retain_graph=True)
        return tree_unflatten(out, inputs)

    return hvp
