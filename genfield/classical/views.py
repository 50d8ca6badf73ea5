"""The views baseline: copy the nearest context view to the target camera.

A plainly classical reference, not a renderer: for each target view it returns the pixels of the
context view whose camera is closest, by camera position (``by="position"``, the distance between the
camera centres) or by viewing direction (``by="direction"``, the largest cosine between the optical
axes, ``-z`` of the OpenGL camera-to-world matrices). With one context view it is that view. It is
what a method that ignores the geometry between the views would score.
"""

from __future__ import annotations

from typing import Any

import torch
from einops import rearrange

from genfield.classical.base import require_kind
from genfield.datasets.batch import SignalBatch
from genfield.errors import InputError
from genfield.interface import Prediction

NEAREST_BY = ("position", "direction")


class NearestView:
    """The nearest context view (by camera position or direction) copied to each target view."""

    name = "nearest-view"
    learns_from_collection = False

    def __init__(self, by: str = "position") -> None:
        if by not in NEAREST_BY:
            raise InputError(f"nearest-view by={by!r} must be one of {', '.join(NEAREST_BY)}")
        self.by = by

    def fit(self, train: Any) -> NearestView:
        return self

    def nearest(self, context_c2w: torch.Tensor, target_c2w: torch.Tensor) -> torch.Tensor:
        """Index ``(S, Vt)`` of the nearest context camera ``(S, Vc, 4, 4)`` to each target one."""
        if self.by == "position":
            return torch.cdist(target_c2w[..., :3, 3], context_c2w[..., :3, 3]).argmin(-1)
        target, context = -target_c2w[..., :3, 2], -context_c2w[..., :3, 2]  # optical axes
        return torch.einsum("sti,sci->stc", target, context).argmax(-1)

    def reconstruct(self, batch: SignalBatch) -> Prediction:
        require_kind(self.name, batch, ("views",))
        missing = [k for k in ("context_images", "context_c2w", "target_c2w") if k not in batch.extras]
        if missing:
            raise InputError(f"views batch lacks extras {missing}: the cameras are unknown")
        images, c2w = batch.extras["context_images"], batch.extras["context_c2w"]
        nearest = self.nearest(c2w, batch.extras["target_c2w"])  # (S, Vt)
        chosen = images[torch.arange(batch.num_signals)[:, None], nearest]  # (S, Vt, H, W, 3)
        pixels = rearrange(chosen, "s v h w c -> s (v h w) c")
        index = batch.extras.get("target_index")
        if index is not None:
            pixels = pixels.gather(1, index[..., None].expand(-1, -1, pixels.shape[-1]))
        like = batch.target.values
        return Prediction(mean=pixels.to(device=like.device, dtype=like.dtype))
