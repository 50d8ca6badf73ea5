"""The interface that both routes (meta-initialization and neural processes) satisfy.

The CLI, the comparison experiments and the notebooks only ever talk to a :class:`Reconstructor`, so
they never branch on the route.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from genfield.datasets.batch import Observations, SignalBatch
from genfield.forward import ForwardMap


@dataclass
class Prediction:
    """A predictive distribution at some queries: ``mean`` and ``variance`` are ``(S, M, c)``.

    ``variance`` is ``None`` for methods that give no uncertainty (a deterministic fit). ``samples``
    optionally holds the draws ``(K, S, M, c)`` the moments were computed from. ``noise_variance``,
    where a method separates it, is the part of ``variance`` that is the noise of a new observation
    (iBaML's learned ``sigma^2``): ``std`` is the spread of a new observation (what intervals on
    held-out values need), ``signal_std`` the uncertainty about the signal itself (what uncertainty
    maps show: it is what falls where the signal was observed).
    """

    mean: torch.Tensor
    variance: torch.Tensor | None = None
    samples: torch.Tensor | None = None
    noise_variance: torch.Tensor | None = None

    @property
    def std(self) -> torch.Tensor | None:
        return None if self.variance is None else self.variance.clamp_min(0).sqrt()

    @property
    def signal_std(self) -> torch.Tensor | None:
        """``std`` without the observation noise (``std`` itself where it is not separated)."""
        if self.variance is None or self.noise_variance is None:
            return self.std
        return (self.variance - self.noise_variance).clamp_min(0).sqrt()


class Adapted(ABC):
    """A method conditioned on one context (adapted once): predict at any queries, in any number of
    calls, without adapting again (rendered views, marching-cubes chunks, tiles of a large image)."""

    @abstractmethod
    def predict(self, queries: torch.Tensor, query_map: ForwardMap, *, variance: bool = True) -> Prediction:
        """Predicted observations at ``queries`` ``(S, M, q)`` through ``query_map``; see
        :meth:`Reconstructor.reconstruct` for ``variance``."""


class Deferred(Adapted):
    """The fallback :class:`Adapted` of a method without its own: every :meth:`predict` calls
    :meth:`Reconstructor.reconstruct` (so it adapts again each time, under the same seed)."""

    def __init__(
        self,
        method: Reconstructor,
        context: Observations,
        context_map: ForwardMap,
        steps: int | None,
        num_samples: int,
    ) -> None:
        self.method, self.context, self.context_map = method, context, context_map
        self.steps, self.num_samples = steps, num_samples
        self.seed = int(torch.randint(0, 2**62, (1,)))  # each call draws what the first would

    def predict(self, queries: torch.Tensor, query_map: ForwardMap, *, variance: bool = True) -> Prediction:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return self.method.reconstruct(
                self.context,
                self.context_map,
                queries,
                query_map,
                steps=self.steps,
                num_samples=self.num_samples,
                variance=variance,
            )


class Reconstructor(nn.Module, ABC):
    """A method that learns from a collection and reconstructs new signals from their context.

    Training is gradient-based for every route: :meth:`compute_gradients` fills ``.grad`` of
    :meth:`parameters` from one meta-batch (a meta-gradient for meta-learners, the gradient of a
    training loss for neural processes) and returns scalar metrics as tensors (no host sync). The
    trainer owns the optimizer, so distributed training only has to all-reduce those gradients.
    """

    #: Whether the method's gradients need double backward through the field (MAML, iMAML, iBaML).
    needs_double_backward: bool = False
    #: Whether training on a collection changes the method (``False``: nothing is learned across
    #: signals, so a comparison spends no meta-steps on it).
    learns_from_collection: bool = True
    #: The data kinds the method applies to (``None``: every kind); a comparison skips the others.
    kinds: tuple[str, ...] | None = None

    def settings(self, budget: Mapping[str, Any]) -> list[tuple[str, int | None]]:
        """The ``(label, steps)`` at which a comparison evaluates the method under ``budget`` (a
        ``configs/budget`` dict); ``steps`` goes to :meth:`reconstruct`. Each family overrides it:
        adaptation steps, a forward pass and test-time optimisation, fits from scratch."""
        return [("default", None)]

    def optimizer_groups(self, lr: float) -> list[dict]:
        """Parameter groups for the trainer's Adam (override to give some parameters their own
        learning rate, e.g. a prior's log-variance); by default one group at ``lr``."""
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": lr}]

    @abstractmethod
    def compute_gradients(self, batch: SignalBatch) -> dict[str, torch.Tensor]:
        """Accumulate the training gradient of ``batch`` into ``.grad``; return detached metrics."""

    @abstractmethod
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
        """Reconstruct signals from their context and predict observations at ``queries``.

        Args:
            context: the observations ``(S, N, .)`` of each signal.
            context_map: the forward map through which the context was observed.
            queries: ``(S, M, q)`` what to predict, through ``query_map`` (e.g. every pixel with a
                :class:`~genfield.forward.point.PointMap`, novel-view rays with a volume renderer).
            steps: adaptation steps (meta-learners) or test-time optimisation steps (processes);
                ``None`` means the method's configured default.
            num_samples: Monte-Carlo samples for the predictive moments of stochastic methods.
            variance: whether the predictive variance is wanted. ``False`` lets a method skip it
                where it costs more than the mean (iBaML's Laplace predictive needs Jacobians);
                the prediction's ``variance`` may then be ``None``.
        """

    def condition_on(
        self,
        context: Observations,
        context_map: ForwardMap,
        *,
        steps: int | None = None,
        num_samples: int = 16,
    ) -> Adapted:
        """Adapt to ``context`` once; the returned :class:`Adapted` predicts at any queries.

        ``reconstruct(context, map, queries, query_map)`` equals
        ``condition_on(context, map).predict(queries, query_map)``. Methods override this to keep
        their adapted state (meta-learners: the inner loop's parameters; neural processes: the
        latent draws and test-time refinement); the default re-runs :meth:`reconstruct` per call.
        """
        return Deferred(self, context, context_map, steps, num_samples)
