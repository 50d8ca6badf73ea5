"""The parts a :class:`~genfield.processes.models.NeuralProcess` orchestrates, built from its options.

:func:`validate_config` checks that the options name known parts and that the parts combine.

:func:`build_parts` is the one place that turns a :class:`ProcessConfig` into parts; a caller may
build :class:`ProcessParts` by hand instead (another conditioner, likelihood or encoder) and hand
them to the process. The parts are built in a fixed order (decoder, encoder, latent encoder,
conditioner), so a seeded build draws the same initial weights.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from genfield.errors import InputError, unknown_name
from genfield.fields.field import Field, FieldConfig
from genfield.fields.heads import head_channels
from genfield.forward import build_forward_map
from genfield.kinds import get_kind
from genfield.processes.conditioners import CONDITIONERS, ModulationConditioner, WeightTokenConditioner
from genfield.processes.config import ProcessConfig
from genfield.processes.encoders import LatentEncoder, SetEncoder, TokenTransformer
from genfield.processes.likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    GaussianLikelihood,
    build_likelihood,
)
from genfield.processes.subsampling import subsample_range
from genfield.processes.tokenizers import build_tokenizer


@dataclass
class ProcessParts:
    """A decoder field and the parts that read a context, condition the decoder and score it."""

    decoder: Field  # identity head; outputs the signal channels then the likelihood's scale channels
    tokenizer: Any  # observations -> tokens (S, T, f), with ``unit_size`` (processes/tokenizers.py)
    encoder: SetEncoder | TokenTransformer | nn.Module
    latent: LatentEncoder | None  # q(z | tokens), or None for a deterministic model
    conditioner: ModulationConditioner | WeightTokenConditioner
    likelihood: GaussianLikelihood | BernoulliLikelihood
    signal_channels: int  # channels of the signal (the field's head)
    obs_channels: int  # channels of one measurement of it (the kind's forward map)


def validate_config(kind: str, config: ProcessConfig) -> None:
    """Raise :class:`InputError` for an unknown kind or option value, or parts that do not combine."""
    get_kind(kind)  # an unknown kind raises, listing the registered ones
    checks = {
        "encoder": (config.encoder, ("set", "transformer")),
        "objective": (config.objective, ("elbo", "ml")),
        "proposal": (config.proposal, ("posterior", "prior")),
        "conditioning": (config.conditioning, tuple(CONDITIONERS)),
        "likelihood": (config.likelihood, ("auto", *LIKELIHOODS)),
        "tto_params": (config.tto_params, ("latent", "decoder")),
        "tto_scale": (config.tto_scale, ("frozen", "nuisance", "adapted")),
    }
    for key, (value, valid) in checks.items():
        if value not in valid:
            raise unknown_name(f"process {key}", value, valid)
    CONDITIONERS[config.conditioning].check(config)
    subsample_range(config.context_subsample, "process")
    if not (config.deterministic or config.latent_dim or config.attention):
        raise InputError("process needs a deterministic path, a latent path or attention")
    if config.max_tokens < 1 or config.train_samples < 1:
        raise InputError("process max_tokens and train_samples must be >= 1")


def measurement_channels(kind: str, signal_channels: int) -> int:
    """Channels of one measurement of a ``signal_channels`` field, asked of the kind's forward map."""
    return build_forward_map(get_kind(kind).forward_map).out_channels(signal_channels)


def build_parts(field_config: FieldConfig, kind: str, config: ProcessConfig) -> ProcessParts:
    """The parts of a process with ``config`` over a decoder like ``field_config``, on data ``kind``."""
    signal_channels = head_channels(field_config.head, field_config.out_dim)
    obs_channels = measurement_channels(kind, signal_channels)
    likelihood = build_likelihood(config.likelihood, field_config.head, obs_channels, config.min_std)
    conditioner_type = CONDITIONERS[config.conditioning]
    decoder = Field(
        replace(
            field_config,
            head="identity",
            out_dim=signal_channels + likelihood.scale_channels,
            modulation=conditioner_type.decoder_modulation[config.conditioning],
            latent_dim=0,
        )
    )
    tokenizer = build_tokenizer(
        config.tokenizer or get_kind(kind).tokenizer,
        field_config.in_dim,
        obs_channels,
        **config.tokenizer_options,
    )
    width, f = config.width, tokenizer.feature_dim
    if config.encoder == "set":
        encoder = SetEncoder(f, width, depth=config.depth + 1)
    else:
        encoder = TokenTransformer(f, width, depth=config.depth, heads=config.heads)
    latent = LatentEncoder(width, config.latent_dim) if config.latent_dim else None
    conditioner = conditioner_type(decoder, config, kind, field_config.in_dim, obs_channels)
    return ProcessParts(
        decoder, tokenizer, encoder, latent, conditioner, likelihood, signal_channels, obs_channels
    )
