"""Interval coverage on held-out signals, and the post-hoc recalibration of a predictive std.

A method's central ``level`` interval ``mean +- z std`` (``z = Phi^{-1}((1 + level) / 2)``) is
calibrated when it holds the truth for a fraction ``level`` of held-out values. Where a model's std
is learned in another domain than the one it is scored in (PONP on CT: the likelihood is fitted to
projections, the intervals are read on the slice's pixels), nothing in training calibrates it. The
standard repair is recalibration on validation signals (Kuleshov, Fenner & Ermon 2018; for one
scalar, the temperature scaling of Guo et al. 2017): the std is multiplied by

    s = quantile_level(|truth - mean| / std) / z,

the smallest factor under which a fraction ``level`` of the validation values falls inside, so the
validation coverage becomes ``level`` and held-out test signals are scored with the same ``s``.
Values counted: every dense query of the kind (image and CT pixels, shape or view targets), and on
images only the pixels that are not in the context (there the interval says nothing new).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
from einops import rearrange

from genfield.datasets.batch import SignalBatch
from genfield.errors import InputError
from genfield.interface import Prediction
from genfield.metrics import interval_coverage

#: The buffer name of the std factor a method holds (:func:`hold_std_scale`).
STD_SCALE = "std_scale"


def truth_and_mask(batch: SignalBatch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The true values ``(S, N, c)`` at the kind's dense queries and the mask of values that count
    (``None``: all): image and CT pixels from the ground truth, else the batch's targets; on images
    the unobserved pixels (every pixel where the context holds them all)."""
    from genfield.kinds import get_kind

    if batch.kind in ("image", "ct"):
        truth = rearrange(batch.ground_truth, "s h w c -> s (h w) c")
    else:
        truth = batch.target.values
    mask = get_kind(batch.kind).context_mask(batch)
    if mask is not None:
        mask = ~rearrange(mask.bool(), "s ... -> s (...)")[..., None].to(truth.device)
        if not bool(mask.any()):
            mask = None
    return truth, mask


def z_value(level: float) -> float:
    """``Phi^{-1}((1 + level) / 2)``: the half-width in stds of the central ``level`` interval."""
    if not 0.0 < level < 1.0:
        raise InputError(f"interval level must be in (0, 1), got {level}")
    return math.sqrt(2.0) * torch.special.erfinv(torch.tensor(level, dtype=torch.float64)).item()


def coverage(prediction: Prediction, batch: SignalBatch, level: float = 0.9) -> torch.Tensor | None:
    """Per signal ``(S,)``: the central ``level`` interval's coverage of the counted values, or
    ``None`` for a prediction without a variance."""
    if prediction.variance is None:
        return None
    truth, mask = truth_and_mask(batch)
    truth = truth.to(prediction.mean)
    return interval_coverage(prediction.mean.detach(), prediction.std.detach(), truth, level, mask)


def std_scale(prediction: Prediction, batch: SignalBatch, level: float = 0.9) -> float:
    """The factor ``s`` of the module docstring from a prediction of ``batch`` (validation signals)."""
    if prediction.variance is None:
        raise InputError("std calibration needs a prediction with a variance")
    truth, mask = truth_and_mask(batch)
    mean, std = prediction.mean.detach(), prediction.std.detach()
    ratio = (truth.to(mean) - mean).abs() / std.clamp_min(torch.finfo(std.dtype).tiny)
    counted = ratio[mask.expand_as(ratio)] if mask is not None else ratio.flatten()
    counted = counted[torch.isfinite(counted)]
    if counted.numel() == 0:
        raise InputError("std calibration: the validation batch has no value to calibrate on")
    return float(torch.quantile(counted.double(), level)) / z_value(level)


def scaled(prediction: Prediction, scale: float | torch.Tensor) -> Prediction:
    """``prediction`` with its std multiplied by ``scale`` (variance and noise variance by its square)."""
    if prediction.variance is None:
        return prediction
    square = torch.as_tensor(scale, dtype=prediction.variance.dtype, device=prediction.variance.device) ** 2
    noise = None if prediction.noise_variance is None else prediction.noise_variance * square
    return replace(prediction, variance=prediction.variance * square, noise_variance=noise)


def hold_std_scale(module: torch.nn.Module) -> None:
    """Give ``module`` the buffer ``std_scale`` (1: the std as predicted) that :func:`calibrate` sets
    and :func:`scaled` applies; a checkpoint written before the buffer existed loads with 1."""
    module.register_buffer(STD_SCALE, torch.ones(()))

    def default(state_dict, prefix, *args) -> None:
        state_dict.setdefault(prefix + STD_SCALE, torch.ones(()))

    module._register_load_state_dict_pre_hook(default)


def calibrate(method: Any, batch: SignalBatch, level: float = 0.9, steps: int | None = None) -> float | None:
    """Set ``method.std_scale`` (a method that holds one, :func:`hold_std_scale`: the neural
    processes, ``prior_residual`` and iBaML) from its prediction of validation ``batch`` after
    ``steps`` adaptation / test-time steps (``None``: its default); return the factor, or ``None``
    if the method has none or reports no variance. The factor is stored in the method's weights, so
    a checkpoint keeps it (the one of the steps last calibrated at)."""
    from genfield.evaluation import evaluate

    holder = getattr(method, STD_SCALE, None)
    if not isinstance(holder, torch.Tensor):
        return None
    holder.fill_(1.0)
    prediction = evaluate(method, batch, steps=steps).prediction
    if prediction.variance is None:
        return None
    factor = std_scale(prediction, batch, level)
    holder.fill_(factor)
    return factor
