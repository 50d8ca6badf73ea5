"""Conjugate gradient on a batch of independent symmetric systems, one per signal.

Solves ``(A_s + damping I) x_s = b_s`` for every signal ``s`` at once, where ``A`` is only available
through Hessian-vector products ``hvp(p) -> A p`` (double backward; never a dense matrix). The step
sizes ``alpha_s = r_s.r_s / p_s.A p_s`` and ``beta_s`` are per signal, so each system converges at
its own rate, exactly as if it were solved alone. The loop runs a fixed number of iterations with no
host synchronisation; a signal whose residual is already below ``tol`` (or whose curvature
``p.Ap`` is not positive) stops moving. The returned residual is recomputed as ``||b - A x||`` (one
more HVP), so it is the true residual, not the recursion's estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from genfield.meta.tree import Tree, tree_all_finite, tree_axpy, tree_dot, tree_map

#: Curvature used in the implicit linear systems: the exact Hessian or Gauss-Newton.
CURVATURES = ("hessian", "gauss_newton")


@dataclass
class CGResult:
    """The solution ``x`` and, per signal, the true relative residual ``||b - A x|| / ||b||``."""

    x: Tree
    relative_residual: torch.Tensor
    converged: torch.Tensor  # one boolean: every signal below tol and everything finite


def conjugate_gradient(
    hvp: Callable[[Tree], Tree],
    b: Tree,
    iterations: int = 10,
    damping: float = 0.0,
    tol: float = 1e-2,
    preconditioner: Tree | None = None,
) -> CGResult:
    """Solve ``(A + damping I) x = b`` per signal by ``iterations`` steps of CG from ``x = 0``.

    ``preconditioner``: an optional positive diagonal ``P ~ (A + damping I)^-1`` (a tree like
    ``b``); preconditioned CG (``z = P r``) then converges at the rate of ``P A``'s conditioning,
    e.g. when ``A`` is dominated by a diagonal prior curvature whose entries span decades.
    """

    def apply(p: Tree) -> Tree:
        ap = hvp(p)
        return ap if damping == 0 else tree_map(lambda a, v: a + damping * v, ap, p)

    b_norm = tree_dot(b, b).sqrt()
    threshold = (tol * b_norm).square()
    precondition = (lambda r: r) if preconditioner is None else (
        lambda r: tree_map(torch.mul, r, preconditioner)
    )
    x = tree_map(torch.zeros_like, b)
    r = dict(b)
    z = precondition(r)
    p = dict(z)
    rz, rr = tree_dot(r, z), tree_dot(r, r)
    for _ in range(iterations):
        ap = apply(p)
        curvature = tree_dot(p, ap)
        active = (rr > threshold) & (curvature > 0)
        alpha = torch.where(active, rz / torch.where(active, curvature, 1.0), 0.0)
        x = tree_axpy(alpha, p, x)
        r = tree_axpy(-alpha, ap, r)
        z = precondition(r)
        rz_new = tree_dot(r, z)
        beta = torch.where(active, rz_new / torch.where(active, rz, 1.0), 0.0)
        p = tree_axpy(beta, p, z)
        rz = torch.where(active, rz_new, rz)
        rr = torch.where(active, tree_dot(r, r), rr)
    residual = tree_map(torch.sub, b, apply(x))
    relative = tree_dot(residual, residual).sqrt() / b_norm.clamp_min(torch.finfo(b_norm.dtype).tiny)
    converged = (relative <= tol).all() & tree_all_finite(x) & torch.isfinite(relative).all()
    return CGResult(x, relative, converged)


def gauss_newton_hvp(
    outputs: torch.Tensor, inputs: Tree, weight: float | torch.Tensor
) -> Callable[[Tree], Tree]:
    """Products with the Gauss-Newton matrix ``J^T (weight I) J`` of ``outputs`` w.r.t. ``inputs``.

    For a squared-error loss ``weight / 2 ||y - outputs||^2`` this is the Hessian without the
    residual-curvature term: positive semi-definite, so CG on it plus a positive diagonal always
    converges (the exact Hessian of a non-convex field can be indefinite). ``J p`` comes from the
    double-vjp trick: ``J^T u`` is linear in a dummy ``u``, and its vjp in ``u`` is ``J p``.
    """
    dummy = torch.zeros_like(outputs, requires_grad=True)
    jt_u = torch.autograd.grad(outputs, list(inputs.values()), dummy, create_graph=True)

    def hvp(p: Tree) -> Tree:
        jp = torch.autograd.grad(jt_u, dummy, [p[k] for k in inputs], retain_graph=True)[0]
        out = torch.autograd.grad(outputs, list(inputs.values()), weight * jp, retain_graph=True)
        return dict(zip(inputs, out))

    return hvp
