"""CT: slices observed through parallel-beam projections, scored on the slice like an image.

Data configs ``ct_phantoms`` (random ellipse phantoms) and ``ct_images`` (slices from an image
folder, or built-in natural images). Training contexts draw ``n_context_angles`` random angles;
evaluation contexts have ``eval_context_angles`` even angles. Evaluation queries every pixel of the
slice (PSNR, SSIM); the figure is the CT panel (context sinogram | FBP | reconstruction | error |
std); the classical baseline is filtered back-projection of the context projections. PONP on CT
defaults to back-projection local features and varying training views, the two parts that let it
beat FBP from 8 views (docs/decisions.md).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from einops import rearrange

from genfield.datasets.batch import Observations, ProjectionLayout, SignalBatch
from genfield.errors import InputError
from genfield.fields.coords import grid_coords
from genfield.forward import PointMap
from genfield.interface import Adapted, Prediction
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
from genfield.kinds.inputs import finite_or_refuse, on_cpu, read_image_file, save_std

if TYPE_CHECKING:
    from genfield.classical.base import Baseline


class CTKind(KindSpec):
    name = "ct"
    in_dim = 2
    metric = "psnr"
    tokenizer = "projections"
    local_features = "back_projection"
    forward_map = "ct"
    process_defaults = MappingProxyType({"ponp": {"local_features": True, "context_subsample": (1, 20)}})
    baselines = (classical("gaussian-prior"), classical("sart"), classical("fbp"), classical("mean"))
    accepts = ("image", "sinogram")
    describe = "a sinogram (.npy) or an image of a slice"

    def head(self, cfg: Mapping[str, Any], channels: int) -> str:
        return "attenuation"

    def build_data(self, cfg: Mapping[str, Any], seed: int) -> DataBundle:
        return make_bundle(cfg, self.name, _slices(cfg, seed), self.head(cfg, 1), *self.splits(cfg))

    def splits(self, cfg: Mapping[str, Any]) -> tuple[Callable, Callable]:
        from genfield.datasets.ct import CTSplit

        common = given(cfg, "n_samples", "n_detectors")
        train_split = CTSplit(**given(cfg, "n_context_angles", "context_angles"), **common)
        eval_split = CTSplit(
            n_context_angles=int(option(cfg, "eval_context_angles", 8)), context_angles="even", **common
        )
        return train_split, eval_split

    def input_hint(self, given: str) -> str:
        if given == "points":  # an (A, 3) array looks like a point cloud
            return " (if it is a sinogram with 3 detector bins, say input_type=sinogram)"
        return ""

    def read_input(self, path: Path, given: str, run: Any, options: Mapping[str, Any]) -> SignalBatch:
        """A slice image projected at ``angles`` as the evaluation split projects (it is the ground
        truth), or a measured sinogram at its ``angles`` (no ground truth)."""
        from genfield.datasets.angles import parse_angles
        from genfield.datasets.ct import SinogramImageDataset, project_slices
        from genfield.forward.ct import ParallelBeamProjection, ct_queries

        split, resolution = self.splits(run.data)[1], int(option(run.data, "resolution", 32))
        n_samples, truth = split.n_samples or resolution, None
        if given == "image":
            slice_image = torch.as_tensor(read_image_file(path, grey=True))
            truth = SinogramImageDataset([slice_image], resolution=resolution)[0].image[None]  # (1, R, R, 1)
            angles = parse_angles(options.get("angles"), split.n_context_angles, options.get("angle_unit"))
            n_det = split.n_detectors or resolution
            context = project_slices(truth, angles[None], n_det, n_samples, split.support)
        else:
            sinogram = read_sinogram(path, given, options)
            angles = parse_angles(options.get("angles"), unit=options.get("angle_unit"))
            if len(angles) != sinogram.shape[0]:
                transposed = len(angles) == sinogram.shape[1]
                raise InputError(
                    f"sinogram {path} has {sinogram.shape[0]} rows (angles) but {len(angles)} angles were "
                    f"given (rows are angles){SKIMAGE_HINT if transposed else ''}"
                )
            warn_if_pixel_sums(sinogram, path, options)
            n_det = sinogram.shape[1]
            layout = ProjectionLayout(len(angles), n_det)
            values = rearrange(sinogram, "a d -> 1 (a d) 1")
            context = Observations(ct_queries(angles[None], n_det), values, layout)
        return SignalBatch(
            "ct",
            ParallelBeamProjection(n_samples=n_samples, support=split.support),
            context,
            context,
            metadata=[{"name": path.name, "path": str(path), "resolution": resolution}],
            ground_truth=truth,
            extras={"context_angles": angles[None], "resolution": resolution},
        )

    def write_outputs(
        self,
        out: Path,
        batch: SignalBatch,
        adapted: Adapted,
        run: Any,
        options: Mapping[str, Any],
        references: Mapping[str, Prediction] | None = None,
    ) -> dict[str, Any]:
        """The slice and its FBP (PNGs and the CT panel); PSNR and SSIM of both where the slice is
        known; with ``references``, ``reconstructions.png``: the slice beside theirs (where it is known)."""
        from genfield.classical.ct import context_sinograms
        from genfield.forward.ct import fbp
        from genfield.metrics import psnr, ssim
        from genfield.viz.figures import ct_figure, save_image

        resolution = batch.extras["resolution"]
        sinograms, context_angles = context_sinograms(batch)  # its detector count is the layout's
        sinogram, angles, n_det = sinograms[0], context_angles[0], sinograms.shape[-1]
        grid = grid_coords((resolution, resolution), device=run.device)[None]
        image, std = slice_and_std(on_cpu(adapted.predict(grid, PointMap())), resolution)
        baseline = fbp(sinogram, angles, output_size=resolution)
        top = float(sinogram.abs().max())
        hint = f"the sinogram's values (up to {top:.3g}) are far from the run's training data; rescale with "
        results = (("reconstruction", image), ("FBP", baseline), ("predictive std", std))
        finite_or_refuse(results, Path(batch.metadata[0]["path"]), hint + "sinogram_scale=")
        save_image(out / "reconstruction.png", image.clamp(0, 1))
        save_image(out / "fbp.png", baseline.clamp(0, 1))
        metrics: dict[str, Any] = {
            "n_angles": len(angles),
            "n_detectors": n_det,
            "resolution": resolution,
            "std_max": save_std(out / "std.png", std),
        }
        truth = None if batch.ground_truth is None else batch.ground_truth[0]
        if truth is not None:
            slices = torch.stack([image.clamp(0, 1), baseline.clamp(0, 1)])[..., None]
            reference = truth[None].expand(2, -1, -1, -1)
            metrics.update(
                dict(zip(("psnr", "psnr_fbp"), psnr(slices, reference).tolist(), strict=True)),
                **dict(zip(("ssim", "ssim_fbp"), ssim(slices, reference).tolist(), strict=True)),
            )
        ct_figure(out / "ct.png", sinogram, baseline, image, truth, std, angles, data_range=1.0)
        if references and truth is not None:
            from genfield.viz.figures import image_grid

            truths = batch.ground_truth
            slices = {name: prediction_images(p, truths) for name, p in references.items()}
            stds = {name: prediction_images(p, truths, std=True) for name, p in references.items()}
            slices[run.name] = image[None, ..., None]
            stds[run.name] = None if std is None else std[None, ..., None]
            metrics["figure"] = str(image_grid(out / "reconstructions.png", truths, None, slices, stds))
        return metrics

    def write_baseline(
        self,
        out: Path,
        batch: SignalBatch,
        baseline: Baseline,
        prediction: Prediction,
        options: Mapping[str, Any],
    ) -> dict[str, Any]:
        """``reconstruction.png`` (and ``std.png`` where the baseline has a variance); PSNR and SSIM
        where the slice is known."""
        from genfield.viz.figures import save_image

        image, std = slice_and_std(on_cpu(prediction), batch.extras["resolution"])
        save_image(out / "reconstruction.png", image.clamp(0, 1))
        save_std(out / "std.png", std)
        if batch.ground_truth is None:
            return {}
        return {key: float(value[0]) for key, value in self.score(prediction.mean, batch).items()}

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


def slice_and_std(prediction: Prediction, resolution: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The first signal's slice ``(R, R)`` and its std (or None) from a prediction at every pixel."""
    image = rearrange(prediction.mean, "1 (h w) 1 -> h w", h=resolution)
    std = prediction.signal_std
    return image, None if std is None else rearrange(std, "1 (h w) 1 -> h w", h=resolution)


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


