"""Parameter trees: dicts of tensors whose leading dimension is the signal ``S``, and containers of them.

The meta-learners keep per-signal field parameters as ``{name: (S, *shape)}``. Every signal is an
independent problem, so the inner products a solver needs (conjugate gradient's ``r.r`` and ``p.Ap``)
are taken *per signal*: :func:`tree_dot` returns an ``(S,)`` tensor, and per-signal scalars are
broadcast back over a parameter's trailing dimensions with :func:`per_signal`.

Several such dicts with distinct roles travel together in a typed container (iBaML's posterior
``Posterior(mu, rho)``, a ``NamedTuple``): every function here works on any nesting of dicts,
tuples and named tuples of tensors, matching dicts by key and tuples by position, so the role of
a dict is its field in the container, never a prefix of its keys. (Plain recursion rather than
``torch.utils._pytree``, whose general machinery costs more per call than a small field's
tensor operations in the inner loop and CG.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

Tree = dict[str, torch.Tensor]
#: A :data:`Tree` or a container (tuple, named tuple, dict) of them.
Params = Any


def per_signal(scalar: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape an ``(S,)`` tensor to broadcast against ``like`` of shape ``(S, ...)``."""
    return scalar.reshape(scalar.shape + (1,) * (like.dim() - scalar.dim()))


def tree_map(fn: Callable[..., Any], tree: Params, *rest: Params) -> Params:
    """Apply ``fn`` leaf by leaf to one or more trees of the same structure (dicts matched by key,
    tuples and named tuples by position); the result has ``tree``'s structure."""
    if isinstance(tree, tuple):
        mapped = [tree_map(fn, v, *[r[i] for r in rest]) for i, v in enumerate(tree)]
        return type(tree)(*mapped) if hasattr(tree, "_fields") else tuple(mapped)
    if not isinstance(tree, dict):
        return fn(tree, *rest)
    out = {}
    for k, v in tree.items():
        args = [r[k] for r in rest]
        out[k] = tree_map(fn, v, *args) if isinstance(v, (dict, tuple)) else fn(v, *args)
    return out


def tree_leaves(tree: Params) -> list[Any]:
    """The leaves of ``tree`` in its flattening order (a container's fields, a dict's keys)."""
    if isinstance(tree, dict):
        return [leaf for v in tree.values() for leaf in tree_leaves(v)]
    if isinstance(tree, tuple):
        return [leaf for v in tree for leaf in tree_leaves(v)]
    return [tree]


def tree_leaves_like(tree: Params, like: Params) -> list[Any]:
    """The leaves of ``tree`` in the flattening order of ``like`` (same structure, a dict's keys
    possibly in another order)."""
    return tree_leaves(tree_map(lambda _, x: x, like, tree))


def tree_unflatten(values: Sequence[Any], like: Params) -> Params:
    """``values`` (in :func:`tree_leaves` order of ``like``) put back into ``like``'s structure."""
    it = iter(values)
    return tree_map(lambda _: next(it), like)


def tree_dot(a: Params, b: Params) -> torch.Tensor:
    """Per-signal inner product ``sum_k <a_k[s], b_k[s]>``, shape ``(S,)``."""
    return sum(tree_leaves(tree_map(lambda x, y: (x * y).flatten(1).sum(1), a, b)))


def tree_axpy(alpha: torch.Tensor, x: Params, y: Params) -> Params:
    """``y + alpha * x`` with a per-signal ``alpha`` of shape ``(S,)``."""
    return tree_map(lambda u, w: w + per_signal(alpha, u) * u, x, y)


def tree_all_finite(tree: Params) -> torch.Tensor:
    """One boolean tensor: whether every entry of every tensor is finite (no host sync)."""
    return torch.stack([torch.isfinite(v).all() for v in tree_leaves(tree)]).all()


def expand_signals(tree: Params, num_signals: int) -> Params:
    """Give every tensor a leading signal dimension (a broadcast view; gradients sum back)."""
    return tree_map(lambda v: v.unsqueeze(0).expand(num_signals, *v.shape), tree)


def leaves(tree: Params) -> Params:
    """Detached copies that require grad: fresh leaves for one first-order inner step."""
    return tree_map(lambda v: v.detach().clone().requires_grad_(True), tree)


def detached(tree: Params) -> Params:
    """``tree`` with every tensor detached (no copy)."""
    return tree_map(torch.Tensor.detach, tree)
