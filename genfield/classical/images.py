"""Image baselines: biharmonic inpainting of the context pixels, and the mean training image.

Biharmonic inpainting (``skimage.restoration.inpaint_biharmonic``, Damelin & Hoang 2018) fills the
unobserved pixels with the solution of ``Delta^2 u = 0`` that takes the observed values: the smoothest
interpolant of the context, which learns nothing from the collection. The mean training image is the
cheapest learned reference: a prior's mean with no conditioning at all.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from skimage.restoration import inpaint_biharmonic

from genfield.classical.base import image_shape, pixel_prediction, require_kind, training_images
from genfield.datasets.batch import SignalBatch
from genfield.datasets.images import context_mask
from genfield.errors import InputError
from genfield.interface import Prediction


class Biharmonic:
    """``inpaint_biharmonic`` of each image from its context pixels (``channel_axis`` for RGB)."""

    name = "biharmonic"
    learns_from_collection = False

    def fit(self, train: Any) -> Biharmonic:
        return self

    def reconstruct(self, batch: SignalBatch) -> Prediction:
        require_kind(self.name, batch, ("image",))
        truth = batch.ground_truth
        n_signals, height, width, channels = truth.shape
        mask = context_mask(batch)
        if mask is None:
            raise InputError("image batch has no extras['context_index']: the context pixels are unknown")
        observed = mask.cpu().numpy()
        if not observed.any(axis=(1, 2)).all():
            raise InputError("biharmonic inpainting needs at least one context pixel per image")
        known = np.zeros((n_signals, height * width, channels), dtype=np.float64)
        index = batch.extras["context_index"].cpu()
        values = batch.context.values.detach().cpu().double().numpy()
        np.put_along_axis(known, index.numpy()[..., None], values, axis=1)
        known = known.reshape(n_signals, height, width, channels)
        axis = -1 if channels > 1 else None
        filled = [
            inpaint_biharmonic(
                known[s] if axis is not None else known[s, ..., 0], ~observed[s], channel_axis=axis
            )
            for s in range(n_signals)
        ]
        images = torch.as_tensor(np.stack(filled)).reshape(n_signals, height, width, channels)
        return pixel_prediction(images, batch.context.values)


class MeanSignal:
    """The mean of the training images (or CT slices), the same for every signal."""

    name = "mean"
    learns_from_collection = True

    def __init__(self) -> None:
        self.mean: torch.Tensor | None = None

    def fit(self, train: Any) -> MeanSignal:
        self.mean = training_images(train, self.name).mean(0)
        return self

    def reconstruct(self, batch: SignalBatch) -> Prediction:
        require_kind(self.name, batch, ("image", "ct"))
        if self.mean is None:
            raise InputError("baseline 'mean' must be fitted on a training collection first")
        if tuple(self.mean.shape) != image_shape(batch):
            raise InputError(
                f"baseline 'mean' was fitted on images {tuple(self.mean.shape)}, the batch has "
                f"{image_shape(batch)}"
            )
        images = self.mean.expand(batch.num_signals, *self.mean.shape)
        return pixel_prediction(images, batch.context.values)
