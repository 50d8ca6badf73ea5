"""Classical baselines of every data kind, behind one small protocol (:class:`Baseline`).

Each reconstructs a batch's signals from their context, at the batch's dense evaluation queries, so
a classical row is scored exactly like a learned one. :func:`build_baseline` makes one by name (an
unknown name lists the valid ones); each kind's spec (:mod:`genfield.kinds`) lists those that run on
it, strongest reference first.

========================  ======  ====================================================================
name                      kinds   what
========================  ======  ====================================================================
``biharmonic``            image   ``skimage.restoration.inpaint_biharmonic`` of the context pixels
``mean``                  image,  the mean training image or slice
                          ct
``gaussian-prior``        image,  Gaussian with the training mean and shrunk covariance, conditioned
                          ct      on the context through the batch's linear forward map
``fbp``                   ct      filtered back-projection of the context projections
``sart``                  ct      ``skimage.transform.iradon_sart``, 5 iterations, clipped at 0
``rbf``                   shape   thin-plate ``scipy.interpolate.RBFInterpolator`` of the context
``nearest``               shape   the value of the nearest context point
``mean-shape``            shape   the mean training occupancy or SDF at the queries
``nearest-view``          views   the nearest context view copied to the target camera
========================  ======  ====================================================================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from genfield.classical.base import Baseline
from genfield.classical.ct import FBP, SART, fbp_images
from genfield.classical.gaussian import GaussianPrior
from genfield.classical.images import Biharmonic, MeanSignal
from genfield.classical.shapes import RBF, MeanShape, Nearest
from genfield.classical.views import NearestView
from genfield.errors import InputError, unknown_name

#: Registry: name -> constructor (keyword options as in the class).
BASELINES: dict[str, Callable[..., Baseline]] = {
    "biharmonic": Biharmonic,
    "mean": MeanSignal,
    "gaussian-prior": GaussianPrior,
    "fbp": FBP,
    "sart": SART,
    "rbf": RBF,
    "nearest": Nearest,
    "mean-shape": MeanShape,
    "nearest-view": NearestView,
}

#: The learned linear references: fitted to the training collection like the neural routes, so a
#: comparison's verdict states them apart from the classical baseline (:func:`genfield.comparison.verdict`).
LINEAR_PRIORS = frozenset({"gaussian-prior"})


def build_baseline(name: str, **options: Any) -> Baseline:
    """The baseline registered as ``name``, built with ``options`` (e.g. ``iterations=10`` for SART)."""
    if name not in BASELINES:
        raise unknown_name("baseline", name, list(BASELINES))
    try:
        return BASELINES[name](**options)
    except TypeError as exc:  # an unknown option: one line naming it
        raise InputError(f"baseline {name!r}: {exc}") from exc


__all__ = [
    "BASELINES",
    "FBP",
    "RBF",
    "SART",
    "Baseline",
    "Biharmonic",
    "GaussianPrior",
    "LINEAR_PRIORS",
    "MeanShape",
    "MeanSignal",
    "Nearest",
    "NearestView",
    "build_baseline",
    "fbp_images",
]
