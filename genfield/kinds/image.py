"""Images: pixels observed directly (a :class:`~genfield.forward.point.PointMap`), scored by PSNR.

Data configs ``faces`` (built-in LFW faces), ``glyphs`` (built-in letters and digits, held-out
typefaces) and ``images`` (a folder). The context is a random
fraction of the pixels (:class:`~genfield.datasets.images.ImageSplit`); evaluation queries every
pixel, and scores PSNR and SSIM of the image clamped to [0, 1]. The figure is an image grid: ground
truth | context | per method reconstruction, error, std. CT reuses the pixel-grid queries and scores.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from genfield.datasets.batch import Observations, SignalBatch
from genfield.datasets.images import as_images, context_mask
from genfield.errors import InputError
from genfield.fields.coords import grid_coords
from genfield.forward import PointMap
from genfield.interface import Adapted, Prediction
from genfield.kinds.base import (
    DataBundle,
    KindSpec,
    classical,
    make_bundle,
    option,
    require_folder,
    three_way,
)
from genfield.kinds.inputs import on_cpu, read_image_file, save_std, seeded

if TYPE_CHECKING:
    from genfield.classical.base import Baseline


def image_size(cfg: Mapping[str, Any]) -> int:
    """The side images of data config ``cfg`` are resized to (built-in data 32, a folder 64)."""
    return int(option(cfg, "size", 64 if cfg.get("name") == "images" else 32))


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


def save_pixels(out: Path, prediction: Prediction, truth: torch.Tensor) -> float | None:
    """``reconstruction.png`` and ``std.png`` (where ``prediction`` has a std) of the first signal;
    the std's maximum (the scale of ``std.png``), or None."""
    from genfield.viz.figures import save_image

    save_image(out / "reconstruction.png", prediction_images(prediction, truth)[0])
    std = prediction_images(prediction, truth, std=True)
    return save_std(out / "std.png", None if std is None else std[0])


def mask_index(mask_path: Path, image_path: Path, size: int) -> torch.Tensor:
    """Flat indices of the observed (non-zero) pixels of a mask, cropped and resized like the image."""
    from genfield.datasets.images import square_image

    if not mask_path.is_file():
        raise InputError(f"mask file not found: {mask_path}")
    mask = read_image_file(mask_path, grey=True)
    image_shape = read_image_file(image_path, grey=True).shape[:2]
    if mask.shape[:2] != image_shape:
        raise InputError(
            f"mask {mask_path} is {mask.shape[0]} x {mask.shape[1]} but image {image_path} is "
            f"{image_shape[0]} x {image_shape[1]}"
        )
    observed = square_image((mask > 0).astype(np.float32), size)[..., 0] >= 0.5
    index = torch.nonzero(observed.flatten()).flatten()
    if index.numel() == 0:
        raise InputError(f"mask {mask_path} observes no pixel (after resizing to {size} x {size})")
    return index


class ImageKind(KindSpec):
    name = "image"
    in_dim = 2
    metric = "psnr"
    tokenizer = "points"
    local_features = "set_convolution"
    process_defaults = MappingProxyType({"ponp": {"local_features": True}})
    baselines = (classical("biharmonic"), classical("gaussian-prior"), classical("mean"))
    accepts = ("image",)
    describe = "an image file"

    def head(self, cfg: Mapping[str, Any], channels: int) -> str:
        return "grey" if channels == 1 else "rgb"

    def build_data(self, cfg: Mapping[str, Any], seed: int) -> DataBundle:
        from genfield.datasets.images import ImageFolder

        size = image_size(cfg)
        if cfg["name"] == "faces":
            from genfield.datasets.builtin import builtin_faces

            parts, channels = tuple(builtin_faces(s, size=size) for s in ("train", "val", "test")), 1
        elif cfg["name"] == "glyphs":
            from genfield.datasets.builtin import builtin_glyphs

            counts = {"train": option(cfg, "n_signals", None), "val": None, "test": None}
            parts, channels = tuple(builtin_glyphs(s, size, counts[s], seed) for s in counts), 1
        else:
            folder = ImageFolder(require_folder(cfg), size=size, grey=bool(cfg.get("grey", False)))
            parts, channels = three_way(folder, cfg, seed), folder.channels
        return make_bundle(cfg, self.name, parts, self.head(cfg, channels), *self.splits(cfg))

    def splits(self, cfg: Mapping[str, Any]) -> tuple[Callable, Callable]:
        from genfield.datasets.images import ImageSplit

        fraction = float(option(cfg, "context_fraction", 0.1))
        # training targets may be a random subset of pixels (``train_target``: cheaper steps, the
        # neural-process convention); evaluation always scores every pixel
        train = ImageSplit(context_fraction=fraction, target=option(cfg, "train_target", "all"))
        return train, ImageSplit(context_fraction=fraction)

    def read_input(self, path: Path, given: str, run: Any, options: Mapping[str, Any]) -> SignalBatch:
        """The resized image, its context a seeded ``context_fraction`` (or a mask's pixels)."""
        from genfield.datasets.images import ImageSignal, square_image

        size = image_size(run.data)
        image = square_image(read_image_file(path, run.head == "grey"), size)
        split = self.splits(run.data)[1]
        if options.get("context_fraction") is not None:
            split = replace(split, context_fraction=float(options["context_fraction"]))
        batch = split([ImageSignal(image, path.name, tuple(image.shape[:2]))], seeded(options))
        if options.get("mask"):  # the target is every pixel in raster order: the mask indexes it
            index = mask_index(Path(str(options["mask"])), path, size)[None]
            batch.context = Observations(batch.target.queries[:, index[0]], batch.target.values[:, index[0]])
            batch.extras["context_index"] = index
        return batch

    def write_outputs(
        self,
        out: Path,
        batch: SignalBatch,
        adapted: Adapted,
        run: Any,
        options: Mapping[str, Any],
        references: Mapping[str, Prediction] | None = None,
    ) -> dict[str, Any]:
        """``reconstruction.png``, ``std.png`` (where the method has one), the image grid with the
        ``references`` beside the method; PSNR, SSIM."""
        queries, query_map = self.dense_queries(batch)
        prediction = on_cpu(adapted.predict(queries.to(run.device), query_map))
        truth = batch.ground_truth
        std_max = save_pixels(out, prediction, truth)
        scores = self.score(prediction.mean, batch)
        figures = self.write_figures(out, batch, {**(references or {}), run.name: prediction})
        return {
            "psnr": float(scores["psnr"][0]),
            "ssim": float(scores["ssim"][0]),
            "n_context": batch.context.num_observations,
            "image_size": list(truth.shape[1:3]),
            "std_max": std_max,
            "figure": [str(f) for f in figures],
        }

    def write_baseline(
        self,
        out: Path,
        batch: SignalBatch,
        baseline: Baseline,
        prediction: Prediction,
        options: Mapping[str, Any],
    ) -> dict[str, Any]:
        """``reconstruction.png`` (and ``std.png`` where the baseline has a variance); PSNR, SSIM."""
        save_pixels(out, prediction, batch.ground_truth)
        return {key: float(value[0]) for key, value in self.score(prediction.mean, batch).items()}

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
