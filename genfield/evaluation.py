"""Evaluate any :class:`~genfield.interface.Reconstructor` on a batch, whatever the data kind.

The metric follows the kind: PSNR and SSIM of the reconstructed image (images, CT slices), IoU of the
predicted occupancy (or SDF sign) on the target points (shapes), PSNR of rendered target views
(views). Queries for images and CT are the full pixel grid through a
:class:`~genfield.forward.point.PointMap`; for shapes and views, the batch's own target queries and
forward map.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from einops import rearrange

from genfield.datasets.batch import SignalBatch
from genfield.fields.coords import grid_coords
from genfield.forward import PointMap
from genfield.interface import Prediction, Reconstructor


@dataclass
class Evaluation:
    """Per-signal metrics ``(S,)`` and the prediction they were computed from."""

    metrics: dict[str, torch.Tensor]
    prediction: Prediction
    queries: torch.Tensor

    def summary(self) -> dict[str, float]:
        return {name: value.float().mean().item() for name, value in self.metrics.items()}


def dense_queries(batch: SignalBatch) -> tuple[torch.Tensor, object]:
    """The queries and forward map on which a batch is evaluated."""
    if batch.kind in ("image", "ct"):
        height, width = batch.ground_truth.shape[1:3]
        coords = grid_coords((height, width), device=batch.ground_truth.device)
        return coords.expand(batch.num_signals, -1, -1), PointMap()
    return batch.target.queries, batch.forward_map


def as_images(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape ``(S, H*W, C)`` predictions to the ``(S, H, W, C)`` layout of ``like``."""
    return rearrange(values, "s (h w) c -> s h w c", h=like.shape[1], w=like.shape[2])


def evaluate(
    method: Reconstructor, batch: SignalBatch, steps: int | None = None, num_samples: int = 16
) -> Evaluation:
    """Reconstruct every signal of ``batch`` from its context and score it."""
    from genfield.metrics import iou, psnr, ssim

    queries, query_map = dense_queries(batch)
    prediction = method.reconstruct(
        batch.context, batch.forward_map, queries, query_map, steps=steps, num_samples=num_samples
    )
    mean = prediction.mean.detach()
    if batch.kind in ("image", "ct"):
        truth = batch.ground_truth
        image = as_images(mean, truth).clamp(0, 1)
        metrics = {"psnr": psnr(image, truth)}
        if min(truth.shape[1:3]) >= 11:  # SSIM's 11 x 11 Gaussian window must fit
            metrics["ssim"] = ssim(image, truth)
    elif batch.kind == "shape":
        target = batch.target.values
        if batch.extras.get("target", "occupancy") == "sdf":
            metrics = {"iou": iou(mean <= 0, target <= 0)}
        else:
            metrics = {"iou": iou(mean > 0.5, target > 0.5)}
    else:
        metrics = {"psnr": psnr(mean.clamp(0, 1), batch.target.values)}
    return Evaluation(metrics=metrics, prediction=prediction, queries=queries)
