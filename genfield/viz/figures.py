"""Figures of reconstructions, written headless to files: image grids, CT panels, single images.

Every function takes tensors (or the :class:`~genfield.interface.Prediction` that a reconstructor
returns), never a model, and writes a file whose format follows the path's suffix (PNG by default;
matplotlib also writes PDF and SVG). Figures are drawn on a bare :class:`matplotlib.figure.Figure`
with the Agg canvas, so nothing here touches pyplot's global state or needs a display.

Conventions: images are ``(H, W, C)`` with ``C`` 1 (grey) or 3 (RGB) and values in [0, 1]; a
batch of images is ``(S, H, W, C)``. Row 0 is the top of the picture (coordinate 0 of the field
domain). PSNR is ``10 log10(range^2 / MSE)`` with the data range 1 for images and the ground
truth's range for CT.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from genfield.datasets.images import as_images
from genfield.errors import InputError
from genfield.interface import Prediction

#: Inches per panel of a grid figure.
PANEL = 1.7
ERROR_CMAP = "inferno"
STD_CMAP = "viridis"
#: What an unobserved pixel of the context panel shows (black).
UNOBSERVED = 0.0


# -- conversions -----------------------------------------------------------------------------------
def to_numpy(x: Any) -> np.ndarray:
    """A float32 numpy copy of a tensor or array (detached, on the host)."""
    if torch.is_tensor(x):
        x = x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def to_uint8(image: Any) -> np.ndarray:
    """Values in [0, 1] to ``uint8`` (clipped, rounded to the nearest level)."""
    array = to_numpy(image)
    if not np.isfinite(array).all():
        raise ValueError("image has NaN or infinite values; cannot convert it to 8 bits")
    return np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)


def psnr(prediction: Any, target: Any, data_range: float = 1.0) -> float:
    """PSNR in dB of one image, for titles: :func:`genfield.metrics.psnr` on a batch of one."""
    from genfield.metrics import psnr as batched_psnr

    pred = torch.as_tensor(to_numpy(prediction), dtype=torch.float64)[None]
    truth = torch.as_tensor(to_numpy(target), dtype=torch.float64)[None]
    return float(batched_psnr(pred, truth, data_range)[0])


def _prepare_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


# -- single images ---------------------------------------------------------------------------------
def save_image(path: str | os.PathLike, image: Any) -> Path:
    """Write an image ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)`` in [0, 1] as 8 bits.

    Grey images are written as one-channel files. The format follows the suffix (PNG, JPEG, ...,
    through imageio). This is the one place genfield writes a picture of a tensor.
    """
    array = to_numpy(image)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise InputError(f"save_image {path}: expected (H, W[, 1|3|4]), got {array.shape}")
    path = _prepare_path(path)
    iio.imwrite(path, to_uint8(array))
    return path


def figure_to_array(figure: Figure) -> np.ndarray:
    """Rasterise a figure to ``(H, W, 3)`` float in [0, 1] (the Agg canvas, no display)."""
    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].astype(np.float32) / 255.0


def save_figure(figure: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Save a figure drawn on the Agg canvas; the format follows the suffix."""
    path = _prepare_path(path)
    FigureCanvasAgg(figure)
    figure.savefig(path, dpi=dpi)
    return path


# -- image grids -----------------------------------------------------------------------------------
def _as_images(values: Any, shape: tuple[int, ...], what: str) -> np.ndarray:
    """``(S, H, W, C)`` or ``(S, H * W, C)`` values as images of ``shape`` = ``(S, H, W, C)``."""
    return as_images(torch.as_tensor(to_numpy(values)), shape, what).numpy()


