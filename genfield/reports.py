"""Files a person can open, from an evaluation of any method on any data kind.

:func:`write_figures` turns the predictions of one or more methods on one evaluation batch into the
figure of its kind: an image grid (ground truth | context | reconstruction | error | std), a CT panel
(context sinogram | FBP | reconstruction | error | std), a marching-cubes mesh (.ply) with a shaded
preview, or a grid of rendered target views. It only takes tensors and
:class:`~genfield.interface.Prediction` objects, never a model class.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from einops import rearrange

from genfield.datasets.batch import SignalBatch
from genfield.interface import Prediction


def context_mask(batch: SignalBatch) -> torch.Tensor | None:
    """``(S, H, W)`` true at the observed pixels of an image batch (``None`` for other kinds)."""
    index = batch.extras.get("context_index")
    if batch.kind != "image" or index is None:
        return None
    height, width = batch.ground_truth.shape[1:3]
    mask = torch.zeros(batch.num_signals, height * width, dtype=torch.bool, device=index.device)
    mask.scatter_(1, index, True)
    return mask.reshape(-1, height, width)


def fbp_baseline(batch: SignalBatch) -> torch.Tensor:
    """Filtered back-projection ``(S, H, W)`` of each signal's context projections."""
    from genfield.forward.ct import as_sinogram, fbp

    sinogram = as_sinogram(batch.context.values, batch.extras["n_detectors"])[:, 0]
    return fbp(sinogram, batch.extras["context_angles"], output_size=batch.ground_truth.shape[1])


def write_figures(
    out_dir: str | Path,
    batch: SignalBatch,
    predictions: Mapping[str, Prediction],
    max_signals: int = 4,
    mesh_resolution: int = 64,
    shape_fields: Mapping[str, object] | None = None,
) -> list[Path]:
    """Write the figures of ``batch`` for every method in ``predictions``; return the paths.

    ``predictions`` hold each method's prediction at the batch's dense evaluation queries
    (:func:`genfield.evaluation.dense_queries`). ``shape_fields`` optionally maps a method to a
    ``field_fn`` over 3-D points for marching cubes (shapes only).
    """
    from genfield.viz.figures import ct_figure, image_grid

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    truth = batch.ground_truth
    if batch.kind == "image":
        images = {k: _as_images(p, truth) for k, p in predictions.items()}
        stds = {k: _as_images(p, truth, std=True) for k, p in predictions.items()}
        written.append(
            image_grid(out / "reconstructions.png", truth, context_mask(batch), images, stds, max_signals)
        )
    elif batch.kind == "ct":
        fbp = fbp_baseline(batch)
        from genfield.forward.ct import as_sinogram

        sinograms = as_sinogram(batch.context.values, batch.extras["n_detectors"])[:, 0]
        for name, prediction in predictions.items():
            mean, std = _as_images(prediction, truth), _as_images(prediction, truth, std=True)
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
    elif batch.kind == "views":
        height, width = batch.extras["image_size"]
        truth_views = rearrange(batch.target.values, "s (v h w) c -> (s v) h w c", h=height, w=width)
        images = {
            k: rearrange(p.mean, "s (v h w) c -> (s v) h w c", h=height, w=width).clamp(0, 1)
            for k, p in predictions.items()
        }
        written.append(image_grid(out / "novel_views.png", truth_views, None, images, None, max_signals))
    elif batch.kind == "shape" and shape_fields:
        from genfield.viz.meshes import extract_mesh, render_mesh_preview, save_mesh

        level_kind = batch.extras.get("target", "occupancy")
        for name, field_fn in shape_fields.items():
            try:
                level = 0.0 if level_kind == "sdf" else 0.5  # occupancy: probability 0.5
                # one chunk: a field_fn built on `reconstruct` adapts to the context on every call
                mesh = extract_mesh(
                    field_fn, resolution=mesh_resolution, level=level, kind=level_kind,
                    chunk=mesh_resolution**3,
                )
            except ValueError as error:  # the level set was not crossed: say so, keep going
                (out / f"mesh_{name}.txt").write_text(str(error))
                continue
            written.append(save_mesh(mesh, out / f"mesh_{name}.ply"))
            written.append(render_mesh_preview(mesh, out / f"mesh_{name}.png"))
    return written


def _as_images(prediction: Prediction, like: torch.Tensor, std: bool = False) -> torch.Tensor | None:
    values = prediction.signal_std if std else prediction.mean
    if values is None:
        return None
    values = values.detach().cpu()
    images = rearrange(values, "s (h w) c -> s h w c", h=like.shape[1], w=like.shape[2])
    return images if std else images.clamp(0, 1)
