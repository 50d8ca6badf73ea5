"""Evaluate any :class:`~genfield.interface.Reconstructor` on a batch, whatever the data kind.

The data kind's spec (:mod:`genfield.kinds`) says where a batch is evaluated and how it is scored:
images and CT slices on the full pixel grid through a :class:`~genfield.forward.point.PointMap`
(PSNR and SSIM), shapes on the batch's target points (IoU of the predicted inside), views on the
rendered target view (PSNR).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from genfield.datasets.batch import SignalBatch
from genfield.interface import Prediction, Reconstructor
from genfield.kinds import get_kind
from genfield.kinds.image import as_images

__all__ = ["Evaluation", "as_images", "dense_queries", "evaluate"]


@dataclass
class Evaluation:
    """Per-signal metrics ``(S,)`` and the prediction they were computed from."""

    metrics: dict[str, torch.Tensor]
    prediction: Prediction
    queries: torch.Tensor

    def summary(self) -> dict[str, float]:
        return {name: value.float().mean().item() for name, value in self.metrics.items()}


def dense_queries(batch: SignalBatch) -> tuple[torch.Tensor, Any]:
    """The queries and forward map on which a batch is evaluated (its kind's spec decides)."""
    return get_kind(batch.kind).dense_queries(batch)


def evaluate(
    method: Reconstructor, batch: SignalBatch, steps: int | None = None, num_samples: int = 16
) -> Evaluation:
    """Reconstruct every signal of ``batch`` from its context and score it by its kind's spec."""
    spec = get_kind(batch.kind)
    queries, query_map = spec.dense_queries(batch)
    prediction = method.reconstruct(
        batch.context, batch.forward_map, queries, query_map, steps=steps, num_samples=num_samples
    )
    return Evaluation(spec.score(prediction.mean.detach(), batch), prediction, queries)
