"""Neural processes over neural fields: CNP, latent NP, attentive NP and PONP, one class.

Every model here reads a signal's context in one forward pass and conditions a *shared* field decoder
(a :class:`~genfield.fields.field.Field`), then scores the decoded field through the forward map of
the data (:mod:`genfield.processes.likelihoods`). The four named models are presets of
:class:`ProcessConfig` (the Neural-Process-Family's view: encoders, attenders and likelihoods are
parts, models are combinations):

========  ===========  =============  =========  ======  =============================
model     encoder      deterministic  attention  latent  conditioning of the decoder
========  ===========  =============  =========  ======  =============================
cnp       set (mean)   r              no         no      shift/FiLM from r
np        set (mean)   no             no         z       shift/FiLM from z
anp       transformer  r(x) by attn   yes        z       per-point shift/FiLM from [r(x), z]
ponp      transformer  r              no         z       shift/FiLM from [r, z], or weight tokens
========  ===========  =============  =========  ======  =============================

Conditioning (``conditioning``): ``"shift"`` adds ``beta_l`` to every hidden pre-activation of the
decoder, ``"film"`` applies ``(1 + gamma_l) z_l + beta_l`` (the PONP code's options); the modulations are
a linear map of the representation. ``"weights"`` is TransINR's: learned weight tokens go through
the transformer with the data tokens; each output token ``t_o`` rescales row ``o`` of a base weight
matrix of the decoder, ``W_s[o] = ||W[o]|| normalize(W[o] * head(t_o))``, per signal.

Local features (``local_features``, processes/local.py): per-point conditioning through the adjoint
of the forward map, the measurement-consistent analogue of pixelNeRF's projection of query points into
context views. For CT, the per-view (raw and ramp-filtered) back-projections of the context sinogram
around each grid point are encoded, mean-pooled over views, and read bilinearly at every decoder
point; they join ``[r, z]`` (and the cross-attention output) in the per-point modulation.
``context_subsample = (lo, hi)`` trains on random context sizes (whole projections / views / points),
the dropped units joining the target, so a model trained on 20 views also meets 1 to 8.

Defaults per data kind (the kind spec's ``process_defaults``): PONP on CT uses both. Measured at
test size (24 px phantoms, 300 steps, batch 4, tests/test_processes_tasks.py): without them PONP
gave ~15.2 dB from 1, 2, 4 or 8 views alike (the mean phantom); with them 15.9 / 17.1 / 18.7 /
21.1 dB after 100 decoder TTO steps against FBP's 7.6 / 11.5 / 16.1 / 20.5. A residual on FBP
(output ``softplus(raw + softplus^-1(FBP))``) was tried and lost (19.4 dB at 8 views, and FBP's
artefacts at 1 to 4 views).
A method config may hold per-kind overrides: ``build_process(..., by_kind={"ct": {...}})``.

Training objectives (``compute_gradients``), with ``N`` target observations, per observation:

* deterministic (CNP, or any model with ``latent_dim = 0``): ``-1/N log p(y_T | C)``;
* ``objective="elbo"``: ``-1/N (E_{q(z|C,T)} log p(y_T | z, C) - KL(q(z|C,T) || q(z|C)))`` with
  ``train_samples`` reparameterised draws (Garnelo et al. 2018b; Le et al. 2018);
* ``objective="ml"``: importance-sampled marginal likelihood
  ``-1/N log 1/K sum_k p(y_T | z_k, C) q(z_k|C) / q(z_k|C,T)``, ``z_k ~ q(z|C,T)``
  (``proposal="posterior"``), or NPML's ``z_k ~ q(z|C)`` with unit weights (``proposal="prior"``).

Prediction (``reconstruct``): ``K = num_samples`` draws of ``z ~ q(z|C)``; the predictive mean is the
mean of the per-draw observation means and the variance is the law of total variance,
``Var_k[mu_k] + E_k[sigma_k^2]`` (Bernoulli: ``p(1 - p)`` of the mean probability). Optional test-time
optimisation (``tto_steps``, or ``steps=`` at call time) then refines, for each draw, the latent code
(``tto_params="latent"``) or a per-signal copy of the decoder (``"decoder"``) by Adam on the negative
log-likelihood of the context measurements only.

Uncertainty under test-time optimisation (``tto_scale``): TTO fits the few context points, and if
its objective also sets the predicted std, the decoder copy shrinks ``sigma`` wherever it fits them;
the shrinkage spreads to the unobserved points through the shared hidden layers and the predictive
intervals become overconfident off the context. The amortised ``sigma(x | C)`` of the forward pass
is what meta-training calibrated, on held-out *target* points (the NP objective scores the target
set, not the context), so predictions after TTO keep it and only the mean adapts:

* ``"nuisance"`` (default): TTO optimises the context NLL with its own scale channels, as before (a
  heteroscedastic fit that may down-weight context points it cannot fit: the mean is unchanged), but
  the prediction's std is the forward pass's;
* ``"frozen"``: the forward pass's std also weights the context residuals inside the TTO objective;
* ``"adapted"``: the std of the refined decoder (overconfident off the context; for ablations).

As TTO lowers the error of the mean, the kept intervals err on the conservative side.

Bad input: an empty context or a batch of another kind raise :class:`~genfield.errors.InputError`;
queries of a point map outside ``[-1, 1]^d`` too. A context with more tokens than ``max_tokens`` is
subsampled to ``max_tokens`` evenly spaced tokens with a warning (deterministic). Non-finite losses
are returned as they are in the metrics: the trainer stops on them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import nn
from torch.distributions import Independent, kl_divergence

from genfield.datasets.batch import Observations, SignalBatch
from genfield.distributed import randn_for_shard
from genfield.errors import InputError, unknown_name
from genfield.fields.field import Field, FieldConfig, Params
from genfield.fields.heads import apply_head, head_channels
from genfield.forward import ForwardMap
from genfield.interface import Adapted, Prediction, Reconstructor
from genfield.kinds import KINDS, get_kind, options_for_kind
from genfield.processes.encoders import (
    MLP,
    CrossAttention,
    LatentEncoder,
    SetEncoder,
    TokenTransformer,
)
from genfield.processes.likelihoods import bernoulli_log_prob, gaussian_log_prob, observe
from genfield.processes.local import build_local_features, sample_grid
from genfield.processes.tokenizers import build_tokenizer, select_tokens

MODELS = ("cnp", "np", "anp", "ponp")


@dataclass
class ProcessConfig:
    """Everything that defines a neural process besides its decoder field."""

    model: str = "cnp"
    width: int = 128
    depth: int = 2
    heads: int = 4
    encoder: str = "set"  # "set" | "transformer"
    deterministic: bool = True
    attention: bool = False
    latent_dim: int = 0
    objective: str = "elbo"  # "elbo" | "ml"
    proposal: str = "posterior"  # for "ml": "posterior" (importance) | "prior" (NPML)
    train_samples: int = 4
    conditioning: str = "shift"  # "shift" | "film" | "weights"
    weight_layers: tuple[int, ...] = (-1,)
    tokenizer: str | None = None  # None: by kind
    tokenizer_options: dict[str, Any] = field(default_factory=dict)
    max_tokens: int = 2048
    min_std: float = 0.01
    likelihood: str = "auto"  # "auto" | "gaussian" | "bernoulli"
    local_features: bool = False
    local_options: dict[str, Any] = field(default_factory=dict)
    context_subsample: tuple[int, int] | None = None
    tto_steps: int = 0
    tto_lr: float = 1e-2
    tto_params: str = "latent"  # "latent" | "decoder"
    tto_scale: str = "nuisance"  # "frozen" | "nuisance" | "adapted": the std under TTO (module docstring)
    query_chunk: int = 8192


PRESETS: dict[str, dict[str, Any]] = {
    "cnp": {"encoder": "set", "deterministic": True, "attention": False, "latent_dim": 0},
    "np": {"encoder": "set", "deterministic": False, "attention": False, "latent_dim": 64},
    "anp": {"encoder": "transformer", "deterministic": True, "attention": True, "latent_dim": 64},
    "ponp": {"encoder": "transformer", "deterministic": True, "attention": False, "latent_dim": 64},
}

#: Defaults of a model for one data kind, where a part measurably wins there: each kind's spec
#: holds them (``KindSpec.process_defaults``); this table of the built-in kinds is built from them.
KIND_PRESETS: dict[tuple[str, str], dict[str, Any]] = {
    (name, kind): dict(defaults)
    for kind in KINDS
    for name, defaults in get_kind(kind).process_defaults.items()
}


@dataclass
class Conditioning:
    """One draw of everything the decoder is conditioned on, for ``B = K * S`` signal draws."""

    params: Params  # decoder parameters; entries with a leading B are per draw
    code: torch.Tensor | None = None  # (B, d_code) global representation [r, z]
    tokens: torch.Tensor | None = None  # (B, T, width) encoded context, for cross-attention
    local: torch.Tensor | None = None  # (B, width, R, R) local feature grid (local_features)


class NeuralProcess(Reconstructor):
    """A neural process whose decoder is a neural field observed through a forward map."""

    def __init__(self, field_config: FieldConfig, kind: str, config: ProcessConfig) -> None:
        super().__init__()
        self._validate(field_config, kind, config)
        self.kind, self.config, self.field_config = kind, config, field_config
        head = field_config.head
        self.signal_channels = head_channels(head, field_config.out_dim)
        self.obs_channels = 3 if head == "radiance" else self.signal_channels
        likelihood = config.likelihood
        if likelihood == "auto":
            likelihood = "bernoulli" if head == "occupancy" else "gaussian"
        self.gaussian = likelihood == "gaussian"
        n_out = self.signal_channels + (self.obs_channels if self.gaussian else 0)
        modulation = config.conditioning if config.conditioning in ("shift", "film") else "none"
        self.decoder = Field(
            replace(field_config, head="identity", out_dim=n_out, modulation=modulation, latent_dim=0)
        )
        self.decoder_module = self.decoder.module  # registered: its parameters are trained

        width = config.width
        tokenizer = config.tokenizer or get_kind(kind).tokenizer
        self.tokenizer = build_tokenizer(
            tokenizer, field_config.in_dim, self.obs_channels, **config.tokenizer_options
        )
        f = self.tokenizer.feature_dim
        if config.encoder == "set":
            self.encoder = SetEncoder(f, width, depth=config.depth + 1)
        else:
            self.encoder = TokenTransformer(f, width, depth=config.depth, heads=config.heads)
        self.latent = LatentEncoder(width, config.latent_dim) if config.latent_dim else None
        self.cross = CrossAttention(field_config.in_dim, width, config.heads) if config.attention else None
        self.local = (
            build_local_features(kind, self.obs_channels, width, **config.local_options)
            if config.local_features
            else None
        )

        code_dim = (width if config.deterministic and not config.attention else 0) + config.latent_dim
        point_dim = (width if config.attention else 0) + (width if config.local_features else 0)
        self.code_dim = code_dim
        if modulation != "none":
            n_layers, m = self.decoder.modulation_shape
            self.to_modulation = nn.Linear(code_dim + point_dim, n_layers * m)
            nn.init.zeros_(self.to_modulation.weight)  # start at the base field
            nn.init.zeros_(self.to_modulation.bias)
        if config.conditioning == "weights":
            self._init_weight_tokens()

    # -- construction -------------------------------------------------------------------------
    @staticmethod
    def _validate(field_config: FieldConfig, kind: str, config: ProcessConfig) -> None:
        get_kind(kind)  # an unknown kind raises, listing the registered ones
        checks = {
            "encoder": (config.encoder, ("set", "transformer")),
            "objective": (config.objective, ("elbo", "ml")),
            "proposal": (config.proposal, ("posterior", "prior")),
            "conditioning": (config.conditioning, ("shift", "film", "weights")),
            "likelihood": (config.likelihood, ("auto", "gaussian", "bernoulli")),
            "tto_params": (config.tto_params, ("latent", "decoder")),
            "tto_scale": (config.tto_scale, ("frozen", "nuisance", "adapted")),
        }
        for key, (value, valid) in checks.items():
            if value not in valid:
                raise unknown_name(f"process {key}", value, valid)
        if config.conditioning == "weights" and (config.encoder != "transformer" or config.latent_dim):
            raise InputError("process conditioning 'weights' needs encoder 'transformer' and latent_dim 0")
        if config.attention and config.conditioning == "weights":
            raise InputError("process attention needs conditioning 'shift' or 'film'")
        if config.local_features and config.conditioning == "weights":
            raise InputError("process local_features needs conditioning 'shift' or 'film'")
        subsample = config.context_subsample
        if subsample is not None and not (len(subsample) == 2 and 1 <= subsample[0] <= subsample[1]):
            raise InputError(f"process context_subsample must be (lo, hi), 1 <= lo <= hi: {subsample}")
        if not (config.deterministic or config.latent_dim or config.attention):
            raise InputError("process needs a deterministic path, a latent path or attention")
        if config.max_tokens < 1 or config.train_samples < 1:
            raise InputError("process max_tokens and train_samples must be >= 1")

    def _init_weight_tokens(self) -> None:
        layers = self.decoder_module.network.hidden_layers
        chosen = sorted({i % len(layers) for i in self.config.weight_layers})
        self.weight_names = [f"network.hidden_layers.{i}.weight" for i in chosen]
        rows = [layers[i].weight.shape[0] for i in chosen]
        self.weight_rows = rows
        self.weight_tokens = nn.Parameter(torch.randn(sum(rows), self.config.width) * 0.02)
        self.weight_heads = nn.ModuleList(
            MLP(self.config.width, self.config.width, layers[i].weight.shape[1], depth=2) for i in chosen
        )

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

    def _weight_params(self, raw_tokens: torch.Tensor) -> Params:
        """TransINR: per-signal rows of the chosen weight matrices from the output weight tokens."""
        extra = repeat(self.weight_tokens, "t w -> s t w", s=raw_tokens.shape[0])
        out = self.encoder.tokens(raw_tokens, extra)[:, -extra.shape[1] :]
        params = dict(self.decoder_module.named_parameters())
        per_signal = {}
        parts = out.split(self.weight_rows, dim=1)
        for name, head, part in zip(self.weight_names, self.weight_heads, parts):
            base = params[name]  # (rows, in)
            modulated = F.normalize(base * head(part), dim=-1) * base.norm(dim=-1, keepdim=True)
            per_signal[name] = modulated
        return {**params, **per_signal}

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
        raw = self.tokens(context, warn)
        k = 1 if z is None else z.shape[0]
        if self.config.conditioning == "weights":
            params = self._weight_params(raw)
            params = {
                n: repeat(v, "s ... -> (k s) ...", k=k) if n in self.weight_names else v
                for n, v in params.items()
            }
            return Conditioning(params)
        encoded, pooled = self.encode(raw)
        parts = []
        if self.config.deterministic and not self.config.attention:
            parts.append(repeat(pooled, "s w -> (k s) w", k=k))
        if z is not None:
            parts.append(rearrange(z, "k s d -> (k s) d"))
        code = torch.cat(parts, dim=-1) if parts else None
        tokens = repeat(encoded, "s t w -> (k s) t w", k=k) if self.cross is not None else None
        local = None
        if self.local is not None:
            local = repeat(self.local(context, forward_map), "s ... -> (k s) ...", k=k)
        return Conditioning(dict(self.decoder_module.named_parameters()), code, tokens, local)

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

        Channels: the signal's (after the data head, e.g. sigmoid for grey) then, Gaussian, the
        scale field ``softplus >= 0``.
        """

        def fn(points: torch.Tensor) -> torch.Tensor:
            flat = rearrange(points, "b ... d -> b (...) d")
            local = None if cond.local is None else sample_grid(cond.local, flat)  # (B, P, width)
            mods = self._modulations(cond, flat, local)
            raw = self.decoder(cond.params, flat, mods)
            signal = apply_head(self.field_config.head, raw[..., : self.signal_channels])
            if self.gaussian:
                signal = torch.cat([signal, F.softplus(raw[..., self.signal_channels :])], dim=-1)
            return signal.reshape(*points.shape[:-1], signal.shape[-1])

        return fn

    def _modulations(
        self, cond: Conditioning, points: torch.Tensor, local: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        if self.config.conditioning == "weights":
            return None
        shape = self.decoder.modulation_shape
        if self.cross is None and local is None:
            return self.to_modulation(cond.code).unflatten(-1, shape)  # (B, L, m)
        parts = []
        if cond.code is not None:
            parts.append(repeat(cond.code, "b d -> b p d", p=points.shape[1]))
        if self.cross is not None:
            parts.append(self.cross(points, cond.tokens))  # (B, P, width)
        if local is not None:
            parts.append(local)  # (B, P, width) local features at the points
        return self.to_modulation(torch.cat(parts, dim=-1)).unflatten(-1, shape)  # (B, P, L, m)

    def predict_observations(
        self, cond: Conditioning, queries: torch.Tensor, forward_map: ForwardMap, k: int
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Observation means and stds ``(K, S, N, c)`` at ``queries`` ``(S, N, q)``."""
        expanded = repeat(queries, "s n q -> (k s) n q", k=k)
        mean, std = observe(forward_map, self.field_fn(cond), expanded, self.obs_channels, self.gaussian)
        mean = rearrange(mean, "(k s) n c -> k s n c", k=k)
        if std is not None:
            std = rearrange(std, "(k s) n c -> k s n c", k=k) + self.config.min_std
        return mean, std

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
        y = obs.values
        if self.gaussian:
            log_prob = gaussian_log_prob(mean, std, y)
            error = (mean - y).square().mean(-1)
        else:
            log_prob = bernoulli_log_prob(mean, y)
            error = (torch.sigmoid(mean) - y).square().mean(-1)
        return log_prob, error

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
            cond = self.condition(context, None, forward_map=fmap)
            log_prob, error = self.log_likelihood(cond, target, fmap, 1)
            loss = -log_prob.sum(-1).mean() / n
            return loss, {"loss": loss, "nll": -log_prob.mean(), "mse": error.mean()}

        k = self.config.train_samples
        prior = self.latent_prior(context)
        posterior = self.latent_posterior(context, target)
        use_prior = self.config.objective == "ml" and self.config.proposal == "prior"
        proposal = prior if use_prior else posterior
        # reparameterised draws; on a distributed shard, the global batch's noise (exact with N ranks)
        eps = randn_for_shard(
            k, context.num_signals, proposal.mean.shape[1:], batch.shard,
            dtype=proposal.mean.dtype, device=proposal.mean.device,
        )
        z = proposal.mean + proposal.stddev * eps  # (K, S, dz)
        cond = self.condition(context, z, warn=False, forward_map=fmap)
        log_prob, error = self.log_likelihood(cond, target, fmap, k)
        data = log_prob.sum(-1)  # (K, S)
        kl = kl_divergence(posterior, prior)  # (S,)
        if self.config.objective == "elbo":
            objective = data.mean(0) - kl
        elif use_prior:
            objective = torch.logsumexp(data, 0) - math.log(k)
        else:
            weights = prior.log_prob(z) - posterior.log_prob(z)
            objective = torch.logsumexp(data + weights, 0) - math.log(k)
        loss = -objective.mean() / n
        metrics = {"loss": loss, "nll": -log_prob.mean(), "kl": kl.mean(), "mse": error.mean()}
        return loss, metrics

    def subsample_context(
        self, context: Observations, target: Observations
    ) -> tuple[Observations, Observations]:
        """Training with context sizes that vary (``context_subsample = (lo, hi)``), as NPs are trained.

        A count ``n`` in ``[lo, min(hi, U)]`` is drawn per batch (torch's global generator), then each
        signal keeps ``n`` random units of its ``U`` context units (whole projections for CT, whole
        views for views, single observations otherwise; the tokenizer's ``unit_size``). The dropped
        units join the target, so the process is also scored on what it was not shown. A model
        trained on, say, 20 projections then meets 1 to 8 views at test time within its training
        distribution.
        """
        unit = self.tokenizer.unit_size(context)
        n_units = context.num_observations // unit
        lo, hi = self.config.context_subsample
        hi = min(hi, n_units)
        keep = int(torch.randint(min(lo, hi), hi + 1, ()))
        if keep >= n_units:
            return context, target
        device = context.queries.device
        order = torch.rand(context.num_signals, n_units, device=device).argsort(dim=1)
        within = torch.arange(unit, device=device)

        def take(index: torch.Tensor) -> Observations:
            rows = rearrange(index.sort(dim=1).values[..., None] * unit + within, "s n u -> s (n u)")
            return Observations(
                torch.gather(context.queries, 1, repeat(rows, "s m -> s m q", q=context.queries.shape[-1])),
                torch.gather(context.values, 1, repeat(rows, "s m -> s m c", c=context.values.shape[-1])),
            )

        dropped = take(order[:, keep:])
        target = Observations(
            torch.cat([target.queries, dropped.queries], dim=1),
            torch.cat([target.values, dropped.values], dim=1),
        )
        return take(order[:, :keep]), target

    def compute_gradients(self, batch: SignalBatch) -> dict[str, torch.Tensor]:
        """Backpropagate the training loss of ``batch`` into ``.grad``; return detached metrics."""
        loss, metrics = self.loss(batch)
        loss.backward()
        return {key: value.detach() for key, value in metrics.items()}

    # -- test time ----------------------------------------------------------------------------
    def refine(
        self, cond: Conditioning, context: Observations, context_map: ForwardMap, k: int, steps: int
    ) -> Conditioning:
        """Test-time optimisation: Adam on the context NLL of each draw's code or decoder copy."""
        if steps <= 0:
            return cond
        b = k * context.num_signals
        params = {n: v.detach() for n, v in cond.params.items()}
        code = None if cond.code is None else cond.code.detach()
        tokens = None if cond.tokens is None else cond.tokens.detach()
        per_draw = {n for n, v in params.items() if v.dim() > self.decoder.param_ndim[n]}
        if self.config.tto_params == "latent" and code is not None:
            code = code.clone().requires_grad_(True)
            variables = [code]
        elif self.config.tto_params == "latent" and per_draw:
            variables = [params[n].requires_grad_(True) for n in per_draw]
        else:
            params = {
                n: (v if n in per_draw else repeat(v, "... -> b ...", b=b)).clone().requires_grad_(True)
                for n, v in params.items()
            }
            variables = list(params.values())
        local = None if cond.local is None else cond.local.detach()
        refined = Conditioning(params, code, tokens, local)
        scale = None
        if self.config.tto_scale == "frozen" and self.gaussian:
            scale = self.predict_observations(cond, context.queries, context_map, k)[1].detach()
        optimizer = torch.optim.Adam(variables, lr=self.config.tto_lr)
        with torch.enable_grad():
            for _ in range(steps):
                log_prob, _ = self.log_likelihood(refined, context, context_map, k, std=scale)
                optimizer.zero_grad(set_to_none=True)
                (-log_prob.sum()).backward()
                optimizer.step()
        return Conditioning(
            {n: v.detach() for n, v in params.items()},
            None if code is None else code.detach(),
            tokens,
            local,
        )

    @torch.no_grad()
    def settings(self, budget: Mapping[str, Any]) -> list[tuple[str, int | None]]:
        """One forward pass, and ``budget["tto_steps"]`` steps of test-time optimisation."""
        return [("one pass", 0), (f"TTO {budget['tto_steps']}", int(budget["tto_steps"]))]

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
        refined = self.refine(cond, context, context_map, k, steps)
        frozen = steps > 0 and self.gaussian and self.config.tto_scale != "adapted"
        return ConditionedProcess(self, refined, k, scale_cond=cond if frozen else None)


class ConditionedProcess(Adapted):
    """A neural process's conditioning (``K`` draws, refined): predictions reuse the same draws.

    ``scale_cond``, if given, is the unrefined conditioning whose decoded std the predictions use
    (``tto_scale="frozen"``): the mean comes from ``cond``, the std from the forward pass.
    """

    def __init__(
        self, process: NeuralProcess, cond: Conditioning, k: int, scale_cond: Conditioning | None = None
    ) -> None:
        self.process, self.cond, self.k, self.scale_cond = process, cond, k, scale_cond

    @torch.no_grad()
    def predict(self, queries: torch.Tensor, query_map: ForwardMap, *, variance: bool = True) -> Prediction:
        """Moments over the draws (law of total variance), in chunks of ``query_chunk`` queries."""
        process = self.process
        process.check_queries(queries, query_map)
        means, stds = [], []
        for chunk in queries.split(process.config.query_chunk, dim=1):
            mean, std = process.predict_observations(self.cond, chunk, query_map, self.k)
            if variance and self.scale_cond is not None:
                std = process.predict_observations(self.scale_cond, chunk, query_map, self.k)[1]
            means.append(mean)
            stds.append(std)
        mean = torch.cat(means, dim=2)  # (K, S, M, c)
        if not process.gaussian:
            p = torch.sigmoid(mean)
            avg = p.mean(0)
            return Prediction(avg, avg * (1 - avg), p)
        std = torch.cat(stds, dim=2)
        variance = mean.var(0, unbiased=False) + std.square().mean(0)
        return Prediction(mean.mean(0), variance, mean)


def build_process(
    name: str,
    field_config_or_field: FieldConfig | Field,
    kind: str,
    **options: Any,
) -> NeuralProcess:
    """Build a neural process ``cnp``, ``np``, ``anp`` or ``ponp`` over a decoder field for a data kind.

    Args:
        name: the model preset (see the module docstring's table).
        field_config_or_field: the signal's field (its head names the data: ``grey``/``rgb`` images,
            ``attenuation`` CT, ``occupancy``/``sdf`` shapes, ``radiance`` views); the decoder copies its
            architecture with an identity head and the process's conditioning.
        kind: a registered data kind (``image``, ``ct``, ``shape``, ``views``, ...): its spec gives
            the default tokenizer and the process defaults (:mod:`genfield.kinds`).
        **options: :class:`ProcessConfig` fields overriding the preset and the kind's defaults;
            ``by_kind={kind: {...}}`` holds further overrides that apply to one data kind only
            (so one method config serves every kind).

    Precedence: ``PRESETS[name]`` < ``get_kind(kind).process_defaults[name]`` < ``options`` <
    ``options["by_kind"][kind]``.
    """
    if name not in PRESETS:
        raise unknown_name("neural process", name, MODELS)
    defaults = get_kind(kind).process_defaults.get(name, {})
    options = {**defaults, **options_for_kind(options, kind, "process")}
    known = {f.name for f in fields(ProcessConfig)}
    unknown = set(options) - known
    if unknown:
        raise InputError(f"unknown process option(s) {sorted(unknown)}; valid: {sorted(known)}")
    if "weight_layers" in options:
        options["weight_layers"] = tuple(options["weight_layers"])
    if options.get("context_subsample") is not None:
        options["context_subsample"] = tuple(int(v) for v in options["context_subsample"])
    for key in ("tokenizer_options", "local_options"):
        if key in options:
            options[key] = dict(options[key] or {})
    config = ProcessConfig(model=name, **{**PRESETS[name], **options})
    field_config = (
        field_config_or_field.config if isinstance(field_config_or_field, Field) else field_config_or_field
    )
    return NeuralProcess(field_config, kind, config)
