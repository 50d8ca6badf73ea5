"""Curves with matplotlib, written headless to files: losses, PSNR against steps, cost against steps.

:func:`plot_curves` draws any ``label -> (x, y)`` mapping; a third entry ``(x, y, spread)`` adds a
shaded band ``y +- spread`` (e.g. the standard deviation over test signals), and ``references``
draw horizontal dashed lines ``(name, value)`` for methods with no steps (the classical baselines).
The wrappers name the axes of the curves the experiments produce. Like :mod:`genfield.viz.figures`,
they draw on a bare :class:`~matplotlib.figure.Figure` (the Agg canvas; no pyplot state, no display)
and the file's suffix picks the format.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from genfield.errors import InputError
from genfield.viz.figures import save_figure, to_numpy

Curve = Sequence[Any]  # (x, y) or (x, y, spread)
References = Mapping[str, float] | Sequence[tuple[str, float]]


def _draw_references(ax, references: References | None) -> int:
    """Horizontal dashed lines at each reference value, labelled; returns how many were drawn."""
    items = list(references.items() if isinstance(references, Mapping) else references or ())
    for index, (name, value) in enumerate(items):
        value = float(value)
        if not np.isfinite(value):
            raise InputError(f"reference line {name!r}: value must be finite, got {value}")
        ax.axhline(value, linestyle="--", linewidth=1.2, color=f"C{(index + 5) % 10}", label=str(name))
    return len(items)


def _draw_curves(ax, curves: Mapping[str, Curve], logy: bool, marker: str | None) -> None:
    for label, curve in curves.items():
        if len(curve) not in (2, 3):
            raise InputError(f"curve {label!r}: expected (x, y) or (x, y, spread), got {len(curve)}")
        x, y = to_numpy(curve[0]).ravel(), to_numpy(curve[1]).ravel()
        if x.shape != y.shape:
            raise InputError(f"curve {label!r}: x has {x.size} values but y has {y.size}")
        (line,) = ax.plot(x, y, label=label, marker=marker, markersize=4)
        if len(curve) == 3:
            spread = to_numpy(curve[2]).ravel()
            ax.fill_between(x, y - spread, y + spread, color=line.get_color(), alpha=0.2, lw=0)
    if logy:
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)


def curves_figure(
    curves: Mapping[str, Curve],
    xlabel: str,
    ylabel: str,
    title: str = "",
    logy: bool = False,
    marker: str | None = None,
    size: tuple[float, float] = (5.0, 3.5),
    references: References | None = None,
) -> Figure:
    """The figure :func:`plot_curves` writes (arguments as there), for callers that add to it."""
    if not curves and not references:
        raise InputError("plot_curves: no curves to draw")
    figure = Figure(figsize=size, layout="constrained")
    ax = figure.add_subplot()
    _draw_curves(ax, curves, logy, marker)
    if len(curves) + _draw_references(ax, references) > 1:
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return figure


def plot_curves(
    path: str | os.PathLike,
    curves: Mapping[str, Curve],
    xlabel: str,
    ylabel: str,
    title: str = "",
    logy: bool = False,
    marker: str | None = None,
    size: tuple[float, float] = (5.0, 3.5),
    references: References | None = None,
) -> Path:
    """Draw ``label -> (x, y)`` (or ``(x, y, spread)``) curves on one axes and write the file.

    Args:
        path: the file to write (PNG, PDF, SVG by suffix); parent folders are created.
        curves: the curves; x and y are sequences, arrays or tensors of equal length.
        xlabel, ylabel, title: the axes' labels and title.
        logy: a logarithmic y axis (losses).
        marker: a matplotlib marker for each point (e.g. ``"o"`` for few, discrete x values).
        size: the figure's size in inches (at 100 dpi).
        references: ``name -> value`` (or ``(name, value)`` pairs) drawn as labelled horizontal
            dashed lines, e.g. the metric of each classical baseline beside the learned curves.
    """
    if not curves and not references:
        raise InputError(f"plot_curves {path}: no curves to draw")
    figure = curves_figure(curves, xlabel, ylabel, title, logy, marker, size, references)
    return save_figure(figure, path)


def smooth(values: Any, weight: float) -> np.ndarray:
    """Exponential moving average ``s_t = w s_{t-1} + (1 - w) v_t`` (TensorBoard's smoothing),
    debiased so the start is not pulled toward 0."""
    values = to_numpy(values).ravel()
    out, average = np.empty_like(values), 0.0
    for t, value in enumerate(values):
        average = weight * average + (1 - weight) * value
        out[t] = average / (1 - weight ** (t + 1)) if weight > 0 else value
    return out


def plot_training_losses(
    path: str | os.PathLike,
    losses: Mapping[str, Any],
    smoothing: float = 0.0,
    logy: bool = True,
    xlabel: str = "training step",
) -> Path:
    """Training losses: ``label -> y`` (steps 0, 1, ...) or ``label -> (steps, y)``.

    ``smoothing`` in [0, 1) applies :func:`smooth` (0: raw values).
    """
    curves = {}
    for label, value in losses.items():
        x, y = value if isinstance(value, tuple) else (np.arange(len(to_numpy(value))), value)
        curves[label] = (x, smooth(y, smoothing))
    return plot_curves(path, curves, xlabel, "loss", "training loss", logy=logy)


def plot_psnr_vs_steps(
    path: str | os.PathLike,
    psnr: Mapping[str, Curve],
    title: str = "PSNR against adaptation steps",
    references: References | None = None,
) -> Path:
    """Test PSNR against adaptation (or test-time optimisation) steps, one curve per method.

    ``psnr``: method -> ``(steps, psnr)`` or ``(steps, mean psnr, std over signals)``;
    ``references``: classical baselines as horizontal lines (see :func:`plot_curves`).
    """
    return plot_curves(path, psnr, "adaptation steps", "PSNR (dB)", title, marker="o", references=references)


def plot_cost_vs_steps(
    path: str | os.PathLike,
    memory: Mapping[str, Curve],
    time: Mapping[str, Curve],
    title: str = "meta-gradient cost against inner steps",
) -> Path:
    """Two panels: peak memory (MiB) and time per meta-step (s) against inner steps, per method.

    ``memory`` and ``time``: method -> ``(inner steps, value)`` (or with a spread).
    """
    figure = Figure(figsize=(9.0, 3.5), layout="constrained")
    axes = figure.subplots(1, 2)
    for ax, curves, ylabel in ((axes[0], memory, "peak memory (MiB)"), (axes[1], time, "time (s)")):
        _draw_curves(ax, curves, logy=False, marker="o")
        if len(curves) > 1:
            ax.legend(fontsize=8)
        ax.set_xlabel("inner steps")
        ax.set_ylabel(ylabel)
    figure.suptitle(title)
    return save_figure(figure, path)
