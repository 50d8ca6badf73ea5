"""Views: 3-D scenes observed through volume rendering along camera rays, scored by PSNR of views.

Data configs ``views`` (built-in scenes), ``nerf_synthetic`` and ``srn`` (folders). The context is
whole rendered views; the evaluation target is one held-out view, rendered in full, whose PSNR is
the score. The figure is a grid of the rendered target views beside the ground truth.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange

from genfield.datasets.batch import Observations, SignalBatch, ViewLayout
from genfield.errors import InputError
from genfield.interface import Adapted, Prediction
from genfield.kinds.base import (
    DataBundle,
    KindSpec,
    cache_folder,
    classical,
    given,
    make_bundle,
    option,
    require_folder,
    three_way,
)
from genfield.kinds.inputs import on_cpu, progress, save_std

if TYPE_CHECKING:
    from genfield.classical.base import Baseline


def load_scene(folder: Path, downscale: int = 1) -> tuple[Any, Any | None]:
    """``(context scene, test scene or None)`` of a NeRF-synthetic (or SRN) scene folder."""
    from genfield.datasets.views import NerfSyntheticScene, SRNScene

    if (folder / "intrinsics.txt").is_file():
        return SRNScene(folder).load(), None
    listed = sorted(p.name for p in folder.glob("transforms*.json"))
    if not listed:
        scenes = sorted(d.name for d in folder.iterdir() if d.is_dir() and any(d.glob("transforms*.json")))
        if scenes:
            raise InputError(
                f"input {folder} holds {len(scenes)} scenes; give one scene folder, e.g. {folder / scenes[0]}"
            )
        raise InputError(f"no transforms*.json in {folder} (a NeRF-synthetic scene folder is expected)")
    context = NerfSyntheticScene(folder, "train", downscale=downscale).load()
    for split in ("test", "val"):
        if (folder / f"transforms_{split}.json").is_file():
            return context, NerfSyntheticScene(folder, split, downscale=downscale).load()
    return context, None


def scene_rays(scene: Any, views: list[int], clip_to_cube: bool) -> torch.Tensor:
    """The ray queries ``(1, V * H * W, 8)`` of a scene's ``views``, view-major (as :class:`ViewSplit`)."""
    from genfield.forward.volume import ray_queries

    origins, directions = scene.rays(torch.tensor(views))
    queries = ray_queries(origins, directions, scene.near, scene.far, clip_to_cube=clip_to_cube)
    return rearrange(queries, "v n q -> 1 (v n) q")


