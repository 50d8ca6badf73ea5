"""Files a person can open, from an evaluation of any method on any data kind.

:func:`write_figures` turns the predictions of one or more methods on one evaluation batch into the
figures of its kind (the kind's spec draws them, :mod:`genfield.kinds`): an image grid (ground truth
| context | reconstruction | error | std), a CT panel (context sinogram | FBP | reconstruction |
error | std), a marching-cubes mesh (.ply) with a shaded preview, or a grid of rendered target views.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from genfield.classical.ct import fbp_images as fbp_baseline
from genfield.datasets.batch import SignalBatch
from genfield.interface import Prediction
from genfield.kinds import get_kind

__all__ = ["context_mask", "fbp_baseline", "write_figures"]


def context_mask(batch: SignalBatch) -> torch.Tensor | None:
    """``(S, H, W)`` true at the observed pixels of an image batch (``None`` for other kinds)."""
    return get_kind(batch.kind).context_mask(batch)


def write_figures(
    out_dir: str | Path,
    batch: SignalBatch,
    predictions: Mapping[str, Prediction],
    max_signals: int = 4,
    mesh_resolution: int = 64,
    shape_fields: Mapping[str, Callable] | None = None,
    methods: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write the figures of ``batch`` for every method in ``predictions``; return the paths.

    ``predictions`` hold each method's prediction at the batch's dense evaluation queries
    (:func:`genfield.evaluation.dense_queries`). ``shape_fields`` optionally maps a method to a
    ``field_fn`` over 3-D points for marching cubes; ``methods`` (name -> Reconstructor) lets the
    kind build such fields itself (shapes: the first signal's reconstruction).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return get_kind(batch.kind).write_figures(
        out,
        batch,
        predictions,
        max_signals=max_signals,
        mesh_resolution=mesh_resolution,
        field_fns=shape_fields,
        methods=methods,
    )
