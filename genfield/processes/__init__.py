"""Neural processes: an encoder reads a signal's observations and conditions a shared field decoder.

``build_process("cnp" | "np" | "anp" | "ponp", field, kind, **options)`` gives a
:class:`~genfield.interface.Reconstructor`: train it with ``compute_gradients(batch)``, reconstruct new
signals with ``reconstruct(context, context_map, queries, query_map)``. The model
(:mod:`~genfield.processes.models`) orchestrates parts, each in its own module:
:mod:`~genfield.processes.tokenizers` (observations -> tokens), :mod:`~genfield.processes.encoders`
(set, transformer, cross-attention, latent), :mod:`~genfield.processes.conditioners` (modulations or
weight tokens), :mod:`~genfield.processes.local` (per-point features through the forward map's
adjoint), :mod:`~genfield.processes.likelihoods` (scores in observation space, through the forward
map), :mod:`~genfield.processes.objectives` (NLL, ELBO, ML), :mod:`~genfield.processes.subsampling`
and :mod:`~genfield.processes.refinement` (test-time optimisation). :mod:`~genfield.processes.config`
holds the options and presets, :mod:`~genfield.processes.parts` builds the parts from them.

``build_prior_residual(name, field, kind, collection=train)`` is the amortised method of
:mod:`~genfield.processes.prior_residual`: the linear Gaussian prior's posterior plus a learned residual.
"""

from genfield.processes.local import LOCAL_FEATURES, BackProjectionFeatures
from genfield.processes.models import (
    KIND_PRESETS,
    MODELS,
    PRESETS,
    NeuralProcess,
    ProcessConfig,
    build_process,
)
from genfield.processes.prior_residual import PriorResidual, build_prior_residual

__all__ = [
    "KIND_PRESETS",
    "LOCAL_FEATURES",
    "MODELS",
    "PRESETS",
    "BackProjectionFeatures",
    "NeuralProcess",
    "PriorResidual",
    "ProcessConfig",
    "build_prior_residual",
    "build_process",
]
