"""Reconstruction metrics, one value per signal.

* :func:`psnr`: peak signal-to-noise ratio, ``10 log10(R^2 / MSE)``.
* :func:`ssim`: structural similarity (Wang et al. 2004) with an 11-tap Gaussian window,
  ``sigma = 1.5``, ``K1 = 0.01``, ``K2 = 0.03``; equal to ``skimage.metrics.structural_similarity``
  with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False``.
* :func:`iou`: intersection over union of occupancy grids (NaN, with a warning, where both are empty).
* :func:`chamfer_distance` (trimesh meshes) and :func:`chamfer_points` (point sets in torch): the
  symmetric Chamfer distance with *unsquared* Euclidean distances ("Chamfer-L1" of Occupancy
  Networks), ``CD(A, B) = 1/2 (mean_a min_b |a - b| + mean_b min_a |a - b|)``.
* :func:`interval_coverage`: the fraction of true values inside a predictive distribution's central
  Gaussian interval ``mean +- z std`` at a level (0.9: ``z = 1.645``); a calibrated 90 % interval
  covers 0.9 of held-out values.

Batched metrics take tensors with a leading signal dimension ``S`` and return ``(S,)`` tensors
without host synchronisation (``iou`` checks once, after the counts, for undefined values).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from scipy.spatial import cKDTree

from genfield.errors import InputError


class UndefinedMetric(RuntimeWarning):
    """A metric is undefined for some signal (e.g. the IoU of two empty occupancies) and is NaN."""


def _check_same_shape(pred: torch.Tensor, target: torch.Tensor, what: str) -> None:
    if pred.shape != target.shape:
        raise InputError(
            f"{what}: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ"
        )


def mse(
    pred: torch.Tensor, target: torch.Tensor, dims: Sequence[int] | None = None
) -> torch.Tensor:
    """Mean squared error per signal: the mean over ``dims`` (default: all but the first)."""
    _check_same_shape(pred, target, "mse")
    dims = tuple(range(1, pred.ndim)) if dims is None else tuple(dims)
    return (pred - target).square().mean(dim=dims)


def psnr(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    dims: Sequence[int] | None = None,
) -> torch.Tensor:
    """Peak signal-to-noise ratio per signal, ``10 log10(data_range^2 / MSE)`` in dB.

    ``dims`` are the dimensions averaged into one MSE (default: all but the first, so ``(S, ...)``
    gives ``(S,)``). An exact reconstruction gives ``inf``.
    """
    return 10 * torch.log10(data_range**2 / mse(pred, target, dims))


def gaussian_window(size: int = 11, sigma: float = 1.5, dtype=None, device=None) -> torch.Tensor:
    """The normalised 1-D Gaussian ``exp(-x^2 / (2 sigma^2))`` on ``size`` taps centred at 0."""
    x = torch.arange(size, dtype=dtype or torch.get_default_dtype(), device=device) - (size - 1) / 2
    w = torch.exp(-(x**2) / (2 * sigma**2))
    return w / w.sum()


def _blur(x: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
    """Separable 'valid' Gaussian filtering of ``(B, 1, H, W)``: the output loses ``size - 1``
    rows and columns, exactly the border that skimage crops before averaging the SSIM map."""
    x = F.conv2d(x, rearrange(window, "k -> 1 1 k 1"))
    return F.conv2d(x, rearrange(window, "k -> 1 1 1 k"))


def ssim(
    pred: torch.Tensor,
    target: torch.Tensor,
    data_range: float = 1.0,
    window_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity per signal of images ``(S, H, W, C)`` (or grey ``(S, H, W)``).

    With Gaussian-weighted local means ``mu``, variances ``s^2`` and covariance ``s_xy``:
    ``SSIM = (2 mu_x mu_y + C1)(2 s_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(s_x^2 + s_y^2 + C2))``,
    ``C1 = (k1 R)^2``, ``C2 = (k2 R)^2`` (Wang et al. 2004, eq. 13), averaged over the pixels whose
    window lies inside the image, then over channels.
    """
    _check_same_shape(pred, target, "ssim")
    if pred.ndim == 3:
        pred, target = pred[..., None], target[..., None]
    if pred.ndim != 4:
        raise InputError(f"ssim expects (S, H, W, C) or (S, H, W) images, got {tuple(pred.shape)}")
    if min(pred.shape[1:3]) < window_size:
        raise InputError(
            f"ssim needs images of at least {window_size} x {window_size} pixels, "
            f"got {tuple(pred.shape[1:3])}"
        )
    s, c = pred.shape[0], pred.shape[-1]
    dtype = torch.promote_types(pred.dtype, torch.float32)
    x = rearrange(pred.to(dtype), "s h w c -> (s c) 1 h w")
    y = rearrange(target.to(dtype), "s h w c -> (s c) 1 h w")
    window = gaussian_window(window_size, sigma, dtype=dtype, device=pred.device)
    stats = _blur(torch.cat([x, y, x * x, y * y, x * y]), window)
    mu_x, mu_y, xx, yy, xy = stats.chunk(5)
    var_x, var_y, cov = xx - mu_x**2, yy - mu_y**2, xy - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    per_channel = (num / den).mean(dim=(1, 2, 3))
    return rearrange(per_channel, "(s c) -> s c", s=s, c=c).mean(dim=-1)


