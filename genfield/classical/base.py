"""The protocol every classical baseline satisfies, and the helpers they share.

A baseline learns from a training collection (or nothing), then reconstructs every signal of a
:class:`~genfield.datasets.batch.SignalBatch` from its context alone, returning a
:class:`~genfield.interface.Prediction` at the batch's dense evaluation queries
(:func:`genfield.evaluation.dense_queries`): every pixel of the ground-truth grid in row-major order
for images and CT, the batch's target queries for shapes and views. ``evaluate``'s scoring then
applies unchanged, so a classical row and a learned row are computed the same way.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol, runtime_checkable

import torch
from einops import rearrange

from genfield.datasets.batch import SignalBatch
from genfield.errors import InputError
from genfield.interface import Prediction


@runtime_checkable
class Baseline(Protocol):
    """A classical method: ``fit`` on a training collection, ``reconstruct`` a batch."""

    name: str  # row label, e.g. "sart-5", "biharmonic", "gaussian-prior"
    # (each shipped baseline also says whether ``fit`` needs a training collection:
    # ``learns_from_collection``; ``genfield reconstruct`` builds one only for those that do)

    def fit(self, train: Any) -> Baseline: ...  # learn from the training collection (or no-op)

    def reconstruct(self, batch: SignalBatch) -> Prediction: ...


def require_kind(name: str, batch: SignalBatch, kinds: Iterable[str]) -> None:
    """Raise :class:`InputError` when baseline ``name`` cannot run on ``batch.kind``."""
    kinds = tuple(kinds)
    if batch.kind not in kinds:
        raise InputError(f"baseline {name!r} runs on data kind(s) {', '.join(kinds)}, not {batch.kind!r}")


def image_shape(batch: SignalBatch) -> tuple[int, int, int]:
    """``(H, W, C)`` of the images a pixel-grid batch reconstructs: its ground truth's, or for a batch
    without one (a measured CT sinogram) the square slice of ``extras["resolution"]`` pixels."""
    if batch.ground_truth is not None:
        return tuple(batch.ground_truth.shape[1:])
    resolution = batch.extras.get("resolution")
    if resolution is None:
        raise InputError("the batch has no ground truth nor extras['resolution']: the image size is unknown")
    return int(resolution), int(resolution), 1


def training_images(train: Any, name: str) -> torch.Tensor:
    """The images ``(n, H, W, C)`` of an image or CT training collection (items with ``.image``)."""
    images = []
    for index in range(len(train)):
        item = train[index]
        image = getattr(item, "image", None)
        if image is None:
            raise InputError(
                f"baseline {name!r} needs a training collection of images or CT slices; item "
                f"{index} is a {type(item).__name__}"
            )
        images.append(torch.as_tensor(image, dtype=torch.float32))
    if not images:
        raise InputError(f"baseline {name!r} needs at least one training signal")
    shapes = {tuple(i.shape) for i in images}
    if len(shapes) != 1:
        raise InputError(f"baseline {name!r}: training images have mixed shapes {sorted(shapes)}")
    return torch.stack(images)


def pixel_prediction(
    images: torch.Tensor,
    like: torch.Tensor,
    variance: torch.Tensor | None = None,
    noise_variance: torch.Tensor | None = None,
) -> Prediction:
    """Images ``(S, H, W, C)`` as a :class:`Prediction` at every pixel, row-major, on ``like``'s device."""

    def flat(x: torch.Tensor | None) -> torch.Tensor | None:
        if x is None:
            return None
        return rearrange(x, "s h w c -> s (h w) c").to(device=like.device, dtype=like.dtype)

    return Prediction(mean=flat(images), variance=flat(variance), noise_variance=flat(noise_variance))
