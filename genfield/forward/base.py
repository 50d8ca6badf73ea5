"""The forward-map protocol: the differentiable maps from a field to what is observed of it.

A forward map is called as ``forward_map(field_fn, queries)`` where

* ``field_fn`` maps points of the field domain ``(..., M, d)`` to field values ``(..., M, c)``
  (a closure over one signal's parameters, or over a batch of them), and
* ``queries`` is ``(..., N, q)``: what each observation asks for (a point, a CT ray, a camera ray).

It returns the predicted observations ``(..., N, c_obs)``. Every map is written over arbitrary leading
dimensions, so the same code runs on a whole meta-batch at once and inside ``torch.func.vmap``.
Fitting, evaluation and figures all call these maps; there is no second implementation anywhere.

Every map in this package is a weighted sum of field values at sample points along each query,
``y_n = sum_k w_nk f(x_nk)`` (+ a constant: the volume renderer's background), with weights that are
fixed (point: one sample, weight 1; CT: the quadrature weights) or computed from the field itself
(volume: the rendering weights ``T_k alpha_k`` from the density). :class:`ForwardMap` exposes what
users need of that structure, so nobody branches on a map's name or type:

* :meth:`~ForwardMap.out_channels`, :meth:`~ForwardMap.validate_queries`,
  :meth:`~ForwardMap.deterministic` (the variant for evaluation) and
  :meth:`~ForwardMap.same_measurement` (whether noise learned on one map's observations applies to
  another's);
* :meth:`~ForwardMap.observe_carrying`: observe the field and push a second per-point quantity (a
  scale field, a variance field) through the *same* samples with weights ``w_nk^power``;
  :meth:`~ForwardMap.propagate_variance` is its ``power=2`` case;
* ``linear`` and :meth:`~ForwardMap.adjoint`: for linear maps, the transpose of the map restricted to
  fields stored on a grid (:mod:`genfield.forward.grid`).

The maps:

* :class:`~genfield.forward.point.PointMap`: the observation is the field value at a point (pixels,
  SDF and occupancy samples).
* :class:`~genfield.forward.ct.ParallelBeamProjection`: line integrals along parallel-beam rays (CT).
* :class:`~genfield.forward.volume.VolumeRenderer`: emission-absorption volume rendering along rays.

Each subclasses :class:`ForwardMap` explicitly to inherit its defaults (PEP 544); a map written
elsewhere only needs the same members.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar, Protocol, runtime_checkable

import torch

from genfield.errors import InputError

FieldFn = Callable[[torch.Tensor], torch.Tensor]
#: A field returning two per-point quantities from one evaluation: ``points -> (values, carried)``.
PairedFieldFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@runtime_checkable
class ForwardMap(Protocol):
    """What every forward map provides (the defaults below hold for the maps that inherit them)."""

    name: str
    #: ``True`` when the observations are linear in the field (then :meth:`adjoint` exists).
    linear: ClassVar[bool]
    #: What one observation is (``"field value"``, ``"line integral"``, ``"radiance"``).
    measurement: ClassVar[str]

    def __call__(self, field_fn: FieldFn, queries: torch.Tensor) -> torch.Tensor: ...

    def out_channels(self, field_channels: int) -> int:
        """Channels of an observation of a field with ``field_channels`` channels."""
        return field_channels

    def validate_queries(self, queries: torch.Tensor, role: str = "the") -> None:
        """Raise :class:`InputError` naming the map and the expected shape for bad ``queries``.

        ``role`` names the queries in the message (``"context"``, ``"target"``, ``"query"``).
        """
        ...

    def deterministic(self) -> ForwardMap:
        """The variant used for evaluation and figures: the same observations on every call."""
        return self

    def same_measurement(self, other: object) -> bool:
        """Whether ``other`` observes the same quantity, so noise learned on one applies to the other."""
        return getattr(other, "measurement", None) == self.measurement

    def observe_carrying(
        self, paired_fn: PairedFieldFn, queries: torch.Tensor, power: int = 1
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Observations of the field and of a carried per-point quantity, from one pass.

        ``paired_fn`` returns, per point, the field values and a carried quantity ``e(x)`` (any
        channels). The field is observed as by ``__call__``; the carried quantity goes through the
        same samples as ``sum_k w_nk^power e(x_nk)``, without any constant term. With ``power=1``
        and ``e`` a pointwise std this is the std of the observation when the errors of the samples
        along a query are fully correlated (an upper bound for any correlation); with ``power=2``
        and ``e`` a pointwise variance it is the variance when they are independent.

        Returns ``(observations (..., N, c_obs), carried (..., N, c_e))``.
        """
        ...

    def propagate_variance(
        self, field_fn: FieldFn, variance_fn: FieldFn, queries: torch.Tensor
    ) -> torch.Tensor:
        """Variance ``(..., N, c_obs)`` of the observations from a pointwise variance field.

        ``Var y_n = sum_k w_nk^2 v(x_nk)`` under independent errors at the sample points, with the
        weights taken at ``field_fn`` (for a nonlinear map: a linearisation in the observed channels
        only, see the map). ``variance_fn`` returns one variance per observed channel.
        """
        return self.observe_carrying(lambda p: (field_fn(p), variance_fn(p)), queries, power=2)[1]

    def adjoint(self, values: torch.Tensor, queries: torch.Tensor, grid_shape: Sequence[int]) -> torch.Tensor:
        """The adjoint of a linear map restricted to grid fields: ``(..., N, c) -> (..., *grid_shape, c)``.

        With ``A`` the matrix of ``g -> self(grid_field(g), queries)`` (:mod:`genfield.forward.grid`),
        this is ``A^T values``, so ``<A g, y> = <g, A^T y>`` exactly.
        """
        raise InputError(f"{self.name} forward map is not linear: it has no adjoint")


def check_query_width(
    forward_map: ForwardMap, queries: torch.Tensor, width: int, meaning: str, role: str
) -> None:
    """Raise :class:`InputError` unless ``queries`` is ``(..., N, width)``."""
    if queries.dim() < 2 or queries.shape[-1] != width:
        raise InputError(
            f"{forward_map.name} forward map: {role} queries must be (..., N, {width}) {meaning}; "
            f"got shape {tuple(queries.shape)}"
        )
