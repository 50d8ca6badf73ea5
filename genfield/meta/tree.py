"""Parameter trees: dicts of tensors whose leading dimension is the signal ``S``.

The meta-learners keep per-signal field parameters as ``{name: (S, *shape)}``. Every signal is an
independent problem, so the inner products a solver needs (conjugate gradient's ``r.r`` and ``p.Ap``)
are taken *per signal*: :func:`tree_dot` returns an ``(S,)`` tensor, and per-signal scalars are
broadcast back over a parameter's trailing dimensions with :func:`per_signal`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Tree = dict[str, torch.Tensor]


def per_signal(scalar: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape an ``(S,)`` tensor to broadcast against ``like`` of shape ``(S, ...)``."""
    return scalar.reshape(scalar.shape + (1,) * (like.dim() - scalar.dim()))


def tree_map(fn: Callable[..., torch.Tensor], tree: Tree, *rest: Tree) -> Tree:
    """Apply ``fn`` key by key to one or more trees with the same keys."""
    return {k: fn(v, *(r[k] for r in rest)) for k, v in tree.items()}


def tree_dot(a: Tree, b: Tree) -> torch.Tensor:
    """Per-signal inner product ``sum_k <a_k[s], b_k[s]>``, shape ``(S,)``."""
    return sum((a[k] * b[k]).flatten(1).sum(1) for k in a)


def tree_axpy(alpha: torch.Tensor, x: Tree, y: Tree) -> Tree:
    """``y + alpha * x`` with a per-signal ``alpha`` of shape ``(S,)``."""
    return {k: y[k] + per_signal(alpha, x[k]) * x[k] for k in x}


def tree_all_finite(tree: Tree) -> torch.Tensor:
    """One boolean tensor: whether every entry of every tensor is finite (no host sync)."""
    return torch.stack([torch.isfinite(v).all() for v in tree.values()]).all()


def expand_signals(tree: Tree, num_signals: int) -> Tree:
    """Give every tensor a leading signal dimension (a broadcast view; gradients sum back)."""
    return {k: v.unsqueeze(0).expand(num_signals, *v.shape) for k, v in tree.items()}


def leaves(tree: Tree) -> Tree:
    """Detached copies that require grad: fresh leaves for one first-order inner step."""
    return {k: v.detach().clone().requires_grad_(True) for k, v in tree.items()}
