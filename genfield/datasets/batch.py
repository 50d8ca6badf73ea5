"""The one batch structure that every route consumes.

A :class:`SignalBatch` holds a meta-batch of ``S`` signals of one kind. Each signal has *context*
observations (what a method may look at) and *target* observations (what it is scored on), and the
batch names the forward map that turns field outputs into observations. Loaders build it; the
meta-learners, the neural processes, the metrics and the figures consume it unchanged.

Shapes: ``queries`` is ``(S, N, q)`` and ``values`` is ``(S, N, c)``. What a query is depends on the
forward map: a point of the field domain for :class:`~genfield.forward.point.PointMap`, an
``(angle, detector offset)`` pair for CT projections, a ray ``(origin, direction, near, far)`` for
volume rendering. Within one batch every signal has the same ``N`` (samplers draw fixed counts), so
no padding is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch


@dataclass
class Observations:
    """Observations of ``S`` signals: ``values[s, n]`` is what the forward map gives at ``queries[s, n]``."""

    queries: torch.Tensor
    values: torch.Tensor

    def __post_init__(self) -> None:
        if self.queries.shape[:2] != self.values.shape[:2]:
            raise ValueError(
                f"queries {tuple(self.queries.shape)} and values {tuple(self.values.shape)} "
                "must share their (signal, observation) dimensions"
            )

    @property
    def num_signals(self) -> int:
        return self.queries.shape[0]

    @property
    def num_observations(self) -> int:
        return self.queries.shape[1]

    def to(self, device: torch.device | str) -> Observations:
        return Observations(self.queries.to(device), self.values.to(device))

    def select(self, index: torch.Tensor | slice) -> Observations:
        """The observations of a subset of signals (an index or slice over ``S``)."""
        return Observations(self.queries[index], self.values[index])


@dataclass
class SignalBatch:
    """A meta-batch of signals of one kind.

    Attributes:
        kind: ``"image"``, ``"ct"``, ``"shape"`` or ``"views"``.
        forward_map: the map from a field to observations (both context and target).
        context: observations a method may condition on or adapt to.
        target: observations the method is scored on (typically a superset of the context).
        metadata: one dict per signal (name, original size, normalisation, ...).
        ground_truth: optional dense ground truth for metrics and figures, e.g. the images
            ``(S, H, W, C)`` or CT slices ``(S, H, W, 1)``.
        extras: kind-specific data (e.g. CT angles and detector count, view image sizes).
    """

    kind: str
    forward_map: Any
    context: Observations
    target: Observations
    metadata: list[dict[str, Any]] = field(default_factory=list)
    ground_truth: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def num_signals(self) -> int:
        return self.context.num_signals

    def to(self, device: torch.device | str) -> SignalBatch:
        gt = None if self.ground_truth is None else self.ground_truth.to(device)
        extras = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.extras.items()}
        return replace(
            self,
            context=self.context.to(device),
            target=self.target.to(device),
            ground_truth=gt,
            extras=extras,
        )

    def select(self, index: torch.Tensor | slice) -> SignalBatch:
        """The batch restricted to a subset of its signals (used to shard a meta-batch over ranks)."""
        positions = range(self.num_signals)[index] if isinstance(index, slice) else index.tolist()
        gt = None if self.ground_truth is None else self.ground_truth[index]
        meta = [self.metadata[i] for i in positions] if self.metadata else []
        extras = {  # per-signal tensors (leading dimension S) follow the selection
            k: v[index] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == self.num_signals else v
            for k, v in self.extras.items()
        }
        return replace(
            self,
            context=self.context.select(index),
            target=self.target.select(index),
            metadata=meta,
            ground_truth=gt,
            extras=extras,
        )
