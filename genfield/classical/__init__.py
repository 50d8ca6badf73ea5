"""Classical baselines of every data kind, behind one small protocol (:class:`Baseline`).

Each reconstructs a batch's signals from their context, at the batch's dense evaluation queries, so
a classical row is scored exactly like a learned one. :func:`build_baseline` makes one by name (an
unknown name lists the valid ones); :data:`BASELINES_BY_KIND` names those that run on each kind,
strongest reference first.

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

#: The baselines that run on each data kind.
BASELINES_BY_KIND: dict[str, tuple[str, ...]] = {
    "image": ("biharmonic", "gaussian-prior", "mean"),
    "ct": ("gaussian-prior", "sart", "fbp", "mean"),
    "shape": ("rbf", "nearest", "mean-shape"),
    "views": ("nearest-view",),
}


def build_baseline(name: str, **options: Any) -> Baseline:
    """The baseline registered as ``name``, built with ``options`` (e.g. ``iterations=10`` for SART)."""
    if name not in BASELINES:
        raise unknown_name("baseline", name, list(BASELINES))
    try:
        return BASELINES[name](**options)
    except TypeError as exc:  # an unknown option: one line naming it
        raise InputError(f"baseline {name!r}: {exc}") from exc


def baselines_for(kind: str) -> tuple[str, ...]:
    """The names of the baselines that run on data ``kind``."""
    if kind not in BASELINES_BY_KIND:
        raise unknown_name("data kind", kind, list(BASELINES_BY_KIND))
    return BASELINES_BY_KIND[kind]


__all__ = [
    "BASELINES",
    "BASELINES_BY_KIND",
    "FBP",
    "RBF",
    "SART",
    "Baseline",
    "Biharmonic",
    "GaussianPrior",
    "MeanShape",
    "MeanSignal",
    "Nearest",
    "NearestView",
    "baselines_for",
    "build_baseline",
    "fbp_images",
]
