"""CT: slices observed through parallel-beam projections, scored on the slice like an image.

Data configs ``ct_phantoms`` (random ellipse phantoms) and ``ct_images`` (slices from an image
folder, or built-in natural images). Training contexts draw ``n_context_angles`` random angles;
evaluation contexts have ``eval_context_angles`` even angles. Evaluation queries every pixel of the
slice (PSNR, SSIM); the figure is the CT panel (context sinogram | FBP | reconstruction | error |
std); the classical baseline is filtered back-projection of the context projections. PONP on CT
defaults to back-projection local features and varying training views, the two parts that let it
beat FBP from 8 views (processes/models.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from genfield.datasets.batch import SignalBatch
from genfield.interface import Prediction
from genfield.kinds.base import (
    DataBundle,
    KindSpec,
    classical,
    given,
    make_bundle,
    option,
    require_folder,
    three_way,
)
from genfield.kinds.image import image_scores, pixel_queries, prediction_images


class CTKind(KindSpec):
    name = "ct"
    in_dim = 2
    metric = "psnr"
    tokenizer = "projections"
    process_defaults = MappingProxyType({"ponp": {"local_features": True, "context_subsample": (1, 20)}})
    baselines = (classical("gaussian-prior"), classical("sart"), classical("fbp"), classical("mean"))

    def head(self, cfg: Mapping[str, Any], channels: int) -> str:
        return "attenuation"

    def build_data(self, cfg: Mapping[str, Any], seed: int) -> DataBundle:
        from genfield.datasets.ct import CTSplit

        parts = _slices(cfg, seed)
        common = given(cfg, "n_samples", "n_detectors")
        train_split = CTSplit(**given(cfg, "n_context_angles", "context_angles"), **common)
        eval_split = CTSplit(
            n_context_angles=int(option(cfg, "eval_context_angles", 8)), context_angles="even", **common
        )
        return make_bundle(cfg, self.name, parts, self.head(cfg, 1), train_split, eval_split)

    def dense_queries(self, batch: SignalBatch) -> tuple[torch.Tensor, Any]:
        return pixel_queries(batch)

    def score(self, mean: torch.Tensor, batch: SignalBatch) -> dict[str, torch.Tensor]:
        return image_scores(mean, batch.ground_truth)

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
        from genfield.classical.ct import context_sinograms, fbp_images
        from genfield.viz.figures import ct_figure

        truth, fbp, sinograms = batch.ground_truth, fbp_images(batch), context_sinograms(batch)[0]
        written = []
        for name, prediction in predictions.items():
            mean, std = prediction_images(prediction, truth), prediction_images(prediction, truth, std=True)
            for s in range(min(max_signals, batch.num_signals)):
                path = out / f"ct_{name}_{s}.png"
                ct_figure(
                    path,
                    sinograms[s],
                    fbp[s],
                    mean[s, ..., 0],
                    truth[s, ..., 0],
                    None if std is None else std[s, ..., 0],
                    angles=batch.extras["context_angles"][s],
                    data_range=1.0,
                )
                written.append(path)
        return written


def _slices(cfg: Mapping[str, Any], seed: int) -> tuple[Any, Any, Any]:
    """Train / val / test slices: phantoms drawn per split, or an image collection split three ways."""
    from genfield.datasets.ct import PhantomDataset, SinogramImageDataset

    resolution = int(option(cfg, "resolution", 32))
    if cfg["name"] == "ct_phantoms":
        n, evals = int(option(cfg, "n_signals", 512)), max(int(option(cfg, "eval_signals", 8)), 16)
        return (
            PhantomDataset(n, resolution, seed=seed),
            PhantomDataset(evals, resolution, seed=seed + 1_000_003),
            PhantomDataset(evals, resolution, seed=seed + 2_000_003),
        )
    if cfg.get("root"):
        from genfield.datasets.images import ImageFolder

        images = ImageFolder(require_folder(cfg), size=resolution, grey=True)
    else:
        from genfield.datasets.builtin import builtin_natural, natural_photos

        evals = max(int(option(cfg, "eval_signals", 8)), 16)
        counts = {"train": int(option(cfg, "n_signals", 256)), "val": evals, "test": evals}
        return tuple(  # val and test crops come from photographs never cropped for training
            SinogramImageDataset(
                builtin_natural(n, resolution, seed + i, True, natural_photos(s, True)), resolution=resolution
            )
            for i, (s, n) in enumerate(counts.items())
        )
    return three_way(SinogramImageDataset(images, resolution=resolution), cfg, seed)
