"""The batched inner loop: K steps of SGD or Adam on every signal of a meta-batch at once.

Batching choice. Per-signal parameters carry a leading dimension ``S`` and the objective is the
**sum** of the per-signal objectives. Signals are independent, so the gradient of that sum with
respect to signal ``s``'s parameters is exactly signal ``s``'s own gradient (and its Hessian is block
diagonal, so Hessian-vector products are per signal too). The field evaluates all ``S`` signals in
one ``torch.func.vmap``-ed call (:class:`genfield.fields.Field`), so there is no Python loop over
signals, and plain autograd gives (i) first-order steps on detached leaves (FOMAML, Reptile, iMAML,
iBaML: memory independent of K), (ii) a differentiable trajectory with ``create_graph=True`` (MAML,
whose memory grows with K), and (iii) double-backward HVPs on the same graph (conjugate gradient).
Nesting ``torch.func.grad`` inside ``vmap`` would give the same numbers but not a reusable autograd
graph for (ii)-(iii).

Learning rates are a float, or a dict of tensors broadcastable against each parameter (Meta-SGD,
Li et al. 2017: ``phi <- phi - alpha (.) grad``, ``alpha`` learned by the outer loop). An optional
``precondition(params, grads) -> grads`` rescales the gradient before the optimizer's update
(iBaML's variance-preconditioned steps); it changes the path, not the stationary points. An
optional ``gradient(params) -> grads`` replaces autograd of ``objective`` in first-order loops, for
objectives whose gradient is cheaper in closed form around one autograd call (iBaML's free energy:
the KL and the reparameterisation have analytic derivatives). An optional
``limit_step(params, grads, update) -> update`` shortens the update ``lr * direction`` once it is
known (iBaML's cap of the mean's step at the minimiser of a Gauss-Newton model along it).

Non-finite values. An optional :class:`InnerHealth` accumulates, on the device, one flag per signal:
"every gradient and iterate of this signal stayed finite". Nothing is read back inside the loop; the
caller checks the flags once at the end (:func:`warn_non_finite` at test time; a skipped meta-step at
training time).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch

from genfield.errors import unknown_name
from genfield.meta.tree import (
    Params,
    Tree,
    leaves,
    per_signal,
    tree_dot,
    tree_leaves,
    tree_map,
    tree_unflatten,
)

INNER_OPTIMIZERS = ("sgd", "adam")


class NonFiniteAdaptation(RuntimeWarning):
    """An inner loop met a NaN or an infinity: the named signals' reconstructions are not trustworthy."""


def finite_per_signal(tree: Params) -> torch.Tensor:
    """``(S,)`` booleans: every entry of signal ``s`` in every tensor of ``tree`` is finite."""
    return torch.stack([torch.isfinite(v).flatten(1).all(1) for v in tree_leaves(tree)]).all(0)


@dataclass
class InnerHealth:
    """Per-signal finiteness flags of an inner loop, kept as a device tensor (no host sync per step)."""

    finite: torch.Tensor | None = None

    def record(self, tree: Params) -> None:
        ok = finite_per_signal(tree)
        self.finite = ok if self.finite is None else self.finite & ok

    def all_finite(self) -> torch.Tensor:
        """A 0-d boolean tensor (True when nothing was recorded)."""
        return torch.tensor(True) if self.finite is None else self.finite.all()


def warn_non_finite(method: str, finite: torch.Tensor | None) -> list[int]:
    """Warn (one host sync) naming the signals whose inner loop went non-finite; return their indices."""
    if finite is None or bool(finite.all()):
        return []
    bad = (~finite).nonzero().flatten().tolist()
    warnings.warn(
        f"{method}: non-finite values in the inner loop of signal(s) {bad} of {finite.numel()}; "
        "their reconstructions are not trustworthy",
        NonFiniteAdaptation,
        stacklevel=3,
    )
    return bad


