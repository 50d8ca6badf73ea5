"""Context subsampling: training on context sizes that vary, as neural processes are trained.

A model trained on, say, 20 CT projections then meets 1 to 8 views at test time within its
training distribution. The units dropped from the context join the target, so the process is also
scored on what it was not shown.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from einops import rearrange, repeat

from genfield.datasets.batch import Observations
from genfield.errors import InputError


def subsample_range(value: Any, owner: str) -> tuple[int, int] | None:
    """The option ``context_subsample`` as ``(lo, hi)`` with ``1 <= lo <= hi``, or ``None``.

    ``owner`` names the method in the one-line error a malformed value gets (a scalar, three
    entries, a fraction, ``lo > hi``).
    """
    if value is None:
        return None
    ok = isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
    ok = ok and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not (ok and 1 <= value[0] <= value[1]):
        raise InputError(f"{owner} context_subsample must be (lo, hi), integers 1 <= lo <= hi: {value!r}")
    return int(value[0]), int(value[1])


def take_units(obs: Observations, index: torch.Tensor, unit: int) -> Observations:
    """The units ``index`` ``(S, n)`` of ``obs`` (unit ``u`` = observations ``u*unit .. u*unit+unit-1``),
    in their original order; a layout of whole units of that size becomes the layout of the ``n``
    kept (gathered whole, so not re-checked), any other is dropped."""
    within = torch.arange(unit, device=index.device)
    rows = rearrange(index.sort(dim=1).values[..., None] * unit + within, "s n u -> s (n u)")
    layout = obs.layout
    whole = layout is not None and layout.unit_size == unit  # whole projections / views stay whole
    return Observations(
        torch.gather(obs.queries, 1, repeat(rows, "s m -> s m q", q=obs.queries.shape[-1])),
        torch.gather(obs.values, 1, repeat(rows, "s m -> s m c", c=obs.values.shape[-1])),
        layout.with_units(index.shape[1]) if whole else None,
        check=False,
    )


def subsample_context(
    context: Observations, target: Observations, unit: int, lo: int, hi: int
) -> tuple[Observations, Observations]:
    """Keep ``n`` random units of each signal's context, ``n`` drawn in ``[lo, min(hi, U)]`` per batch.

    ``unit`` is the number of observations per context unit (a whole CT projection, a whole view,
    or one observation: the tokenizer's ``unit_size``); ``U`` the context's unit count. Draws come
    from torch's global generator. Returns ``(kept context, target + dropped units)``.
    """
    n_units = context.num_observations // unit
    hi = min(hi, n_units)
    keep = int(torch.randint(min(lo, hi), hi + 1, ()))
    if keep >= n_units:
        return context, target
    order = torch.rand(context.num_signals, n_units, device=context.queries.device).argsort(dim=1)
    dropped = take_units(context, order[:, keep:], unit)
    target = Observations(
        torch.cat([target.queries, dropped.queries], dim=1),
        torch.cat([target.values, dropped.values], dim=1),
    )
    return take_units(context, order[:, :keep], unit), target
