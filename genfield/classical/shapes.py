"""Shape baselines: interpolants of the context points' values, and the mean training shape.

The context of a shape batch is labelled points ``(S, Nc, 3)`` with the value the batch's target
is in (``extras["target"]``: occupancy in {0, 1} or a signed distance); both interpolants predict
that value at the target queries, so ``evaluate`` thresholds them like a learned field (occupancy
at 0.5, SDF at 0).

* ``rbf``: ``scipy.interpolate.RBFInterpolator`` with the thin-plate spline kernel
  ``r^2 log r`` (Duchon 1977), the smoothest interpolant of scattered 3-D values;
* ``nearest``: ``scipy.interpolate.NearestNDInterpolator``, the value of the closest context point;
* ``mean-shape``: the mean, over the training shapes, of each shape's value at the queries (the
  value of its nearest labelled sample, from its dense uniform and near-surface samples): a mean
  occupancy in [0, 1] or a mean signed distance. It learns the collection and ignores the context.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from scipy.interpolate import NearestNDInterpolator, RBFInterpolator
from scipy.spatial import cKDTree

from genfield.classical.base import require_kind
from genfield.datasets.batch import Observations, SignalBatch
from genfield.errors import InputError
from genfield.interface import Adapted, Prediction


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().double().numpy()


def _prediction(values: list[np.ndarray], like: torch.Tensor) -> Prediction:
    mean = torch.as_tensor(np.stack(values)).reshape(like.shape[0], -1, 1)
    return Prediction(mean=mean.to(device=like.device, dtype=like.dtype))


class RBF:
    """Thin-plate radial basis function interpolation of each shape's context values."""

    name = "rbf"
    learns_from_collection = False

    def __init__(self, smoothing: float = 0.0) -> None:
        if smoothing < 0:
            raise InputError(f"rbf smoothing must be >= 0, got {smoothing}")
        self.smoothing = smoothing

    def fit(self, train: Any) -> RBF:
        return self

    def reconstruct(self, batch: SignalBatch) -> Prediction:
        require_kind(self.name, batch, ("shape",))
        if batch.context.num_observations < 4:  # the spline's affine part needs 4 points in 3-D
            raise InputError(
                f"rbf needs at least 4 context points (n_context), got {batch.context.num_observations}"
            )
        points, values, queries = (
            _numpy(x) for x in (batch.context.queries, batch.context.values, batch.target.queries)
        )
        out = [
            RBFInterpolator(points[s], values[s], kernel="thin_plate_spline", smoothing=self.smoothing)(
                queries[s]
            )
            for s in range(batch.num_signals)
        ]
        return _prediction(out, batch.target.values)


class Nearest:
    """The value of the nearest context point."""

    name = "nearest"
    learns_from_collection = False

    def fit(self, train: Any) -> Nearest:
        return self

    def reconstruct(self, batch: SignalBatch) -> Prediction:
        require_kind(self.name, batch, ("shape",))
        points, values, queries = (
            _numpy(x) for x in (batch.context.queries, batch.context.values, batch.target.queries)
        )
        out = [NearestNDInterpolator(points[s], values[s])(queries[s]) for s in range(batch.num_signals)]
        return _prediction(out, batch.target.values)


class MeanShape:
    """The mean occupancy or signed distance of the training shapes at the queries.

    Args:
        max_shapes: use at most this many training shapes (the first ones), to bound the cost.
    """

    name = "mean-shape"
    learns_from_collection = True

    def __init__(self, max_shapes: int | None = None) -> None:
        if max_shapes is not None and max_shapes < 1:
            raise InputError(f"mean-shape max_shapes must be positive or null, got {max_shapes}")
        self.max_shapes = max_shapes
        self.shapes: list[tuple[cKDTree, np.ndarray, np.ndarray]] = []

    def fit(self, train: Any) -> MeanShape:
        count = len(train) if self.max_shapes is None else min(len(train), self.max_shapes)
        self.shapes = []
        for index in range(count):
            item = train[index]
            if not hasattr(item, "sdf") or not hasattr(item, "points"):
                raise InputError(
                    f"mean-shape needs a training collection of shapes; item {index} is a "
                    f"{type(item).__name__}"
                )
            occupancy = item.occupancy.detach().cpu().numpy().astype(np.float64)
            self.shapes.append((cKDTree(_numpy(item.points)), _numpy(item.sdf), occupancy))
        if not self.shapes:
            raise InputError("mean-shape needs at least one training shape")
        return self

    def reconstruct(self, batch: SignalBatch) -> Prediction:
        require_kind(self.name, batch, ("shape",))
        if not self.shapes:
            raise InputError("baseline 'mean-shape' must be fitted on a training collection first")
        which = 1 if batch.extras.get("target", "occupancy") == "sdf" else 2
        queries = _numpy(batch.target.queries).reshape(-1, 3)
        total = np.zeros(len(queries))
        for shape in self.shapes:
            _, nearest = shape[0].query(queries)
            total += shape[which][nearest, 0]
        return _prediction([total / len(self.shapes)], batch.target.values)


class BaselineField(Adapted):
    """A fitted shape baseline conditioned on ``batch``'s first signal, as a field over any points.

    Each :meth:`predict` reconstructs that context at the given queries (the batch's targets
    replaced by them), so a mesh of a classical interpolant is extracted by the same marching cubes
    as a learned field's (:func:`genfield.kinds.shape.mesh_of_mean`).
    """

    def __init__(self, baseline: Any, batch: SignalBatch) -> None:
        self.baseline, self.batch = baseline, batch.select(slice(0, 1))

    def predict(self, queries: torch.Tensor, query_map: Any, *, variance: bool = True) -> Prediction:
        points = queries.detach().cpu()
        target = Observations(points, torch.zeros(*points.shape[:-1], 1, dtype=points.dtype))
        mean = self.baseline.reconstruct(replace(self.batch, target=target)).mean
        return Prediction(mean=mean.to(queries.device))