def inner_loop(
    objective: Callable[[Params], torch.Tensor],
    init: Params,
    steps: int,
    lr: float | Params,
    optimizer: str = "sgd",
    *,
    create_graph: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    precondition: Callable[[Params, Params], Params] | None = None,
    health: InnerHealth | None = None,
    gradient: Callable[[Params], Params] | None = None,
    limit_step: Callable[[Params, Params, Params], Params] | None = None,
) -> Params:
    """Minimise ``objective`` (a scalar: the sum over signals) for ``steps`` steps from ``init``.

    ``init`` is a :data:`~genfield.meta.tree.Tree` or a container of them (iBaML's ``Posterior``);
    ``lr`` a float or a tree of the same structure, and ``precondition`` maps trees of that
    structure. With ``create_graph=False`` every step differentiates fresh detached leaves and the
    result is detached (nothing of the trajectory is kept). With ``create_graph=True`` the returned
    tensors are differentiable functions of ``init`` and of tensor learning rates (backprop through
    K). ``health`` (optional) accumulates per-signal finiteness of every step's gradients and of the
    final iterate. ``gradient`` (first order only) returns ``grad objective`` at detached ``params``,
    a tree of their structure. ``limit_step`` gets the raw gradient and the update each step is
    about to subtract, and returns the update taken.
    """
    if gradient is not None and create_graph:
        raise ValueError("inner_loop: a closed-form gradient cannot be backpropagated through")
    if optimizer not in INNER_OPTIMIZERS:
        raise unknown_name("inner optimizer", optimizer, INNER_OPTIMIZERS)
    rates = tree_map(lambda _: lr, init) if isinstance(lr, (int, float)) else lr
    params = init if create_graph or gradient is not None else leaves(init)
    first = tree_map(torch.zeros_like, params)
    second = tree_map(torch.zeros_like, params)
    for step in range(1, steps + 1):
        if gradient is not None:
            grads = gradient(params)
        else:
            with torch.enable_grad():
                if not create_graph:
                    params = leaves(params)
                grads = torch.autograd.grad(objective(params), tree_leaves(params), create_graph=create_graph)
            grads = tree_unflatten(grads, params)
        if health is not None:
            health.record(grads)
        with torch.set_grad_enabled(create_graph):
            raw = grads
            if precondition is not None:
                grads = precondition(params, grads)
            if optimizer == "adam":
                first = tree_map(lambda m, g: betas[0] * m + (1 - betas[0]) * g, first, grads)
                second = tree_map(lambda v, g: betas[1] * v + (1 - betas[1]) * g**2, second, grads)
                c1, c2 = 1 - betas[0] ** step, 1 - betas[1] ** step
                grads = tree_map(lambda m, v, c1=c1, c2=c2: (m / c1) / ((v / c2).sqrt() + eps), first, second)
            update = tree_map(lambda r, g: r * g, rates, grads)
            if limit_step is not None:
                update = limit_step(params, raw, update)
            params = tree_map(lambda p, u: p - u, params, update)
    if health is not None:
        health.record(params)
    return params if create_graph else tree_map(torch.Tensor.detach, params)


def top_curvature(
    objective: Callable[[Tree], torch.Tensor], params: Tree, iterations: int = 3, double_backward: bool = True
) -> torch.Tensor:
    """``(S,)`` estimates of each signal's largest Hessian eigenvalue magnitude at ``params``.

    Power iteration on Hessian-vector products of ``objective`` (a sum over signals, so its Hessian is
    block diagonal and every signal iterates on its own block), from a fixed random start (its own
    generator: the global RNG stream is untouched). ``||H v||`` for a unit ``v`` bounds ``|lambda|_max``
    from below and approaches it as the iteration converges. Detached: a step-size control, not a
    quantity to differentiate.
    Fields without double backward (``double_backward=False``) take central differences of gradients
    instead, ``H v ~ (g(x + h v) - g(x - h v)) / 2h``.
    """
    point = leaves(params)

    def gradient(at: Tree, create_graph: bool) -> list[torch.Tensor]:
        with torch.enable_grad():
            return list(torch.autograd.grad(objective(at), list(at.values()), create_graph=create_graph))

    grads = gradient(point, create_graph=double_backward)

    def hvp(v: Tree) -> list[torch.Tensor]:
        if double_backward:
            return list(torch.autograd.grad(grads, list(point.values()), list(v.values()), retain_graph=True))
        h = 1e-3
        up = gradient(leaves({k: x + h * v[k] for k, x in point.items()}), False)
        down = gradient(leaves({k: x - h * v[k] for k, x in point.items()}), False)
        return [(a - b) / (2 * h) for a, b in zip(up, down)]

    first = next(iter(point.values()))
    generator = torch.Generator(device=first.device).manual_seed(0)
    v = {
        k: torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) for k, x in point.items()
    }
    size = first.new_zeros(first.shape[0])
    for _ in range(iterations):
        v = {k: x / per_signal(tree_dot(v, v).sqrt(), x) for k, x in v.items()}
        v = dict(zip(point, hvp(v)))
        size = tree_dot(v, v).sqrt()
    return size.detach()


def cap_rates(rates: float | Tree, params: Tree, curvature: torch.Tensor, cap: float) -> Tree:
    """Scale every signal's inner rates so that ``max rate * |lambda|_max <= cap`` for that signal.

    Plain gradient descent with rate ``alpha`` is stable along a direction of curvature ``lambda`` only
    while ``alpha lambda < 2``; beyond, the iterate and the backpropagated meta-gradient grow like
    ``|1 - alpha lambda|^K``. A cap ``< 2`` keeps the inner loop a contraction along the sharpest
    direction at the initialisation, and removes the meta-learner's incentive to sharpen the
    initialisation further (the effective ``alpha lambda`` stops growing with ``lambda``).
    """
    if isinstance(rates, dict):
        largest = torch.stack([r.detach().max() for r in rates.values()]).max()
    else:
        largest = torch.as_tensor(rates, dtype=curvature.dtype, device=curvature.device)
        rates = dict.fromkeys(params, rates)
    factor = (cap / (largest * curvature).clamp_min(1e-12)).clamp(max=1.0)
    return {k: rates[k] * per_signal(factor, params[k]) for k in params}