class ViewsKind(KindSpec):
    name = "views"
    in_dim = 3
    metric = "psnr"
    tokenizer = "patches"
    local_features = "projection"
    forward_map = "volume"
    #: pixelNeRF's projected context features on a 16^3 grid (docs/decisions.md: PONP's views defaults)
    process_defaults = MappingProxyType({"ponp": {"local_features": True}})
    baselines = (classical("nearest-view"),)
    accepts = ("views",)
    describe = "a NeRF-synthetic scene folder (transforms*.json + images)"

    def head(self, cfg: Mapping[str, Any], channels: int) -> str:
        return "radiance"

    def build_data(self, cfg: Mapping[str, Any], seed: int) -> DataBundle:
        from genfield.datasets.views import NerfSyntheticFolder, SRNFolder, builtin_views

        name = cfg["name"]
        if name == "views":
            folder = cache_folder(cfg, "views")
            dataset = builtin_views(
                folder,
                n_scenes=int(option(cfg, "n_signals", 128)),
                seed=seed,
                **given(cfg, "n_views", "size"),
            )
        elif name == "nerf_synthetic":
            dataset = NerfSyntheticFolder(require_folder(cfg))
        else:
            dataset = SRNFolder(require_folder(cfg))
        parts = three_way(dataset, cfg, seed)
        return make_bundle(cfg, self.name, parts, self.head(cfg, 3), *self.splits(cfg))

    def splits(self, cfg: Mapping[str, Any]) -> tuple[Callable, Callable]:
        from genfield.datasets.views import ViewSplit

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
        return train_split, eval_split

    def read_input(self, path: Path, given: str, run: Any, options: Mapping[str, Any]) -> SignalBatch:
        """The ``context_views`` (default: the first ``n_context_views``) of a scene folder, rendered
        by the evaluation split's renderer; the test views (or the remaining ones) are rendered later."""
        split = self.splits(run.data)[1]
        scene, test = load_scene(path, int(options["downscale"]))
        chosen = options.get("context_views")
        views = list(range(split.n_context_views)) if chosen is None else [int(v) for v in chosen]
        bad = [v for v in views if not 0 <= v < scene.num_views]
        if bad or not views:
            raise InputError(f"context_views {views} must be indices in [0, {scene.num_views}) of {path}")
        if test is None:  # no test split: the remaining views are the novel ones
            targets = [v for v in range(scene.num_views) if v not in views]
            if not targets:
                raise InputError(f"scene {path} has no views left to render besides context_views {views}")
            test = scene
        else:
            targets = list(range(test.num_views))
        colours = rearrange(scene.images[views], "v h w c -> 1 (v h w) c")
        layout = ViewLayout(len(views), *scene.image_size)
        context = Observations(scene_rays(scene, views, split.clip_to_cube), colours, layout)
        extras = {
            "context_views": views,
            "rendered_views": targets,
            "clip_to_cube": split.clip_to_cube,
            # the cameras and images a classical baseline reads (as ViewSplit's extras)
            "context_images": scene.images[views][None],
            "context_c2w": scene.c2w[views][None],
            "target_c2w": test.c2w[targets][None],
        }
        metadata = [{"name": path.name, "scene": test}]  # the rendered views' cameras and size
        return SignalBatch("views", split.renderer, context, context, metadata, extras=extras)

    def write_outputs(
        self,
        out: Path,
        batch: SignalBatch,
        adapted: Adapted,
        run: Any,
        options: Mapping[str, Any],
        references: Mapping[str, Prediction] | None = None,  # in out/baselines/, not in this figure
    ) -> dict[str, Any]:
        """Each rendered view (``view_<k>.png``, ``std_<k>.png``) from the one adapted state, the
        grid of them beside the truth; PSNR per view."""
        from genfield.metrics import psnr
        from genfield.viz.figures import image_grid, save_image

        test, targets = batch.metadata[0]["scene"], batch.extras["rendered_views"]
        height, width = test.image_size
        means, stds = [], []
        for k in progress(options, "views", "view", items=targets):  # one view at a time bounds the memory
            rays = scene_rays(test, [k], batch.extras["clip_to_cube"]).to(run.device)
            with torch.no_grad():
                prediction = on_cpu(adapted.predict(rays, batch.forward_map))
            mean = rearrange(prediction.mean, "1 (h w) c -> h w c", h=height).clamp(0, 1)
            means.append(mean)
            save_image(out / f"view_{k:03d}.png", mean)
            if prediction.signal_std is not None:
                std = rearrange(prediction.signal_std, "1 (h w) c -> h w c", h=height).mean(-1)
                stds.append(std)
                save_std(out / f"std_{k:03d}.png", std)
        rendered, truth = torch.stack(means), test.images[targets]
        scores = psnr(rendered, truth)
        spread = {run.name: torch.stack(stds)[..., None].expand_as(rendered)} if stds else None
        image_grid(out / "novel_views.png", truth, None, {run.name: rendered}, spread, max_signals=4)
        return {
            "psnr": float(scores.mean()),
            "psnr_per_view": [round(float(s), 4) for s in scores],
            "context_views": batch.extras["context_views"],
            "rendered_views": targets,
            "image_size": [height, width],
        }

    def write_baseline(
        self,
        out: Path,
        batch: SignalBatch,
        baseline: Baseline,
        prediction: Prediction,
        options: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Each rendered view (``view_<k>.png``) of the baseline; PSNR per view and their mean."""
        from genfield.metrics import psnr
        from genfield.viz.figures import save_image

        test, targets = batch.metadata[0]["scene"], batch.extras["rendered_views"]
        height, width = test.image_size
        views = rearrange(prediction.mean.detach().cpu(), "1 (v h w) c -> v h w c", h=height, w=width)
        for k, view in zip(targets, views.clamp(0, 1), strict=True):
            save_image(out / f"view_{k:03d}.png", view)
        scores = psnr(views.clamp(0, 1), test.images[targets])
        return {"psnr": float(scores.mean()), "psnr_per_view": [round(float(s), 4) for s in scores]}

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

        layout = batch.target.layout
        if not isinstance(layout, ViewLayout):
            raise InputError(f"views figures need whole target views (a ViewLayout), got {layout}")
        height, width = layout.image_size

        def views(values: torch.Tensor) -> torch.Tensor:
            return rearrange(values, "s (v h w) c -> (s v) h w c", h=height, w=width)

        images = {k: views(p.mean).clamp(0, 1) for k, p in predictions.items()}
        truth = views(batch.target.values)
        return [image_grid(out / "novel_views.png", truth, None, images, None, max_signals)]
