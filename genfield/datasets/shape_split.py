"""The shape context/target split: labelled points or a surface point cloud as the context."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from genfield.datasets.batch import Observations, SignalBatch
from genfield.errors import InputError
from genfield.forward import PointMap

if TYPE_CHECKING:  # only for annotations: this module stays free of trimesh and libigl
    from genfield.datasets.shape_samples import ShapeSignal

# --------------------------------------------------------------------------------------------------
# Context / target split
# --------------------------------------------------------------------------------------------------

TARGETS = ("occupancy", "sdf")
#: The surface of each target, the iso-level of its field: signed distance 0, occupancy probability
#: 0.5. Every route predicts occupancy as a probability (the neural processes return the Bernoulli
#: mean, the meta-learners regress the 0/1 labels), and surface context points carry this value.
SURFACE_LEVEL = {"occupancy": 0.5, "sdf": 0.0}


def inside_by_value(values: torch.Tensor, target: str) -> torch.Tensor:
    """True inside the shape, from predicted or labelled values: ``sdf <= 0``, or occupancy above 1/2."""
    level = SURFACE_LEVEL[target]
    return values <= level if target == "sdf" else values > level


CONTEXTS = ("labelled", "surface")


@dataclass
class ShapeSplit:
    """Turn a list of :class:`ShapeSignal` into a :class:`~genfield.datasets.batch.SignalBatch`.

    Targets are labelled points drawn from a signal's samples: a fraction ``uniform_fraction`` of
    them uniform in the cube, the rest near the surface (``None``: drawn from the pooled samples
    in proportion to their counts), with value the occupancy (0. or 1.) or the signed distance.

    The context is either

    * ``"labelled"``: labelled points like the targets. Context and target are prefixes of one
      random order of the drawn points, so the larger contains the smaller (the neural-process
      convention, as in :class:`~genfield.datasets.images.ImageSplit`); ``disjoint=True`` draws
      them without overlap instead; or
    * ``"surface"``: a sparse point cloud of ``n_context`` surface points, observed as the value
      the field takes *on* the surface: 0 for a signed distance and 0.5 for an occupancy
      probability (the decision boundary). Point-cloud completion (Occupancy Networks) conditions
      on exactly this.

    Queries are points ``(S, N, 3)`` observed through a
    :class:`~genfield.forward.point.PointMap`; values are ``(S, N, 1)``. Each signal's metadata
    carries its ``name`` and normalised ``mesh`` (for Chamfer distance and IoU); ``extras`` holds
    ``{"target": ..., "context": ...}``. Every random draw comes from ``generator``, so the same
    seed gives the same batch.
    """

    target: str = "occupancy"
    context: str = "labelled"
    n_context: int = 300
    n_target: int = 2048
    uniform_fraction: float | None = 0.5
    disjoint: bool = False

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise InputError(f"shape target must be one of {TARGETS}, got {self.target!r}")
        if self.context not in CONTEXTS:
            raise InputError(f"shape context must be one of {CONTEXTS}, got {self.context!r}")
        if self.n_context < 1 or self.n_target < 1:
            raise InputError(
                f"n_context and n_target must be positive, got {self.n_context}, {self.n_target}"
            )
        if self.uniform_fraction is not None and not 0 <= self.uniform_fraction <= 1:
            raise InputError(f"uniform_fraction must be in [0, 1], got {self.uniform_fraction}")

    def _draw(self, signal: ShapeSignal, count: int, generator) -> torch.Tensor:
        """Indices of ``count`` distinct labelled points of ``signal``, in random order."""
        total = len(signal.points)
        if signal.n_uniform is None or self.uniform_fraction is None:
            if count > total:
                raise InputError(f"shape {signal.name!r} has {total} samples, {count} requested")
            return torch.randperm(total, generator=generator)[:count]
        n_u = round(self.uniform_fraction * count)
        n_n = count - n_u
        if n_u > signal.n_uniform or n_n > total - signal.n_uniform:
            raise InputError(
                f"shape {signal.name!r} has {signal.n_uniform} uniform and "
                f"{total - signal.n_uniform} near-surface samples; {n_u} and {n_n} requested"
            )
        uniform = torch.randperm(signal.n_uniform, generator=generator)[:n_u]
        near = signal.n_uniform + torch.randperm(total - signal.n_uniform, generator=generator)[:n_n]
        both = torch.cat([uniform, near])
        return both[torch.randperm(count, generator=generator)]

    def _values(self, signal: ShapeSignal) -> torch.Tensor:
        return signal.occupancy.float() if self.target == "occupancy" else signal.sdf

    def __call__(
        self, signals: Sequence[ShapeSignal], generator: torch.Generator | None = None
    ) -> SignalBatch:
        if not signals:
            raise InputError("ShapeSplit needs at least one shape")
        nc, nt = self.n_context, self.n_target
        cq, cv, tq, tv = [], [], [], []
        for sig in signals:
            values = self._values(sig)
            if self.context == "surface":
                if nc > len(sig.surface_points):
                    raise InputError(
                        f"shape {sig.name!r} has {len(sig.surface_points)} surface points, "
                        f"n_context={nc} requested"
                    )
                pick = torch.randperm(len(sig.surface_points), generator=generator)[:nc]
                cq.append(sig.surface_points[pick])
                cv.append(torch.full((nc, 1), SURFACE_LEVEL[self.target], dtype=values.dtype))
                target = self._draw(sig, nt, generator)
            else:
                drawn = self._draw(sig, nc + nt if self.disjoint else max(nc, nt), generator)
                context = drawn[:nc]
                target = drawn[nc:] if self.disjoint else drawn[:nt]
                cq.append(sig.points[context])
                cv.append(values[context])
            tq.append(sig.points[target])
            tv.append(values[target])
        return SignalBatch(
            kind="shape",
            forward_map=PointMap(),
            context=Observations(torch.stack(cq), torch.stack(cv)),
            target=Observations(torch.stack(tq), torch.stack(tv)),
            metadata=[{"name": s.name, "mesh": s.mesh} for s in signals],
            extras={"target": self.target, "context": self.context},
        )
