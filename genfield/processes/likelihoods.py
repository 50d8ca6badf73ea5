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

:class:`GaussianLikelihood` and :class:`BernoulliLikelihood` are the neural process's likelihood
part: the decoder channels they add, observing, scoring and the predictive moments over draws.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from genfield.errors import unknown_name
from genfield.forward.base import FieldFn, ForwardMap
from genfield.interface import Prediction
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


class GaussianLikelihood:
    """``y ~ N(A mu, (s0 + A sigma)^2)``: the decoder adds ``c_obs`` scale channels ``sigma = softplus``."""

    name = "gaussian"
    has_scale = True

    def __init__(self, obs_channels: int, min_std: float) -> None:
        self.obs_channels, self.min_std = obs_channels, min_std
        self.scale_channels = obs_channels

    def join(self, signal: torch.Tensor, raw_scale: torch.Tensor) -> torch.Tensor:
        """Per-point decoder outputs: the signal channels then the scale field ``softplus >= 0``."""
        return torch.cat([signal, F.softplus(raw_scale)], dim=-1)

    def observe(
        self, forward_map: ForwardMap, field_fn: FieldFn, queries: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Observation means and stds ``s0 + A sigma`` (:func:`observe`)."""
        mean, std = observe(forward_map, field_fn, queries, self.obs_channels, True)
        return mean, std + self.min_std

    def log_prob(self, mean: torch.Tensor, std: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        return gaussian_log_prob(mean, std, y)

    def squared_error(self, mean: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The squared error of the predicted observation, channel mean: ``(..., N)``."""
        return (mean - y).square().mean(-1)

    def moments(self, means: torch.Tensor, stds: torch.Tensor | None) -> Prediction:
        """Over ``K`` draws ``(K, S, M, c)``: the mean, and ``Var_k[mu_k] + E_k[sigma_k^2]``."""
        variance = means.var(0, unbiased=False) + stds.square().mean(0)
        return Prediction(means.mean(0), variance, means)


class BernoulliLikelihood:
    """``y ~ Bernoulli(sigmoid(A f))`` for occupancy: the decoded signal is a logit, no scale."""

    name = "bernoulli"
    has_scale = False
    scale_channels = 0

    def __init__(self, obs_channels: int, min_std: float) -> None:
        self.obs_channels = obs_channels

    def join(self, signal: torch.Tensor, raw_scale: torch.Tensor) -> torch.Tensor:
        return signal

    def observe(
        self, forward_map: ForwardMap, field_fn: FieldFn, queries: torch.Tensor
    ) -> tuple[torch.Tensor, None]:
        return forward_map(field_fn, queries), None

    def log_prob(self, mean: torch.Tensor, std: torch.Tensor | None, y: torch.Tensor) -> torch.Tensor:
        return bernoulli_log_prob(mean, y)

    def squared_error(self, mean: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The squared error of the predicted probability, channel mean: ``(..., N)``."""
        return (torch.sigmoid(mean) - y).square().mean(-1)

    def moments(self, means: torch.Tensor, stds: torch.Tensor | None) -> Prediction:
        """Over ``K`` draws of logits: the mean probability ``p`` and the variance ``p (1 - p)``."""
        p = torch.sigmoid(means)
        avg = p.mean(0)
        return Prediction(avg, avg * (1 - avg), p)


LIKELIHOODS = {"gaussian": GaussianLikelihood, "bernoulli": BernoulliLikelihood}


def build_likelihood(
    name: str, head: str, obs_channels: int, min_std: float
) -> GaussianLikelihood | BernoulliLikelihood:
    """The likelihood ``name``; ``"auto"`` is Bernoulli for an occupancy head, Gaussian otherwise."""
    if name == "auto":
        name = "bernoulli" if head == "occupancy" else "gaussian"
    if name not in LIKELIHOODS:
        raise unknown_name("process likelihood", name, ["auto", *LIKELIHOODS])
    return LIKELIHOODS[name](obs_channels, min_std)
