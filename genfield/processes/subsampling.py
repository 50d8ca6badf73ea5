"""Context subsampling: training on context sizes that vary, as neural processes are trained.

A model trained on, say, 20 CT projections then meets 1 to 8 views at test time within its
training distribution. The units dropped from the context join the target, so the process is also
scored on what it was not shown.
"""

from __future__ import annotations

import torch
from einops import rearrange, repeat

from genfield.datasets.batch import Observations


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
