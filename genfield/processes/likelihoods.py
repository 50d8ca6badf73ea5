"""Likelihoods in observation space: the decoded field goes through the forward map, then is scored.

The decoder field predicts, at every point, the signal's channels and (Gaussian case) a scale field
``sigma(x) >= 0``. Both go through the *same* forward map as the signal, so the likelihood lives where
the measurements live (the PONP idea, Gu et al. 2023):

* point maps (pixels, 3-D points): ``y_n ~ N(mu(x_n), (s0 + sigma(x_n))^2)``;
* CT (a linear, positive map ``P``): ``y ~ N(P mu, (s0 + P sigma)^2)``. Pushing the std (not the
  variance) through ``P`` treats the field's errors along a ray as fully correlated: the std of a
  sum of perfectly correlated terms is the sum of their stds, an upper bound for any correlation,
  and it keeps the observation scale in the units of the projection;
* volume rendering: the std is composited like a colour, ``s0 + sum_i w_i sigma_i``, with the same
  weights ``w_i = T_i alpha_i`` as the colour and no background term (the background is known).

All three are one call, :meth:`~genfield.forward.base.ForwardMap.observe_carrying` with ``power=1``:
the map observes the signal channels and carries the scale channels through the same samples
(stratified jitter and hierarchical samples included), ``sum_k w_nk sigma(x_nk)``.

``s0`` (``min_std``) is a floor in observation space that keeps the likelihood finite where a ray
sees little of the field. Occupancy uses a Bernoulli likelihood on the logit instead (no scale).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genfield.forward.base import FieldFn, ForwardMap
from genfield.meta.likelihood import gaussian_nll_terms


def observe(
    forward_map: ForwardMap, field_fn: FieldFn, queries: torch.Tensor, n_obs: int, gaussian: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Observations of a decoded field: ``(mean, std)``, each ``(..., N, n_obs)``.

    ``std`` is ``None`` for a non-Gaussian likelihood.

    ``field_fn`` returns, per point, the signal channels then (Gaussian) ``n_obs`` scale channels.
    For the volume renderer the signal channels are ``(density, colour...)``.
    """
    if not gaussian:
        return forward_map(field_fn, queries), None

    def signal_and_scale(points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = field_fn(points)
        return out[..., :-n_obs], out[..., -n_obs:]

    return forward_map.observe_carrying(signal_and_scale, queries, power=1)


def gaussian_log_prob(mean: torch.Tensor, std: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log N(y | mean, std^2)`` summed over channels: ``(..., N, c) -> (..., N)``."""
    return -gaussian_nll_terms(mean, y, std.log()).sum(dim=-1)


def bernoulli_log_prob(logit: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``log Bernoulli(y | sigmoid(logit))`` summed over channels (``y`` may be soft, in [0, 1])."""
    return -F.binary_cross_entropy_with_logits(logit, y.expand_as(logit), reduction="none").sum(-1)
