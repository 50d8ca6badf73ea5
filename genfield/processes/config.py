"""The options of a neural process and the four named models as presets of them.

The four models are combinations of parts (the Neural-Process-Family's view):

========  ===========  =============  =========  ======  =============================
model     encoder      deterministic  attention  latent  conditioning of the decoder
========  ===========  =============  =========  ======  =============================
cnp       set (mean)   r              no         no      shift/FiLM from r
np        set (mean)   no             no         z       shift/FiLM from z
anp       transformer  r(x) by attn   yes        z       per-point shift/FiLM from [r(x), z]
ponp      transformer  r              no         z       shift/FiLM from [r, z], or weight tokens
========  ===========  =============  =========  ======  =============================

Precedence of options: ``PRESETS[name]`` < the kind's ``process_defaults[name]``
(:mod:`genfield.kinds`) < the options given < their ``by_kind[kind]`` entry.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from genfield.errors import InputError, unknown_name
from genfield.kinds import KINDS, get_kind, options_for_kind
from genfield.processes.subsampling import subsample_range

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
    tto_scale: str = "nuisance"  # "frozen" | "nuisance" | "adapted": the std under TTO (models.py)
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


def process_config(name: str, kind: str, **options: Any) -> ProcessConfig:
    """The config of model ``name`` on data ``kind`` with ``options`` (and ``by_kind``) over it."""
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
    if "context_subsample" in options:
        options["context_subsample"] = subsample_range(options["context_subsample"], "process")
    for key in ("tokenizer_options", "local_options"):
        if key in options:
            options[key] = dict(options[key] or {})
    return ProcessConfig(model=name, **{**PRESETS[name], **options})
