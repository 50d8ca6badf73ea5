"""Neural processes: an encoder reads a signal's observations and conditions a shared field decoder.

``build_process("cnp" | "np" | "anp" | "ponp", field, kind, **options)`` gives a
:class:`~genfield.interface.Reconstructor`: train it with ``compute_gradients(batch)``, reconstruct new
signals with ``reconstruct(context, context_map, queries, query_map)``. Parts:
:mod:`~genfield.processes.tokenizers` (observations -> tokens), :mod:`~genfield.processes.encoders`
(set, transformer, cross-attention, latent), :mod:`~genfield.processes.local` (per-point features
through the forward map's adjoint), :mod:`~genfield.processes.likelihoods` (scores in observation
space, through the forward map) and :mod:`~genfield.processes.models`.
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
