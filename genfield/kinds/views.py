"""Views: 3-D scenes observed through volume rendering along camera rays, scored by PSNR of views.

Data configs ``views`` (built-in scenes), ``nerf_synthetic`` and ``srn`` (folders). The context is
whole rendered views; the evaluation target is one held-out view, rendered in full, whose PSNR is
the score. The figure is a grid of the rendered target views beside the ground truth.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from einops import rearrange

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


class ViewsKind(KindSpec):
    name = "views"
    in_dim = 3
    metric = "psnr"
    tokenizer = "patches"
    baselines = (classical("nearest-view"),)

    def head(self, cfg: Mapping[str, Any], channels: int) -> str:
        return "radiance"

    def build_data(self, cfg: Mapping[str, Any], seed: int) -> DataBundle:
        from genfield.datasets.views import NerfSyntheticFolder, SRNFolder, ViewSplit, builtin_views

        name = cfg["name"]
        if name == "views":
            folder = Path(str(option(cfg, "cache_dir", Path.home() / ".cache" / "genfield" / "views")))
            dataset = builtin_views(
                folder,
                n_scenes=int(option(cfg, "n_signals", 16)),
                seed=seed,
                **given(cfg, "n_views", "size"),
            )
        elif name == "nerf_synthetic":
            dataset = NerfSyntheticFolder(require_folder(cfg))
        else:
            dataset = SRNFolder(require_folder(cfg))
        parts = three_way(dataset, cfg, seed)
        render = {
            "n_samples": int(option(cfg, "n_samples", 32)),
            **given(cfg, "n_importance"),
        }
        n_context = given(cfg, "n_context_views")
        train_split = ViewSplit(
            **n_context,
            **given(cfg, "n_target_views"),
            rays_per_signal=cfg.get("rays_per_signal", 512),  # null: whole target views
            **render,
        )
        eval_split = ViewSplit(
            **n_context, n_target_views=1, rays_per_signal=None, stratified=False, **render
        )
        return make_bundle(cfg, self.name, parts, self.head(cfg, 3), train_split, eval_split)

    def score(self, mean: torch.Tensor, batch: SignalBatch) -> dict[str, torch.Tensor]:
        from genfield.metrics import psnr

        return {"psnr": psnr(mean.clamp(0, 1), batch.target.values)}

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

        height, width = batch.extras["image_size"]

        def views(values: torch.Tensor) -> torch.Tensor:
            return rearrange(values, "s (v h w) c -> (s v) h w c", h=height, w=width)

        images = {k: views(p.mean).clamp(0, 1) for k, p in predictions.items()}
        truth = views(batch.target.values)
        return [image_grid(out / "novel_views.png", truth, None, images, None, max_signals)]
