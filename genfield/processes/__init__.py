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

__all__ = [
    "KIND_PRESETS",
    "LOCAL_FEATURES",
    "MODELS",
    "PRESETS",
    "BackProjectionFeatures",
    "NeuralProcess",
    "ProcessConfig",
    "build_process",
]
