"""Neural processes over neural fields: CNP, latent NP, attentive NP and PONP, one model of parts.

Every model reads a signal's context in one forward pass and conditions a *shared* field decoder
(a :class:`~genfield.fields.field.Field`), then scores the decoded field through the forward map of
the data. :class:`NeuralProcess` only orchestrates injected parts (:mod:`genfield.processes.parts`),
each in its own module, as the Neural-Process-Family composes its models:

* tokenizer and encoders (:mod:`~genfield.processes.tokenizers`, :mod:`~genfield.processes.encoders`);
* the conditioner, modulations or weight tokens (:mod:`~genfield.processes.conditioners`);
* the likelihood, Gaussian or Bernoulli, in observation space (:mod:`~genfield.processes.likelihoods`);
* the objectives, NLL, ELBO and ML (:mod:`~genfield.processes.objectives`);
* context subsampling (:mod:`~genfield.processes.subsampling`) and test-time refinement
  (:mod:`~genfield.processes.refinement`).

The four named models are presets of :class:`ProcessConfig` (:mod:`~genfield.processes.config`).

Prediction (``reconstruct``): ``K = num_samples`` draws of ``z ~ q(z|C)``; the predictive moments
over the draws are the likelihood's (law of total variance, ``Var_k[mu_k] + E_k[sigma_k^2]``;
Bernoulli: ``p(1 - p)`` of the mean probability). Optional test-time optimisation (``tto_steps``,
or ``steps=`` at call time) then refines each draw on the context measurements only.

Uncertainty under test-time optimisation (``tto_scale``): TTO fits the few context points, and if
its objective also sets the predicted std, the decoder copy shrinks ``sigma`` wherever it fits them;
the shrinkage spreads to the unobserved points through the shared hidden layers and the predictive
intervals become overconfident off the context. The amortised ``sigma(x | C)`` of the forward pass
is what meta-training calibrated, on held-out *target* points, so predictions after TTO keep it and
only the mean adapts:

* ``"nuisance"`` (default): TTO optimises the context NLL with its own scale channels (a
  heteroscedastic fit that may down-weight context points it cannot fit), but the prediction's std
  is the forward pass's;
* ``"frozen"``: the forward pass's std also weights the context residuals inside the TTO objective;
* ``"adapted"``: the std of the refined decoder (overconfident off the context; for ablations).

Bad input: an empty context or a batch of another kind raise :class:`~genfield.errors.InputError`;
queries of a point map outside ``[-1, 1]^d`` too. A context with more tokens than ``max_tokens`` is
subsampled to ``max_tokens`` evenly spaced tokens with a warning (deterministic). Non-finite losses
are returned as they are in the metrics: the trainer stops on them.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from einops import rearrange, repeat
from torch import nn
from torch.distributions import Independent, kl_divergence

from genfield.calibration import hold_std_scale, scaled
from genfield.datasets.batch import Observations, SignalBatch
from genfield.distributed import randn_for_shard
from genfield.errors import InputError
from genfield.fields.field import Field, FieldConfig
from genfield.fields.heads import apply_head
from genfield.forward import ForwardMap
from genfield.interface import Adapted, Prediction, Reconstructor
from genfield.processes import objectives
from genfield.processes.conditioners import Conditioning
from genfield.processes.config import KIND_PRESETS, MODELS, PRESETS, ProcessConfig, process_config
from genfield.processes.parts import ProcessParts, build_parts, validate_config
from genfield.processes.refinement import refine
from genfield.processes.subsampling import subsample_context
from genfield.processes.tokenizers import select_tokens

__all__ = [
    "KIND_PRESETS",
    "MODELS",
    "PRESETS",
    "ConditionedProcess",
    "Conditioning",
    "NeuralProcess",
    "ProcessConfig",
    "build_process",
]


class NeuralProcess(Reconstructor):
    """A neural process whose decoder is a neural field observed through a forward map."""

    def __init__(
        self, field_config: FieldConfig, kind: str, config: ProcessConfig, parts: ProcessParts | None = None
    ) -> None:
        super().__init__()
        validate_config(kind, config)
        parts = build_parts(field_config, kind, config) if parts is None else parts
        self.kind, self.config, self.field_config = kind, config, field_config
        self.signal_channels, self.obs_channels = parts.signal_channels, parts.obs_channels
        self.decoder, self.tokenizer, self.likelihood = parts.decoder, parts.tokenizer, parts.likelihood
        self.decoder_module = self.decoder.module  # registered: its parameters are trained
        self.encoder, self.latent = parts.encoder, parts.latent
        self._adopt("conditioner", parts.conditioner)
        hold_std_scale(self)  # the factor on every predicted std, set on validation signals

    def _adopt(self, name: str, part: nn.Module) -> None:
        """Keep ``part`` as ``self.<name>`` and register its parameters and submodules on the process
        under their own names (``to_modulation.weight``, ``weight_tokens``): checkpoints keep the
        keys of the process before its parts had modules of their own."""
        for key, parameter in part.named_parameters(recurse=False):
            self.register_parameter(key, parameter)
        for key, module in part._modules.items():  # with the unused ones (None), as before
            self.add_module(key, module)
        object.__setattr__(self, name, part)  # not a second registration

    # -- encoding -----------------------------------------------------------------------------
    def tokens(self, obs: Observations, warn: bool = True) -> torch.Tensor:
        """Raw tokens of observations, cut to the token budget (with a warning if ``warn``)."""
        tokens = self.tokenizer(obs)
        budget = self.config.max_tokens
        if tokens.shape[1] > budget and warn:
            warnings.warn(
                f"context has {tokens.shape[1]} tokens, more than max_tokens={budget}; "
                f"keeping {budget} evenly spaced tokens",
                stacklevel=3,
            )
        return select_tokens(tokens, budget)

    def encode(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded tokens ``(S, T, width)`` and their mean ``(S, width)`` (order invariant)."""
        encoded = self.encoder.tokens(tokens)
        return encoded, encoded.mean(dim=-2)

    def condition(
        self,
        context: Observations,
        z: torch.Tensor | None,
        warn: bool = True,
        forward_map: ForwardMap | None = None,
    ) -> Conditioning:
        """The decoder's conditioning from a context and latent draws ``z`` ``(K, S, dz)``.

        ``forward_map`` (the context's) is needed with ``local_features``: they go through its adjoint.
        """
        params = dict(self.decoder_module.named_parameters())
        raw = self.tokens(context, warn)
        return self.conditioner.condition(self.encoder, raw, context, z, forward_map, params)

    def latent_prior(self, context: Observations, warn: bool = True) -> Independent:
        """``q(z | C)``: the latent distribution given the context alone."""
        return self.latent(self.encode(self.tokens(context, warn))[1])

    def latent_posterior(self, context: Observations, target: Observations) -> Independent:
        """``q(z | C, T)``: from the context and target tokens together (budget applied silently).

        Targets that do not form tokens (views: random rays, not whole views for patch tokens) leave
        the context alone: ``q(z | C)``, with a warning. The KL term is then 0 and the ELBO is the
        expected log-likelihood under ``q(z | C)``, a lower bound of NPML's objective.
        """
        try:
            target_tokens = self.tokenizer(target)
        except InputError as error:
            if not getattr(self, "_warned_posterior", False):
                warnings.warn(f"latent posterior from the context only: {error}", stacklevel=2)
                self._warned_posterior = True
            return self.latent_prior(context, warn=False)
        raw = torch.cat([self.tokenizer(context), target_tokens], dim=1)
        return self.latent(self.encode(select_tokens(raw, self.config.max_tokens))[1])

    # -- decoding -----------------------------------------------------------------------------
    def field_fn(self, cond: Conditioning) -> Callable[[torch.Tensor], torch.Tensor]:
        """The decoded fields of ``B`` draws as a forward map's ``field_fn``: ``(B, ..., d) -> (B, ..., c)``.

        Channels: the signal's (after the data head, e.g. sigmoid for grey) then the likelihood's
        scale channels (Gaussian: ``softplus >= 0``).
        """

        def fn(points: torch.Tensor) -> torch.Tensor:
            flat = rearrange(points, "b ... d -> b (...) d")
            raw = self.decoder(cond.params, flat, self.conditioner.modulations(cond, flat))
            signal = apply_head(self.field_config.head, raw[..., : self.signal_channels])
            signal = self.likelihood.join(signal, raw[..., self.signal_channels :])
            return signal.reshape(*points.shape[:-1], signal.shape[-1])

        return fn

    def predict_observations(
        self, cond: Conditioning, queries: torch.Tensor, forward_map: ForwardMap, k: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Observation means and stds (or ``None``) ``(K, S, N, c)`` at ``queries`` ``(S, N, q)``."""
        expanded = repeat(queries, "s n q -> (k s) n q", k=k)
        mean, std = self.likelihood.observe(forward_map, self.field_fn(cond), expanded)
        split = "(k s) n c -> k s n c"
        return rearrange(mean, split, k=k), None if std is None else rearrange(std, split, k=k)

    def log_likelihood(
        self,
        cond: Conditioning,
        obs: Observations,
        forward_map: ForwardMap,
        k: int,
        std: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``log p(y_n | draw)`` ``(K, S, N)`` and the squared error of the mean ``(K, S, N)``.

        ``std`` ``(K, S, N, c)``, if given, replaces the decoded scale (the frozen scale of TTO).
        """
        mean, decoded_std = self.predict_observations(cond, obs.queries, forward_map, k)
        std = decoded_std if std is None else std
        return self.likelihood.log_prob(mean, std, obs.values), self.likelihood.squared_error(
            mean, obs.values
        )

    # -- checks -------------------------------------------------------------------------------
    def check_queries(self, queries: torch.Tensor, query_map: ForwardMap) -> None:
        """Queries the query map rejects (e.g. points outside the field's domain) raise InputError."""
        query_map.validate_queries(queries, "query")

    def check_observations(self, obs: Observations, forward_map: ForwardMap, role: str) -> None:
        """Raise :class:`InputError` for an empty set or queries the forward map rejects."""
        if obs.num_signals == 0 or obs.num_observations == 0:
            raise InputError(f"{role} is empty: shape {tuple(obs.queries.shape)}")
        forward_map.validate_queries(obs.queries, role)

    # -- training -----------------------------------------------------------------------------
    def loss(self, batch: SignalBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss of a batch (per target observation) and its metrics."""
        if batch.kind != self.kind:
            raise InputError(f"batch kind {batch.kind!r} does not match the process's {self.kind!r}")
        self.check_observations(batch.context, batch.forward_map, "context")
        self.check_observations(batch.target, batch.forward_map, "target")
        context, target, fmap = batch.context, batch.target, batch.forward_map
        if self.config.context_subsample is not None and self.training:
            context, target = self.subsample_context(context, target)
        n = target.num_observations
        if self.latent is None:
            log_prob, error = self.log_likelihood(
                self.condition(context, None, forward_map=fmap), target, fmap, 1
            )
            loss = -objectives.conditional_log_likelihood(log_prob).mean() / n
            return loss, {"loss": loss, "nll": -log_prob.mean(), "mse": error.mean()}

        prior, posterior = self.latent_prior(context), self.latent_posterior(context, target)
        objective, proposal = objectives.latent_objective(self.config.objective, self.config.proposal)
        z = self.draw(prior if proposal == "prior" else posterior, shard=batch.shard)
        cond = self.condition(context, z, warn=False, forward_map=fmap)
        log_prob, error = self.log_likelihood(cond, target, fmap, self.config.train_samples)
        loss = -objective(log_prob.sum(-1), z, prior, posterior).mean() / n
        kl = kl_divergence(posterior, prior)  # (S,), reported
        return loss, {"loss": loss, "nll": -log_prob.mean(), "kl": kl.mean(), "mse": error.mean()}

    def draw(self, proposal: Independent, shard: tuple[int, int] | None = None) -> torch.Tensor:
        """``train_samples`` reparameterised draws ``(K, S, dz)``; on a distributed ``shard``, from
        the global batch's noise (exact with N ranks, :func:`~genfield.distributed.randn_for_shard`)."""
        mean, k = proposal.mean, self.config.train_samples
        eps = randn_for_shard(k, len(mean), mean.shape[1:], shard, dtype=mean.dtype, device=mean.device)
        return mean + proposal.stddev * eps

    def subsample_context(
        self, context: Observations, target: Observations
    ) -> tuple[Observations, Observations]:
        """Training on ``context_subsample = (lo, hi)`` whole context units of the tokenizer
        (:func:`~genfield.processes.subsampling.subsample_context`); the dropped join the target."""
        lo, hi = self.config.context_subsample
        return subsample_context(context, target, self.tokenizer.unit_size(context), lo, hi)

    def compute_gradients(self, batch: SignalBatch) -> dict[str, torch.Tensor]:
        """Backpropagate the training loss of ``batch`` into ``.grad``; return detached metrics."""
        loss, metrics = self.loss(batch)
        loss.backward()
        return {key: value.detach() for key, value in metrics.items()}

    # -- test time ----------------------------------------------------------------------------
    @torch.no_grad()
    def settings(self, budget: Mapping[str, Any]) -> list[tuple[str, int | None]]:
        """One forward pass, and ``budget["tto_steps"]`` steps of test-time optimisation (if > 0)."""
        steps = int(budget["tto_steps"])
        return [("one pass", 0)] + ([(f"TTO {steps}", steps)] if steps > 0 else [])

    def reconstruct(
        self,
        context: Observations,
        context_map: ForwardMap,
        queries: torch.Tensor,
        query_map: ForwardMap,
        *,
        steps: int | None = None,
        num_samples: int = 16,
        variance: bool = True,
    ) -> Prediction:
        """Predictive mean and variance of observations at ``queries`` from the context alone."""
        self.check_queries(queries, query_map)  # before any work on the context
        adapted = self.condition_on(context, context_map, steps=steps, num_samples=num_samples)
        return adapted.predict(queries, query_map, variance=variance)

    @torch.no_grad()
    def condition_on(
        self,
        context: Observations,
        context_map: ForwardMap,
        *,
        steps: int | None = None,
        num_samples: int = 16,
    ) -> ConditionedProcess:
        """Encode the context, draw ``z ~ q(z|C)`` and run test-time optimisation, once."""
        self.check_observations(context, context_map, "context")
        k = num_samples if self.latent is not None else 1
        z = self.latent_prior(context).sample((k,)) if self.latent is not None else None
        cond = self.condition(context, z, forward_map=context_map)
        steps = self.config.tto_steps if steps is None else steps
        scaled = steps > 0 and self.likelihood.has_scale
        scale = None  # the forward pass's std inside the TTO objective ("frozen")
        if scaled and self.config.tto_scale == "frozen":
            scale = self.predict_observations(cond, context.queries, context_map, k)[1].detach()

        def context_nll(refined: Conditioning) -> torch.Tensor:
            return -self.log_likelihood(refined, context, context_map, k, std=scale)[0].sum()

        tto = {"target": self.config.tto_params, "steps": steps, "lr": self.config.tto_lr}
        refined = refine(cond, context_nll, self.decoder.param_ndim, k * context.num_signals, **tto)
        keep_scale = scaled and self.config.tto_scale != "adapted"
        return ConditionedProcess(self, refined, k, scale_cond=cond if keep_scale else None)


class ConditionedProcess(Adapted):
    """A neural process's conditioning (``K`` draws, refined): predictions reuse the same draws.

    ``scale_cond``, if given, is the unrefined conditioning whose decoded std the predictions use
    (``tto_scale`` other than ``"adapted"``): the mean comes from ``cond``, the std from the forward pass.
    """

    def __init__(
        self, process: NeuralProcess, cond: Conditioning, k: int, scale_cond: Conditioning | None = None
    ) -> None:
        self.process, self.cond, self.k, self.scale_cond = process, cond, k, scale_cond

    @torch.no_grad()
    def predict(self, queries: torch.Tensor, query_map: ForwardMap, *, variance: bool = True) -> Prediction:
        """Moments over the draws (the likelihood's), in chunks of ``query_chunk`` queries."""
        process = self.process
        process.check_queries(queries, query_map)
        means, stds = [], []
        for chunk in queries.split(process.config.query_chunk, dim=1):
            mean, std = process.predict_observations(self.cond, chunk, query_map, self.k)
            if variance and self.scale_cond is not None:
                std = process.predict_observations(self.scale_cond, chunk, query_map, self.k)[1]
            means.append(mean)
            stds.append(std)
        std = None if stds[0] is None else torch.cat(stds, dim=2)
        moments = process.likelihood.moments(torch.cat(means, dim=2), std)  # over (K, S, M, c)
        return scaled(moments, process.std_scale)


def build_process(
    name: str,
    field_config_or_field: FieldConfig | Field,
    kind: str,
    **options: Any,
) -> NeuralProcess:
    """Build a neural process ``cnp``, ``np``, ``anp`` or ``ponp`` over a decoder field for a data kind.

    Args:
        name: the model preset (see :mod:`genfield.processes.config`).
        field_config_or_field: the signal's field (its head names the data: ``grey``/``rgb`` images,
            ``attenuation`` CT, ``occupancy``/``sdf`` shapes, ``radiance`` views); the decoder copies its
            architecture with an identity head and the process's conditioning.
        kind: a registered data kind (``image``, ``ct``, ``shape``, ``views``, ...): its spec gives
            the default tokenizer, the measurement's forward map and the process defaults
            (:mod:`genfield.kinds`).
        **options: :class:`ProcessConfig` fields overriding the preset and the kind's defaults;
            ``by_kind={kind: {...}}`` holds further overrides that apply to one data kind only
            (so one method config serves every kind).

    Precedence: ``PRESETS[name]`` < ``get_kind(kind).process_defaults[name]`` < ``options`` <
    ``options["by_kind"][kind]``.
    """
    config = process_config(name, kind, **options)
    field_config = (
        field_config_or_field.config if isinstance(field_config_or_field, Field) else field_config_or_field
    )
    return NeuralProcess(field_config, kind, config)