#: Beyond this, line integrals of an attenuation image in [0, 1] over a domain of side 2 (at most 2)
#: look like pixel sums: a hint about ``sinogram_units=skimage``.
PLAUSIBLE_LINE_INTEGRAL = 4.0
SKIMAGE_HINT = " (a skimage.transform.radon sinogram is (detectors, angles): give sinogram_units=skimage)"


def read_sinogram(path: Path, given: str, options: Mapping[str, Any]) -> torch.Tensor:
    """A sinogram ``(A, D)`` in domain units from a ``.npy`` or an image file, converted from
    ``sinogram_units`` and scaled by ``sinogram_scale``; values beyond float32's comfort are refused."""
    from genfield.forward.ct import from_skimage

    if given == "sinogram" and path.suffix.lower() == ".npy":
        try:
            array = np.asarray(np.load(path), dtype=np.float64)
        except (OSError, ValueError, TypeError) as error:
            raise InputError(f"cannot read sinogram {path}: {str(error).splitlines()[0]}") from None
    else:
        array = read_image_file(path, grey=True)[..., 0].astype(np.float64)
    if array.ndim != 2 or not np.isfinite(array).all():
        raise InputError(f"sinogram {path} must be a finite 2-D array (angles, detectors), got {array.shape}")
    sinogram = torch.as_tensor(array)
    if options.get("sinogram_units", "domain") == "skimage":
        sinogram = from_skimage(sinogram)
    sinogram = sinogram * float(options.get("sinogram_scale", 1.0))
    top = float(sinogram.abs().max())
    if not top < 1e6:  # float32 field outputs and FBP overflow long before this: refuse, write nothing
        raise InputError(
            f"sinogram {path} holds values up to {top:.3g}; line integrals in domain units are expected "
            "(an image in [0, 1] gives at most 2): rescale it with sinogram_scale="
        )
    return sinogram.float()


def warn_if_pixel_sums(sinogram: torch.Tensor, path: Path, options: Mapping[str, Any]) -> None:
    """A hint on stderr when a sinogram in domain units looks like pixel sums (skimage's units)."""
    top = float(sinogram.abs().max())
    if top > PLAUSIBLE_LINE_INTEGRAL and options.get("sinogram_units", "domain") == "domain":
        print(
            f"genfield: warning: sinogram {path} holds values up to {top:.3g}, more than line integrals "
            "of an image in [0, 1] (at most 2); for a skimage.transform.radon sinogram give "
            "sinogram_units=skimage",
            file=sys.stderr,
        )
