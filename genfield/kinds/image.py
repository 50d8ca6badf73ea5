"""Images: pixels observed directly (a :class:`~genfield.forward.point.PointMap`), scored by PSNR.

Data configs ``faces`` (built-in LFW faces), ``glyphs`` (built-in letters and digits, held-out
typefaces) and ``images`` (a folder). The context is a random
fraction of the pixels (:class:`~genfield.datasets.images.ImageSplit`); evaluation queries every
pixel, and scores PSNR and SSIM of the image clamped to [0, 1]. The figure is an image grid: ground
truth | context | per method reconstruction, error, std. CT reuses the pixel-grid queries and scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from einops import rearrange

from genfield.datasets.batch import SignalBatch
from genfield.datasets.images import context_mask
from genfield.fields.coords import grid_coords
from genfield.forward import PointMap
from genfield.interface import Prediction
from genfield.kinds.base import (
    DataBundle,
    KindSpec,
    classical,
    make_bundle,
    option,
    require_folder,
    three_way,
)


def as_images(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape ``(S, H*W, C)`` predictions to the ``(S, H, W, C)`` layout of ``like``."""
    return rearrange(values, "s (h w) c -> s h w c", h=like.shape[1], w=like.shape[2])


def pixel_queries(batch: SignalBatch) -> tuple[torch.Tensor, PointMap]:
    """Every pixel of the batch's ground-truth images, through a point map."""
    height, width = batch.ground_truth.shape[1:3]
    coords = grid_coords((height, width), device=batch.ground_truth.device)
    return coords.expand(batch.num_signals, -1, -1), PointMap()


def image_scores(mean: torch.Tensor, truth: torch.Tensor) -> dict[str, torch.Tensor]:
    """PSNR (and SSIM where its 11 x 11 window fits) of ``(S, H*W, C)`` pixels against ``truth``."""
    from genfield.metrics import psnr, ssim

    image = as_images(mean, truth).clamp(0, 1)
    metrics = {"psnr": psnr(image, truth)}
    if min(truth.shape[1:3]) >= 11:
        metrics["ssim"] = ssim(image, truth)
    return metrics


def prediction_images(prediction: Prediction, like: torch.Tensor, std: bool = False) -> torch.Tensor | None:
    """A prediction's mean (clamped to [0, 1]) or signal std as images on the CPU, for figures."""
    values = prediction.signal_std if std else prediction.mean
    if values is None:
        return None
    images = as_images(values.detach().cpu(), like)
    return images if std else images.clamp(0, 1)


class ImageKind(KindSpec):
    name = "image"
    in_dim = 2
    metric = "psnr"
    tokenizer = "points"
    process_defaults = MappingProxyType({"ponp": {"local_features": True}})
    baselines = (classical("biharmonic"), classical("gaussian-prior"), classical("mean"))

    def head(self, cfg: Mapping[str, Any], channels: int) -> str:
        return "grey" if channels == 1 else "rgb"

    def build_data(self, cfg: Mapping[str, Any], seed: int) -> DataBundle:
        from genfield.datasets.images import ImageFolder, ImageSplit

        if cfg["name"] == "faces":
            from genfield.datasets.builtin import builtin_faces

            size = int(option(cfg, "size", 32))
            parts, channels = tuple(builtin_faces(s, size=size) for s in ("train", "val", "test")), 1
        elif cfg["name"] == "glyphs":
            from genfield.datasets.builtin import builtin_glyphs

            size, n = int(option(cfg, "size", 32)), option(cfg, "n_signals", None)
            counts = {"train": n, "val": None, "test": None}
            parts, channels = tuple(builtin_glyphs(s, size, counts[s], seed) for s in counts), 1
        else:
            size, grey = int(option(cfg, "size", 64)), bool(cfg.get("grey", False))
            folder = ImageFolder(require_folder(cfg), size=size, grey=grey)
            parts, channels = three_way(folder, cfg, seed), folder.channels
        split = ImageSplit(context_fraction=float(option(cfg, "context_fraction", 0.1)))
        return make_bundle(cfg, self.name, parts, self.head(cfg, channels), split)

    def dense_queries(self, batch: SignalBatch) -> tuple[torch.Tensor, PointMap]:
        return pixel_queries(batch)

    def score(self, mean: torch.Tensor, batch: SignalBatch) -> dict[str, torch.Tensor]:
        return image_scores(mean, batch.ground_truth)

    def context_mask(self, batch: SignalBatch) -> torch.Tensor | None:
        return context_mask(batch)

    def write_figures(
        self,
        out: Path,
        batch: SignalBatch,
        predictions: Mapping[str, Prediction],
        *,
        max_signals: int = 4,
        mesh_resolution: int = 64,
        field_fns: Mapping[str, Callable] | None = None,
        methods: Mapping[str, Any] | None = None,
    ) -> list[Path]:
        from genfield.viz.figures import image_grid

        truth = batch.ground_truth
        images = {k: prediction_images(p, truth) for k, p in predictions.items()}
        stds = {k: prediction_images(p, truth, std=True) for k, p in predictions.items()}
        mask = self.context_mask(batch)
        return [image_grid(out / "reconstructions.png", truth, mask, images, stds, max_signals)]