def _show_image(ax, image: np.ndarray) -> None:
    """Show an ``(H, W, C)`` image in [0, 1] (grey colour map for one channel)."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(np.clip(image, 0.0, 1.0), interpolation="nearest")


def _hide_axes(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def image_grid(
    path: str | os.PathLike,
    ground_truth: Any,
    context_mask: Any | None,
    predictions: Mapping[str, Prediction | torch.Tensor | np.ndarray],
    std: Mapping[str, Any | None] | None = None,
    max_signals: int = 4,
) -> Path:
    """A grid of reconstructions: one row per signal, methods side by side.

    Columns: ground truth | context | for each method: reconstruction (titled with its PSNR) |
    absolute error | predictive standard deviation (when the method has one). The context panel
    shows the observed pixels and leaves the others black; ``context_mask=None`` drops the column
    (novel views, where the context is other images). Errors and standard deviations are averaged
    over channels. Errors share one colour scale across methods, so they compare directly; each
    method's standard deviation has its own scale and colour bar (methods' stds differ by orders of
    magnitude: on a shared scale the smaller one, e.g. iBaML's, looks flat).

    Args:
        path: the file to write (PNG, PDF, SVG by suffix); parent folders are created.
        ground_truth: ``(S, H, W, C)`` in [0, 1].
        context_mask: ``(S, H, W)`` boolean, true where a pixel was observed; or ``None``.
        predictions: method name -> a :class:`Prediction` (``mean`` ``(S, H * W, C)`` or
            ``(S, H, W, C)``) or the mean itself.
        std: method name -> ``(S, H, W, C)`` standard deviation, or ``None``; by default a
            :class:`Prediction`'s own ``std``.
        max_signals: show at most this many signals (rows).

    Returns:
        The path written.
    """
    return save_figure(grid_figure(ground_truth, context_mask, predictions, std, max_signals), path)


def grid_figure(
    ground_truth: Any,
    context_mask: Any | None,
    predictions: Mapping[str, Prediction | torch.Tensor | np.ndarray],
    std: Mapping[str, Any | None] | None = None,
    max_signals: int = 4,
) -> Figure:
    """The figure :func:`image_grid` writes (same arguments, without the path)."""
    truth = to_numpy(ground_truth)
    if truth.ndim != 4:
        raise InputError(f"image_grid: ground_truth must be (S, H, W, C), got {truth.shape}")
    if not predictions:
        raise InputError("image_grid: no predictions to show")
    rows = min(truth.shape[0], max_signals)
    truth = truth[:rows]
    std = dict(std or {})
    means, stds = {}, {}
    for method, prediction in predictions.items():
        mean = prediction.mean if isinstance(prediction, Prediction) else prediction
        means[method] = _as_images(to_numpy(mean)[:rows], truth.shape, f"prediction {method!r}")
        deviation = std.get(method)
        if deviation is None and isinstance(prediction, Prediction):
            deviation = prediction.signal_std
        if deviation is not None:
            stds[method] = _as_images(to_numpy(deviation)[:rows], truth.shape, f"std {method!r}")
    errors = {m: np.abs(means[m] - truth).mean(axis=-1) for m in means}
    stds = {m: s.mean(axis=-1) for m, s in stds.items()}
    error_max = max(float(e.max()) for e in errors.values()) or 1.0
    std_max = {m: float(s.max()) or 1.0 for m, s in stds.items()}  # one scale per method

    columns = ["ground truth"] + (["context"] if context_mask is not None else [])
    for method in means:
        columns += [method, "|error|"] + (["std"] if method in stds else [])
    figure = Figure(figsize=(PANEL * len(columns) + 1.0, PANEL * rows + 0.4), layout="constrained")
    axes = np.asarray(figure.subplots(rows, len(columns), squeeze=False))
    if context_mask is not None:
        mask = to_numpy(context_mask)[:rows].reshape(truth.shape[:3]) > 0.5
    error_image = None
    std_images: dict[str, Any] = {}
    std_axes: dict[str, list] = {m: [] for m in stds}
    for r in range(rows):
        row = iter(axes[r])
        ax = next(row)
        _show_image(ax, truth[r])
        ax.set_title("ground truth" if r == 0 else "", fontsize=8)
        if context_mask is not None:
            ax = next(row)
            _show_image(ax, np.where(mask[r][..., None], truth[r], UNOBSERVED))
            ax.set_title(f"context {100 * mask[r].mean():.0f}%", fontsize=8)
        for method in means:
            ax = next(row)
            _show_image(ax, means[method][r])
            ax.set_title(f"{method}\n{psnr(means[method][r], truth[r]):.2f} dB", fontsize=8)
            ax = next(row)
            error_image = ax.imshow(errors[method][r], cmap=ERROR_CMAP, vmin=0, vmax=error_max)
            ax.set_title("|error|" if r == 0 else "", fontsize=8)
            if method in stds:
                ax = next(row)
                std_images[method] = ax.imshow(stds[method][r], cmap=STD_CMAP, vmin=0, vmax=std_max[method])
                std_axes[method].append(ax)
                ax.set_title(f"{method} std" if r == 0 else "", fontsize=8)
    for ax in axes.ravel():
        _hide_axes(ax)
    figure.colorbar(error_image, ax=axes.ravel().tolist(), shrink=0.6, label="absolute error")
    for method, image in std_images.items():
        bar = figure.colorbar(image, ax=std_axes[method], shrink=0.8, location="bottom", aspect=12)
        bar.ax.tick_params(labelsize=6)
    return figure


# -- CT --------------------------------------------------------------------------------------------
def _slice(x: Any, what: str) -> np.ndarray:
    """A CT slice ``(H, W)`` (a trailing channel of 1 is dropped)."""
    array = to_numpy(x)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 2:
        raise InputError(f"ct_figure: {what} must be (H, W) or (H, W, 1), got {array.shape}")
    return array


def ct_figure(
    path: str | os.PathLike,
    sinogram: Any,
    fbp: Any,
    reconstruction: Any,
    ground_truth: Any | None,
    std: Any | None = None,
    angles: Any | None = None,
    data_range: float | None = None,
) -> Path:
    """One CT slice: context sinogram | FBP | reconstruction | ground truth | error (| std).

    Args:
        path: the file to write (PNG, PDF, SVG by suffix).
        sinogram: ``(A, D)`` the context projections, one row per angle.
        fbp: ``(H, W)`` the filtered back-projection of the same views (the classical baseline).
        reconstruction: ``(H, W)`` the method's reconstruction (predictive mean).
        ground_truth: ``(H, W)`` the slice, or ``None`` where it is unknown (a measured sinogram):
            then the panels are sinogram | FBP | reconstruction (| std), each on its own range.
        std: ``(H, W)`` the predictive standard deviation, if the method has one.
        angles: ``(A,)`` projection angles in radians, to label the sinogram's rows.
        data_range: the PSNR's peak value; default: the ground truth's range (max - min).

    Both FBP and the reconstruction are titled with their PSNR against the ground truth, and shown
    on the ground truth's grey range. The error panel is ``|reconstruction - ground truth|``.
    """
    sino = to_numpy(sinogram)
    if sino.ndim != 2:
        raise InputError(f"ct_figure: sinogram must be (angles, detectors), got {sino.shape}")
    images = {"FBP": _slice(fbp, "fbp"), "reconstruction": _slice(reconstruction, "reconstruction")}
    truth = None if ground_truth is None else _slice(ground_truth, "ground_truth")
    for name, image in images.items():
        if truth is not None and image.shape != truth.shape:
            raise InputError(f"ct_figure: {name} {image.shape} != ground truth {truth.shape}")
    panels = 3 + 2 * (truth is not None) + (std is not None)
    figure = Figure(figsize=(PANEL * 1.3 * panels, PANEL * 1.5), layout="constrained")
    axes = list(figure.subplots(1, panels))

    extent = None
    if angles is not None:
        degrees = np.degrees(to_numpy(angles))
        extent = (-1.0, 1.0, float(degrees.max()), float(degrees.min()))
        axes[0].set_ylabel("angle (degrees)", fontsize=8)
    axes[0].imshow(sino, cmap="gray", aspect="auto", extent=extent, interpolation="nearest")
    axes[0].set_title(f"sinogram ({sino.shape[0]} views)", fontsize=9)
    axes[0].set_xlabel("detector", fontsize=8)
    axes[0].tick_params(labelsize=7)
    if truth is None:
        for ax, (name, image) in zip(axes[1:3], images.items(), strict=True):
            figure.colorbar(ax.imshow(image, cmap="gray", interpolation="nearest"), ax=ax, shrink=0.8)
            ax.set_title(name, fontsize=9)
    else:
        low, high = float(truth.min()), float(truth.max())
        peak = data_range or (high - low) or 1.0
        for ax, (name, image) in zip(axes[1:3], images.items(), strict=True):
            ax.imshow(image, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            ax.set_title(f"{name}\n{psnr(image, truth, peak):.2f} dB", fontsize=9)
        axes[3].imshow(truth, cmap="gray", vmin=low, vmax=high, interpolation="nearest")
        axes[3].set_title("ground truth", fontsize=9)
        error = np.abs(images["reconstruction"] - truth)
        shown = axes[4].imshow(error, cmap=ERROR_CMAP, vmin=0, interpolation="nearest")
        axes[4].set_title("|error|", fontsize=9)
        figure.colorbar(shown, ax=axes[4], shrink=0.8)
    if std is not None:
        shown = axes[-1].imshow(_slice(std, "std"), cmap=STD_CMAP, vmin=0, interpolation="nearest")
        axes[-1].set_title("predictive std", fontsize=9)
        figure.colorbar(shown, ax=axes[-1], shrink=0.8)
    for ax in axes[1:]:
        _hide_axes(ax)
    return save_figure(figure, path)
