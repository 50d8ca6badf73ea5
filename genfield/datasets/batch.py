"""The one batch structure that every route consumes.

A :class:`SignalBatch` holds a meta-batch of ``S`` signals of one kind. Each signal has *context*
observations (what a method may look at) and *target* observations (what it is scored on), and the
batch names the forward map that turns field outputs into observations. Loaders build it; the
meta-learners, the neural processes, the metrics and the figures consume it unchanged.

Shapes: ``queries`` is ``(S, N, q)`` and ``values`` is ``(S, N, c)``. What a query is depends on the
forward map: a point of the field domain for :class:`~genfield.forward.point.PointMap`, an
``(angle, detector offset)`` pair for CT projections, a ray ``(origin, direction, near, far)`` for
volume rendering. Within one batch every signal has the same ``N`` (samplers draw fixed counts), so
no padding is needed.

Layout: observations that come in whole units carry a typed :data:`Layout` saying so, which the
tokenizers and local features read (:mod:`genfield.processes.tokenizers`): a
:class:`ProjectionLayout` (CT: ``n_angles`` whole projections of ``n_detectors`` bins, angle-major)
or a :class:`ViewLayout` (volume rendering: ``n_views`` whole ``height x width`` views, view-major
and row-major). The splits and the ``reconstruct`` readers set it; observations without whole units
(random pixels, random rays, surface points) have none. A layout that disagrees with its queries is
refused at construction. Observations built by hand without a layout stay valid: the tokenizers then
infer the units from the query values, which fails on contexts such as two equal leading angles.

Shard: under ``torch.distributed`` each rank holds a contiguous part of the global meta-batch, and
:attr:`SignalBatch.shard` ``= (offset, total)`` says where (set by :func:`genfield.training.shard`).
Methods that draw per-signal Monte-Carlo noise pass it to
:func:`~genfield.distributed.randn_for_shard`, so each signal gets the draw it would get in one process.
"""

from __future__ import annotations

import warnings
from dataclasses import InitVar, dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange

from genfield.errors import InputError

if TYPE_CHECKING:
    from genfield.forward.base import ForwardMap


@dataclass(frozen=True)
class ProjectionLayout:
    """CT observations as whole projections, angle-major (the order of
    :func:`~genfield.forward.ct.ct_queries`): ``n_angles`` projections of ``n_detectors`` bins, the
    bins of one projection contiguous, so ``values`` reshape to the sinogram ``(S, A, D, c)``."""

    n_angles: int
    n_detectors: int

    @property
    def num_units(self) -> int:
        """Units of observation: projections."""
        return self.n_angles

    @property
    def unit_size(self) -> int:
        """Observations per unit: the detector bins of one projection."""
        return self.n_detectors

    def with_units(self, n: int) -> ProjectionLayout:
        """The layout of ``n`` of these projections (a subset keeps whole projections)."""
        return ProjectionLayout(n, self.n_detectors)

    def mismatch(self, units: torch.Tensor) -> str | None:
        """Why queries ``(S, A, D, 2)`` are not these projections (``None`` if they are): the bins of
        a projection share its angle, and every projection has the same detector bins."""
        angle, offset = units[..., 0], units[..., 1]
        same_angle = close(angle, angle[..., :1])
        if bool(same_angle & close(offset, offset[:, :1])):
            return None
        if not bool(same_angle):
            return "the bins of one projection do not share its angle"
        return "the projections do not share their detector bins"


@dataclass(frozen=True)
class ViewLayout:
    """Ray observations as whole views, view-major and row-major: ``n_views`` images of
    ``height x width`` rays, the rays of one view contiguous
    (:class:`~genfield.datasets.view_split.ViewSplit`)."""

    n_views: int
    height: int
    width: int

    @property
    def image_size(self) -> tuple[int, int]:
        """``(height, width)`` of each view."""
        return self.height, self.width

    @property
    def num_units(self) -> int:
        """Units of observation: views."""
        return self.n_views

    @property
    def unit_size(self) -> int:
        """Observations per unit: the ``height * width`` rays of one view."""
        return self.height * self.width

    def with_units(self, n: int) -> ViewLayout:
        """The layout of ``n`` of these views (a subset keeps whole views)."""
        return ViewLayout(n, self.height, self.width)

    def mismatch(self, units: torch.Tensor) -> str | None:
        """Why ray queries ``(S, V, H * W, 8)`` are not these views (``None`` if they are): the rays of
        a view share its camera's origin (pinhole cameras)."""
        origin = units[..., :3]
        if bool(close(origin, origin[..., :1, :])):
            return None
        return "the rays of one view do not share its origin"


#: The layouts of observations that come in whole units.
Layout = ProjectionLayout | ViewLayout