def interval_coverage(
    mean: torch.Tensor,
    std: torch.Tensor,
    truth: torch.Tensor,
    level: float = 0.9,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per signal ``(S,)``: the fraction of ``truth`` inside the central ``level`` Gaussian interval.

    ``mean``, ``std`` and ``truth`` are ``(S, ...)``; the interval is ``mean +- z std`` with
    ``z = Phi^{-1}((1 + level) / 2) = sqrt(2) erfinv(level)``. ``mask`` (broadcastable to ``truth``,
    true where a value counts: e.g. the unobserved pixels) restricts the fraction (NaN where none counts).
    """
    if not 0.0 < level < 1.0:
        raise InputError(f"interval_coverage: level must be in (0, 1), got {level}")
    _check_same_shape(mean, truth, "interval_coverage")
    _check_same_shape(std, truth, "interval_coverage")
    z = math.sqrt(2.0) * torch.special.erfinv(torch.tensor(level, dtype=torch.float64)).item()
    inside = ((truth - mean).abs() <= z * std).float()
    weight = torch.ones_like(inside) if mask is None else mask.expand_as(inside).float()
    return (inside * weight).flatten(1).sum(1) / weight.flatten(1).sum(1)  # NaN where nothing counts


def iou(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Intersection over union of boolean occupancies ``(S, ...)`` per signal.

    Two empty occupancies have no union: their IoU is undefined (``0 / 0``), so it is NaN with an
    :class:`UndefinedMetric` warning, not a perfect score (an empty ground truth is a degenerate
    shape, and a method that predicts nothing would otherwise score 1 on it).
    """
    _check_same_shape(pred, target, "iou")
    pred, target = pred.bool().flatten(1), target.bool().flatten(1)
    inter = (pred & target).sum(dim=1)
    union = (pred | target).sum(dim=1)
    ratio = inter.float() / union.clamp_min(1).float()
    empty = union == 0
    if bool(empty.any()):  # one host sync per metric call, outside any inner loop
        warnings.warn(
            f"iou: {int(empty.sum())} of {len(union)} signal(s) have empty predicted and target "
            "occupancy; their IoU is undefined (NaN)",
            UndefinedMetric,
            stacklevel=2,
        )
    return torch.where(empty, torch.full_like(ratio, float("nan")), ratio)


def chamfer_points(a: torch.Tensor, b: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """Symmetric Chamfer distance of point sets ``a (..., N, d)``, ``b (..., M, d)`` -> ``(...)``.

    ``1/2 (mean_i min_j |a_i - b_j| + mean_j min_i |a_i - b_j|)``, with squared distances when
    ``squared``. Builds the full ``N x M`` distance matrix: meant for small sets (a few thousand).
    """
    if a.shape[-1] != b.shape[-1] or a.shape[-2] == 0 or b.shape[-2] == 0:
        raise InputError(
            f"chamfer_points needs non-empty sets, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    d = torch.cdist(a, b)
    if squared:
        d = d.square()
    return 0.5 * (d.min(dim=-1).values.mean(dim=-1) + d.min(dim=-2).values.mean(dim=-1))


def _surface_points(mesh, n_points: int, seed: int, which: str) -> np.ndarray:
    import trimesh

    if len(getattr(mesh, "faces", ())) == 0 or mesh.area <= 0:
        raise InputError(f"chamfer_distance: mesh {which} has no surface to sample")
    points, _ = trimesh.sample.sample_surface(mesh, n_points, seed=seed)
    return np.asarray(points, dtype=np.float64)


def chamfer_distance(mesh_a, mesh_b, n_points: int = 30_000, seed: int = 0) -> float:
    """Symmetric Chamfer distance of two trimesh meshes from ``n_points`` surface samples each.

    ``1/2 (mean_a min_b |a - b| + mean_b min_a |a - b|)`` with *unsquared* Euclidean distances
    (Chamfer-L1 as in Occupancy Networks), nearest neighbours from a ``scipy.spatial.cKDTree``. The
    samples are area-uniform and deterministic from ``seed``.
    """
    if n_points < 1:
        raise InputError(f"chamfer_distance needs n_points >= 1, got {n_points}")
    pa = _surface_points(mesh_a, n_points, seed, "a")
    pb = _surface_points(mesh_b, n_points, seed + 1, "b")
    a_to_b, _ = cKDTree(pb).query(pa)
    b_to_a, _ = cKDTree(pa).query(pb)
    return float(0.5 * (a_to_b.mean() + b_to_a.mean()))
