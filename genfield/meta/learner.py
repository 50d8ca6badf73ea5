"""The meta-learner base class: meta-parameters, the batched field call, skipping bad meta-steps.

A :class:`MetaLearner` is a :class:`~genfield.interface.Reconstructor`. Subclasses (one per estimator
family: :mod:`~genfield.meta.explicit`, :mod:`~genfield.meta.imaml`, :mod:`~genfield.meta.ibaml`)
implement three things:

* ``adapt(context, forward_map, steps)`` — the inner loop on a new signal's context, batched over
  the signals of ``context``; returns an :class:`AdaptedState`;
* ``_outer_and_gradient(batch)`` — the outer loss of a meta-batch and its meta-gradient, a dict with
  the keys of :meth:`meta_parameters`;
* ``predict(state, queries, query_map, num_samples)`` — observations predicted from an adapted state.

Meta-parameters are named ``"<group>/<field parameter>"`` (spelled in one place,
:meth:`MetaLearner.named`; code finds a group through its module, e.g. :meth:`shared_meta_parameters`,
never by parsing names): ``init/...`` (MAML's initialisation), ``prior_mean/...`` and
``prior_logvar/...`` (iBaML's prior), ``shared/...`` (field parameters that are not adapted, see
``adapt_keys``), ``inner_lr/...`` (Meta-SGD) and ``log_sigma`` (learned noise). They are the keys of
meta-gradients; checkpoints store the modules' own state-dict keys (``init.network__...``).

Compiling: ``compile`` (``"auto"``, ``True``, ``False``; :mod:`genfield.compiling`) decides whether
the loss of every first-order inner step (FOMAML, Reptile, iMAML, iBaML, and every learner's
test-time adaptation) runs through ``torch.compile``.

Bad numerics: when a meta-gradient is not finite, or a conjugate-gradient solve misses its tolerance,
:meth:`meta_gradient` warns with :class:`MetaStepSkipped` (naming the residual), returns zeros and
:meth:`compute_gradients` writes nothing into ``.grad`` (so an optimizer whose gradients were reset
with ``zero_grad(set_to_none=True)`` leaves the meta-parameters untouched); the metrics say
``skipped = 1``. A NaN never reaches the meta-parameters.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from genfield.compiling import CompiledWhenWorth
from genfield.datasets.batch import Observations, SignalBatch
from genfield.errors import InputError
from genfield.fields.field import Field
from genfield.forward import ForwardMap
from genfield.interface import Adapted, Prediction, Reconstructor
from genfield.meta.inner import finite_per_signal, warn_non_finite
from genfield.meta.tree import Tree


class MetaStepSkipped(RuntimeWarning):
    """A meta-step was skipped because its meta-gradient was not trustworthy."""


@dataclass
class AdaptedState:
    """Per-signal parameters after adaptation: ``params`` ``{name: (S, ...)}``; for a Bayesian
    learner also the posterior log-variances ``logvar`` (same keys and shapes) and the context it
    conditioned on (``context`` through ``context_map``: iBaML's linearized-Laplace predictive
    needs it)."""

    params: Tree
    logvar: Tree | None = None
    context: Observations | None = None
    context_map: ForwardMap | None = None
    finite: torch.Tensor | None = None  # (S,) the inner loop stayed finite (checked by the learner)


class AdaptedLearner(Adapted):
    """A meta-learner's adapted state, predicted from at any queries without adapting again."""

    def __init__(self, learner: MetaLearner, state: AdaptedState, num_samples: int) -> None:
        self.learner, self.state, self.num_samples = learner, state, num_samples

    def predict(self, queries: torch.Tensor, query_map: ForwardMap, *, variance: bool = True) -> Prediction:
        return self.learner.predict(self.state, queries, query_map, self.num_samples, variance=variance)


def _module_key(name: str) -> str:
    """A field parameter's name as a key of an ``nn.ParameterDict`` (which refuses dots)."""
    return name.replace(".", "__")


def field_tree(store: nn.ParameterDict) -> Tree:
    """A ``ParameterDict`` keyed by :func:`_module_key` as ``{field parameter name: parameter}``."""
    return {k.replace("__", "."): p for k, p in store.items()}


