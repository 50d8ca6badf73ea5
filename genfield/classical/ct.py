"""CT baselines: filtered back-projection and SART, on the context projections of a batch.

Both read the context sinogram the learned methods see (``batch.context``, angle-major, at
``extras["context_angles"]``, in the projections of ``batch.context.layout``, a
:class:`~genfield.datasets.batch.ProjectionLayout`). FBP is genfield's own
:func:`~genfield.forward.ct.fbp` (which matches ``skimage.transform.iradon`` inside the disc). SART
(Andersen & Kak 1984) is ``skimage.transform.iradon_sart``: ``iterations`` calls, each seeded with
the previous image, with the non-negativity clip ``clip=(0, inf)`` (attenuation is non-negative;
skimage turns ``clip=(0, None)`` into NaN).

Units and layout (the geometry docstring of :mod:`genfield.forward.ct`): for an ``N x N`` slice and
``D = N`` bins, genfield's line integrals are skimage's pixel sums times ``2 / N``, and skimage's
sinogram is ``(D, A)`` with angles in degrees, so the context becomes
``skimage = rearrange(ours, "a d -> d a") * N / 2`` at ``degrees(theta)``; the reconstruction is in
pixel values in both. For odd ``N`` the two geometries agree bin for bin. For even ``N`` skimage
rotates about pixel ``N // 2``, half a pixel off genfield's centre, so its bin ``k`` sits at
genfield offset ``t_k - (1 - cos theta + sin theta) / N``; :func:`sart` passes the matching
``projection_shifts = (1 - cos theta + sin theta) / 2`` pixels to ``iradon_sart`` so that it
back-projects every bin along the ray genfield measured it on (without the shift, SART-5 from 8
views of 32-pixel phantoms loses about 5 dB).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from skimage.transform import iradon_sart

from genfield.classical.base import image_shape, pixel_prediction, require_kind
from genfield.datasets.batch import ProjectionLayout, SignalBatch
from genfield.errors import InputError
from genfield.forward.ct import as_sinogram, fbp, to_skimage
from genfield.interface import Prediction


def context_sinograms(batch: SignalBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """The context sinograms ``(S, A, D)`` (genfield units) and their angles ``(S, A)`` in radians.

    The detector count is the context's :class:`ProjectionLayout`'s; :class:`InputError` where the
    context has none, or where the layout, the values and ``extras["context_angles"]`` disagree.
    """
    layout, values = batch.context.layout, batch.context.values
    if not isinstance(layout, ProjectionLayout):
        raise InputError(
            f"CT batch context has layout {layout}, not a ProjectionLayout: the detector count is unknown"
        )
    if "context_angles" not in batch.extras:
        raise InputError("CT batch has no extras['context_angles']: the context geometry is unknown")
    angles = batch.extras["context_angles"]
    if values.shape[1] != layout.n_angles * layout.n_detectors or angles.shape[-1] != layout.n_angles:
        raise InputError(
            f"CT batch context {layout} disagrees with its {values.shape[1]} values and "
            f"{angles.shape[-1]} context_angles"
        )
    return as_sinogram(values.detach(), layout.n_detectors)[:, 0], angles


def fbp_images(batch: SignalBatch, filter_name: str | None = "ramp") -> torch.Tensor:
    """Filtered back-projection ``(S, H, W)`` of each signal's context projections."""
    sinogram, angles = context_sinograms(batch)
    return fbp(sinogram, angles, output_size=image_shape(batch)[0], filter_name=filter_name)


def sart(sinogram: torch.Tensor, angles: torch.Tensor, resolution: int, iterations: int = 5) -> torch.Tensor:
    """SART ``(N, N)`` of one genfield sinogram ``(A, D = N)`` at ``angles`` (radians), clipped at 0."""
    if iterations < 1:
        raise InputError(f"SART iterations must be >= 1, got {iterations}")
    if sinogram.shape[-1] != resolution:
        raise InputError(
            f"SART needs n_detectors equal to the slice resolution (skimage's geometry): "
            f"n_detectors={sinogram.shape[-1]}, resolution={resolution}"
        )
    projections = to_skimage(sinogram, resolution)
    theta = np.degrees(angles.detach().cpu().double().numpy())
    radians = np.radians(theta)
    shifts = (1 - np.cos(radians) + np.sin(radians)) / 2 if resolution % 2 == 0 else None
    image = None
    for _ in range(iterations):
        image = iradon_sart(projections, theta=theta, image=image, clip=(0, np.inf), projection_shifts=shifts)
    return torch.as_tensor(image)


class FBP:
    """Filtered back-projection of the context projections (``filter_name`` as in ``iradon``)."""

    learns_from_collection = False

    def __init__(self, filter_name: str | None = "ramp") -> None:
        self.filter_name = filter_name
        self.name = "fbp" if filter_name == "ramp" else f"fbp-{filter_name}"

    def fit(self, train: Any) -> FBP:
        return self

    def reconstruct(self, batch: SignalBatch) -> Prediction:
        require_kind(self.name, batch, ("ct",))
        images = fbp_images(batch, self.filter_name)
        return pixel_prediction(images[..., None], batch.context.values)


class SART:
    """``iterations`` of ``skimage.transform.iradon_sart`` with ``clip=(0, inf)`` per signal."""

    learns_from_collection = False

    def __init__(self, iterations: int = 5) -> None:
        if not isinstance(iterations, int) or iterations < 1:
            raise InputError(f"SART iterations must be a positive integer, got {iterations!r}")
        self.iterations = iterations
        self.name = f"sart-{iterations}"

    def fit(self, train: Any) -> SART:
        return self

    def reconstruct(self, batch: SignalBatch) -> Prediction:
        require_kind(self.name, batch, ("ct",))
        sinogram, angles = context_sinograms(batch)
        if sinogram.shape[1] < 2:
            raise InputError(
                f"SART needs at least 2 context angles (n_context_angles), got {sinogram.shape[1]}"
            )
        support = getattr(batch.forward_map, "support", "disc")
        if support != "disc":
            raise InputError(
                f"SART follows skimage's circle geometry: CT support must be 'disc', not {support!r}"
            )
        resolution = image_shape(batch)[0]
        images = torch.stack(
            [sart(sinogram[s], angles[s], resolution, self.iterations) for s in range(batch.num_signals)]
        )
        return pixel_prediction(images[..., None], batch.context.values)


__all__ = ["FBP", "SART", "context_sinograms", "fbp_images", "sart", "to_skimage"]