def close(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Whether ``a`` and ``b`` agree everywhere to 1e-6 (a 0-d bool tensor)."""
    return ((a - b).abs() <= 1e-6).all()


def check_layout(layout: Layout, queries: torch.Tensor) -> None:
    """Raise :class:`InputError` unless ``queries`` ``(S, N, q)`` are ``layout``'s whole units.

    Counts must be positive integers, ``N`` must be ``num_units * unit_size``, and the units must
    look like the layout's (its ``mismatch``: one angle per projection and the same bins in each;
    one camera origin per view). One host sync, where observations are built.
    """
    counts = {name: getattr(layout, name) for name in layout.__dataclass_fields__}
    bad = {k: v for k, v in counts.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1}
    if bad:
        raise InputError(f"{layout} must have positive integer counts, got {bad}")
    n = queries.shape[1]
    if n != layout.num_units * layout.unit_size:
        raise InputError(
            f"{layout} describes {layout.num_units * layout.unit_size} observations per signal, "
            f"the queries hold {n}"
        )
    if queries.numel():
        units = rearrange(queries, "s (u n) q -> s u n q", u=layout.num_units)
        reason = layout.mismatch(units)
        if reason is not None:
            raise InputError(f"{layout} disagrees with the queries: {reason}")


@dataclass
class Observations:
    """Observations of ``S`` signals: ``values[s, n]`` is what the forward map gives at ``queries[s, n]``.

    ``layout`` (optional) says that the observations are whole units (projections, views); it is
    checked against the queries here (:func:`check_layout`), except by :meth:`to` and :meth:`select`,
    which keep a checked layout valid (``check=False``: no second pass, no host sync on a device).
    Observations rebuilt from a subset of the rows lose the layout unless the new one is given (a
    process's context subsampling keeps whole units and gives it: ``layout.with_units(n)``).
    """

    queries: torch.Tensor
    values: torch.Tensor
    layout: Layout | None = None
    check: InitVar[bool] = True

    def __post_init__(self, check: bool) -> None:
        if self.queries.shape[:2] != self.values.shape[:2]:
            raise ValueError(
                f"queries {tuple(self.queries.shape)} and values {tuple(self.values.shape)} "
                "must share their (signal, observation) dimensions"
            )
        if self.layout is not None and check:
            check_layout(self.layout, self.queries)

    @property
    def num_signals(self) -> int:
        return self.queries.shape[0]

    @property
    def num_observations(self) -> int:
        return self.queries.shape[1]

    def to(self, device: torch.device | str) -> Observations:
        return Observations(self.queries.to(device), self.values.to(device), self.layout, check=False)

    def select(self, index: torch.Tensor | slice) -> Observations:
        """The observations of a subset of signals (an index or slice over ``S``): same layout."""
        return Observations(self.queries[index], self.values[index], self.layout, check=False)


@dataclass
class SignalBatch:
    """A meta-batch of signals of one kind.

    Attributes:
        kind: ``"image"``, ``"ct"``, ``"shape"`` or ``"views"``.
        forward_map: the map from a field to observations (both context and target).
        context: observations a method may condition on or adapt to.
        target: observations the method is scored on (typically a superset of the context).
        metadata: one dict per signal (name, original size, normalisation, ...).
        ground_truth: optional dense ground truth for metrics and figures, e.g. the images
            ``(S, H, W, C)`` or CT slices ``(S, H, W, 1)``.
        extras: kind-specific data for metrics, figures and classical baselines (e.g. CT angles,
            context pixel indices); the observations' layout is in ``context.layout`` and
            ``target.layout``.
        shard: ``(offset, total)``: these signals are ``[offset, offset + S)`` of a global meta-batch
            of ``total`` (a rank's part under ``torch.distributed``); ``None``: the whole batch.
            ``extras["shard"]``, the former place, is still read for one release (with a warning).
    """

    kind: str
    forward_map: ForwardMap
    context: Observations
    target: Observations
    metadata: list[dict[str, Any]] = field(default_factory=list)
    ground_truth: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    shard: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if "shard" in self.extras:  # the former, untyped place: moved here
            warnings.warn(
                "SignalBatch.extras['shard'] is deprecated; pass SignalBatch(shard=(offset, total))",
                DeprecationWarning,
                stacklevel=3,
            )
            extras = dict(self.extras)
            moved = extras.pop("shard")
            self.extras, self.shard = extras, self.shard if self.shard is not None else moved
        if self.shard is not None:
            self.shard = check_shard(self.shard, self.num_signals)

    @property
    def num_signals(self) -> int:
        return self.context.num_signals

    def to(self, device: torch.device | str) -> SignalBatch:
        gt = None if self.ground_truth is None else self.ground_truth.to(device)
        extras = {k: v.to(device) if torch.is_tensor(v) else v for k, v in self.extras.items()}
        return replace(
            self,
            context=self.context.to(device),
            target=self.target.to(device),
            ground_truth=gt,
            extras=extras,
        )

    def select(self, index: torch.Tensor | slice) -> SignalBatch:
        """The batch restricted to a subset of its signals (used to shard a meta-batch over ranks).

        A contiguous slice of a shard is a shard of the same global batch (its offset moves); any
        other subset of a shard has no place in the global order and gets ``shard=None``.
        """
        positions = range(self.num_signals)[index] if isinstance(index, slice) else index.tolist()
        gt = None if self.ground_truth is None else self.ground_truth[index]
        meta = [self.metadata[i] for i in positions] if self.metadata else []
        extras = {  # per-signal tensors (leading dimension S) follow the selection
            k: v[index] if torch.is_tensor(v) and v.dim() > 0 and v.shape[0] == self.num_signals else v
            for k, v in self.extras.items()
        }
        return replace(
            self,
            context=self.context.select(index),
            target=self.target.select(index),
            metadata=meta,
            ground_truth=gt,
            extras=extras,
            shard=self._sub_shard(positions),
        )

    def _sub_shard(self, positions: range | list[int]) -> tuple[int, int] | None:
        if self.shard is None or not len(positions):
            return None
        start = positions[0]
        if list(positions) != list(range(start, start + len(positions))):
            return None
        return self.shard[0] + start, self.shard[1]


def check_shard(shard: Any, num_signals: int) -> tuple[int, int]:
    """``shard`` as ``(offset, total)`` ints; :class:`InputError` unless ``0 <= offset`` and
    ``offset + num_signals <= total``."""
    try:
        offset, total = (int(v) for v in shard)
    except (TypeError, ValueError):
        raise InputError(f"SignalBatch shard must be (offset, total), got {shard!r}") from None
    if offset < 0 or offset + num_signals > total:
        raise InputError(
            f"SignalBatch shard {(offset, total)} does not hold its {num_signals} signals: "
            f"need 0 <= offset and offset + {num_signals} <= total"
        )
    return offset, total