def select_keys(names: list[str], adapt_keys: list[str] | str | None) -> list[str]:
    """The field parameters to adapt: all, or those equal to / under one of ``adapt_keys``."""
    if adapt_keys is None:
        return list(names)
    wanted = [adapt_keys] if isinstance(adapt_keys, str) else list(adapt_keys)
    chosen = [n for n in names if any(n == w or n.startswith(w + ".") for w in wanted)]
    if not chosen:
        raise InputError(f"adapt_keys {wanted} match no field parameter; valid: {sorted(names)}")
    return chosen


class MetaLearner(Reconstructor):
    """Gradient-based meta-learning of a field's initialisation (or prior); see module docs."""

    name = "meta"

    def __init__(
        self,
        field: Field,
        *,
        inner_steps: int = 5,
        inner_lr: float = 0.1,
        inner_optimizer: str = "sgd",
        adapt_keys: list[str] | str | None = None,
        seed: int = 0,
        compile: bool | str = "auto",
        lr_scale: float = 1.0,
    ) -> None:
        super().__init__()
        #: Runs the losses of first-order inner steps, eager or compiled (:meth:`first_order_loss`);
        #: it validates ``compile`` first, before anything is built.
        self.compiled_inner = CompiledWhenWorth(compile, f"{self.name} inner loop")
        if self.needs_double_backward and not field.supports_double_backward:
            raise InputError(
                f"meta-learner {self.name!r} needs double backward through the field, which this "
                "field's encoding (tiny-cuda-nn backend) lacks; use 'fomaml' or 'reptile', or the "
                "torch backend"
            )
        if inner_steps < 0 or inner_lr <= 0:
            raise InputError(f"inner_steps={inner_steps} inner_lr={inner_lr}: need >= 0 and > 0")
        if not lr_scale > 0:
            raise InputError(f"lr_scale={lr_scale}: need a value > 0")
        self.lr_scale = float(lr_scale)
        self.field = field
        self.inner_steps, self.inner_lr, self.inner_optimizer = inner_steps, inner_lr, inner_optimizer
        initial = field.init(seed)
        self.adapt_names = select_keys(list(initial), adapt_keys)
        self.shared = nn.ParameterDict(
            {_module_key(k): nn.Parameter(v) for k, v in initial.items() if k not in self.adapt_names}
        )
        self._initial = {k: initial[k] for k in self.adapt_names}

    # -- parameters -----------------------------------------------------------------------------
    def optimizer_groups(self, lr: float) -> list[dict]:
        """One Adam group at ``lr_scale * lr``. ``lr_scale`` is how a data kind gets its own outer
        rate through ``by_kind`` (the method config's ``lr`` serves every kind; Adam's step does not
        depend on the gradient's scale, so only the rate can slow the outer loop)."""
        return super().optimizer_groups(lr * self.lr_scale)

    @staticmethod
    def named(group: str, tree: Tree) -> Tree:
        """``tree`` under the meta-parameter names of ``group``: ``"<group>/<field parameter>"``."""
        return {f"{group}/{k}": v for k, v in tree.items()}

    def _group(self, prefix: str, store: nn.ParameterDict) -> dict[str, nn.Parameter]:
        return self.named(prefix, field_tree(store))

    def meta_parameters(self) -> dict[str, nn.Parameter]:
        """The meta-parameters by readable name (``init/network.output_layer.weight``, ...)."""
        return self.shared_meta_parameters()

    def shared_meta_parameters(self) -> dict[str, nn.Parameter]:
        """The meta-parameters of the field parameters that are not adapted, by readable name."""
        return self._group("shared", self.shared)

    def shared_params(self) -> Tree:
        """Field parameters that are not adapted (no signal dimension)."""
        return field_tree(self.shared)

    def _apply(self, fn, *args, **kwargs):  # keep the field's buffers on the learner's device
        self.field.module._apply(fn)
        return super()._apply(fn, *args, **kwargs)

    # -- the field through a forward map ---------------------------------------------------------
    def observe(self, params: Tree, queries: torch.Tensor, forward_map: ForwardMap) -> torch.Tensor:
        """Predicted observations ``(S, N, c)`` of per-signal ``params`` ``{name: (S, ...)}``."""
        return forward_map(self.field.bind({**params, **self.shared_params()}), queries)

    @staticmethod
    def first_order_loss(
        learner: MetaLearner, params: Tree, obs: Observations, forward_map: ForwardMap
    ) -> torch.Tensor:
        """The loss each first-order inner step differentiates once (``learner``'s own; iBaML's
        Monte-Carlo NLL of its draws). First-order inner loops call it through
        :attr:`compiled_inner`, compiled with ``compile=True`` or once they have run long enough
        (``"auto"``, :class:`~genfield.compiling.CompiledWhenWorth`); a backpropagated (MAML) or
        twice-differentiated trajectory calls the eager methods directly."""
        raise NotImplementedError

    # -- meta-gradient ---------------------------------------------------------------------------
    def _outer_and_gradient(self, batch: SignalBatch) -> tuple[Tree, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def outer_loss(self, batch: SignalBatch) -> torch.Tensor:
        """The meta-objective of ``batch``: the target loss after adapting to the context."""
        raise NotImplementedError

    def _checked_gradient(self, batch: SignalBatch) -> tuple[Tree, dict[str, torch.Tensor], bool]:
        grads, metrics = self._outer_and_gradient(batch)
        # the norm, not each entry: finite entries whose norm overflows (a diverging inner loop
        # differentiated) would be clipped to zero, a silent no-op step
        norm = torch.nn.utils.get_total_norm(list(grads.values()))
        ok = torch.isfinite(norm) & metrics.pop("ok", torch.tensor(True))
        if bool(ok):  # the one host synchronisation of a meta-step
            metrics["skipped"] = torch.tensor(0.0)
            return grads, metrics, True
        residual = metrics.get("cg_residual")
        detail = "" if residual is None else f" (CG relative residual {float(residual):.3g})"
        if not bool(metrics.get("inner_finite", True)):
            detail += " (non-finite values in the inner loop)"
        warnings.warn(
            f"{self.name}: meta-gradient not finite (norm {float(norm):.3g}) or CG above tolerance{detail}; "
            "meta-step skipped",
            MetaStepSkipped,
            stacklevel=3,
        )
        metrics["skipped"] = torch.tensor(1.0)
        return {k: torch.zeros_like(v) for k, v in grads.items()}, metrics, False

    def meta_gradient(self, batch: SignalBatch) -> Tree:
        """The meta-gradient of :meth:`outer_loss`, by name (zeros, with a warning, if skipped)."""
        grads, self.last_metrics, _ = self._checked_gradient(batch)
        return grads

    def compute_gradients(self, batch: SignalBatch) -> dict[str, torch.Tensor]:
        """Accumulate the meta-gradient into ``.grad``; return detached metrics."""
        grads, metrics, ok = self._checked_gradient(batch)
        if ok:
            for name, param in self.meta_parameters().items():
                g = grads[name].to(param.dtype)
                param.grad = g if param.grad is None else param.grad + g
        return {k: v.detach() for k, v in metrics.items()}

    # -- reconstruction --------------------------------------------------------------------------
    def settings(self, budget: Mapping[str, Any]) -> list[tuple[str, int | None]]:
        """After each count of ``budget["adapt_steps"]`` adaptation steps."""
        return [(f"{k} steps", int(k)) for k in budget["adapt_steps"]]

    def adapt(self, context: Observations, forward_map: ForwardMap, steps: int | None = None) -> AdaptedState:
        raise NotImplementedError

    def predict(
        self,
        state: AdaptedState,
        queries: torch.Tensor,
        query_map: ForwardMap,
        num_samples: int,
        variance: bool = True,
    ) -> Prediction:
        """Deterministic learners: the adapted field through ``query_map`` (no variance)."""
        with torch.no_grad():
            return Prediction(self.observe(state.params, queries, query_map))

    def reconstruct(
        self,
        context: Observations,
        context_map: ForwardMap,
        queries: torch.Tensor,
        query_map: ForwardMap,
        *,
        steps: int | None = None,
        num_samples: int = 16,
        variance: bool = True,
    ) -> Prediction:
        """Adapt to ``context`` for ``steps`` inner steps, then predict at ``queries``."""
        state = self.adapt(context, context_map, steps)
        if state.finite is None:  # a learner whose adapt does not check its inner loop itself
            warn_non_finite(self.name, finite_per_signal(state.params))
        return self.predict(state, queries, query_map, num_samples, variance=variance)

    def condition_on(
        self,
        context: Observations,
        context_map: ForwardMap,
        *,
        steps: int | None = None,
        num_samples: int = 16,
    ) -> AdaptedLearner:
        """Run the inner loop once; the state serves every later :meth:`Adapted.predict`."""
        return AdaptedLearner(self, self.adapt(context, context_map, steps), num_samples)
