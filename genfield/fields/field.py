"""The functional field: encoding + network + output head, called as ``field(params, coords)``.

A :class:`Field` is a *pure function* of (parameters, coordinates). ``field.init(seed)`` returns its
parameters as a dict of tensors; ``field(params, coords)`` evaluates it. When some parameters carry a
leading signal dimension ``S`` (a meta-batch of signals, or per-signal latents beside shared weights)
the call is vectorised with ``torch.func.vmap`` over exactly those parameters, so one call evaluates a
whole meta-batch with no Python loop. The call composes with ``torch.func.grad``, ``jvp`` and ``vmap``
(the torch hash-grid backend included; tiny-cuda-nn's does not support double backward or vmap).

Coordinates live in [-1, 1]^d (:mod:`genfield.fields.coords`); encodings that expect [0, 1]^d (the
hash grid) receive the mapped coordinates.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from genfield.errors import InputError, unknown_name
from genfield.fields.coords import to_unit_cube
from genfield.fields.encodings import FourierFeatures, IdentityEncoding, PositionalEncoding
from genfield.fields.heads import apply_head, head_channels
from genfield.fields.networks import CoordinateMLP

Params = dict[str, torch.Tensor]
ENCODINGS = ("identity", "positional", "fourier", "hashgrid")
NETWORKS = ("relu", "siren")


@dataclass
class FieldConfig:
    """Everything that defines a field's architecture (one config object per component)."""

    in_dim: int = 2
    head: str = "rgb"
    out_dim: int | None = None  # only for the identity head
    encoding: str = "identity"
    network: str = "siren"
    hidden: int = 64
    n_layers: int = 3
    omega0: float = 30.0
    n_octaves: int = 8
    fourier_features: int = 128
    fourier_sigma: float = 10.0
    hashgrid: dict[str, Any] = field(default_factory=dict)
    backend: str = "auto"
    modulation: str = "none"
    latent_dim: int = 0
    encoding_seed: int = 0


#: The four named field types of the CLI (``--field`` / ``field=``), as config presets.
FIELD_PRESETS: dict[str, dict[str, Any]] = {
    "siren": {"encoding": "identity", "network": "siren", "hidden": 64, "n_layers": 3},
    "relu_pe": {"encoding": "positional", "network": "relu", "hidden": 128, "n_layers": 3},
    "fourier": {"encoding": "fourier", "network": "relu", "hidden": 128, "n_layers": 3},
    "hashgrid": {
        "encoding": "hashgrid",
        "network": "relu",
        "hidden": 64,
        "n_layers": 2,
        "hashgrid": {"n_levels": 8, "log2_hashmap_size": 14, "base_resolution": 4},
    },
}


def build_encoding(config: FieldConfig) -> nn.Module:
    """The encoding module named by ``config.encoding``."""
    if config.encoding == "identity":
        return IdentityEncoding(config.in_dim)
    if config.encoding == "positional":
        return PositionalEncoding(config.in_dim, config.n_octaves)
    if config.encoding == "fourier":
        return FourierFeatures(
            config.in_dim, config.fourier_features, config.fourier_sigma, config.encoding_seed
        )
    if config.encoding == "hashgrid":
        from genfield.fields.hashgrid import HashGridEncoding

        return HashGridEncoding(
            config.in_dim, config.hashgrid, config.backend, seed=config.encoding_seed
        )
    raise unknown_name("encoding", config.encoding, ENCODINGS)


class FieldModule(nn.Module):
    """The stateful module behind a :class:`Field`; its parameters are what ``Field.init`` returns."""

    def __init__(self, config: FieldConfig) -> None:
        super().__init__()
        if config.network not in NETWORKS:
            raise unknown_name("network", config.network, NETWORKS)
        self.config = config
        self.encoding = build_encoding(config)
        self.network = CoordinateMLP(
            self.encoding.out_dim,
            head_channels(config.head, config.out_dim),
            hidden=config.hidden,
            n_layers=config.n_layers,
            activation="sine" if config.network == "siren" else "relu",
            omega0=config.omega0,
            modulation=config.modulation,
        )
        self.unit_inputs = tuple(getattr(self.encoding, "input_range", (-1, 1))) == (0.0, 1.0)
        if config.latent_dim > 0:
            if config.modulation == "none":
                raise InputError("field.latent_dim > 0 needs field.modulation 'shift' or 'film'")
            n_layers, width = self.network.modulation_shape
            self.latent = nn.Parameter(torch.zeros(config.latent_dim))
            self.latent_to_modulation = nn.Linear(config.latent_dim, n_layers * width)

    def forward(
        self, coords: torch.Tensor, modulations: torch.Tensor | None = None
    ) -> torch.Tensor:
        if modulations is None and self.config.latent_dim > 0:
            modulations = self.latent_to_modulation(self.latent).unflatten(
                -1, self.network.modulation_shape
            )
        encoded = self.encoding(to_unit_cube(coords) if self.unit_inputs else coords)
        return apply_head(self.config.head, self.network(encoded, modulations))


class Field:
    """A neural field as a pure function of a parameter dict and coordinates.

    Example::

        field = build_field("siren", in_dim=2, head="rgb")
        params = field.init(seed=0)                 # {name: tensor}
        rgb = field(params, coords)                 # coords (N, 2) -> (N, 3)
        batch = field.init_batch(8, seed=0)         # every tensor gets a leading signal dim of 8
        rgb = field(batch, coords_batch)            # (8, N, 2) -> (8, N, 3), one vmapped call
    """

    def __init__(self, config: FieldConfig) -> None:
        self.config = config
        self.module = FieldModule(config)
        self.param_ndim = {name: p.dim() for name, p in self.module.named_parameters()}

    # -- parameters ---------------------------------------------------------------------------
    @property
    def out_channels(self) -> int:
        return head_channels(self.config.head, self.config.out_dim)

    @property
    def supports_double_backward(self) -> bool:
        return getattr(self.module.encoding, "supports_double_backward", True)

    @property
    def supports_vmap(self) -> bool:
        return getattr(self.module.encoding, "backend", "torch") != "tcnn"

    @property
    def modulation_shape(self) -> tuple[int, int]:
        return self.module.network.modulation_shape

    @property
    def hidden_weight_names(self) -> tuple[str, ...]:
        """Parameter names of the hidden layers' ``(out, in)`` weight matrices, first to last: what
        a weight-token conditioner (TransINR) modulates per signal."""
        names = {id(p): name for name, p in self.module.named_parameters()}
        return tuple(names[id(layer.weight)] for layer in self.module.network.hidden_layers)

    def init(self, seed: int = 0, device: torch.device | str | None = None) -> Params:
        """Fresh parameters drawn with ``seed`` (independent of the global random state)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            module = FieldModule(self.config)
        return {name: p.detach().to(device) for name, p in module.named_parameters()}

    def init_batch(self, num_signals: int, seed: int = 0, device=None) -> Params:
        """Independent random initialisations for ``num_signals`` signals (seeds seed..seed+S-1)."""
        draws = [self.init(seed + i, device) for i in range(num_signals)]
        return {name: torch.stack([d[name] for d in draws]) for name in draws[0]}

    def batch_dims(self, params: Params) -> dict[str, int | None]:
        """For each parameter, 0 if it carries a leading signal dimension, else None."""
        dims = {}
        for name, value in params.items():
            if name not in self.param_ndim:
                raise InputError(
                    f"unknown field parameter {name!r}; valid: {sorted(self.param_ndim)}"
                )
            dims[name] = 0 if value.dim() == self.param_ndim[name] + 1 else None
        return dims

    def to(self, device: torch.device | str) -> Field:
        self.module.to(device)
        return self

    # -- evaluation ---------------------------------------------------------------------------
    def _single(
        self, params: Params, coords: torch.Tensor, modulations: torch.Tensor | None
    ) -> torch.Tensor:
        return functional_call(self.module, params, (coords, modulations))

    def __call__(
        self, params: Params, coords: torch.Tensor, modulations: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Evaluate the field at ``coords``.

        Args:
            params: a (possibly partial) parameter dict; entries with one more dimension than the
                module's parameter are per signal and vectorised over.
            coords: ``(..., M, d)``; with per-signal parameters, ``(S, M, d)`` (or ``(M, d)`` shared).
            modulations: optional external modulations (neural-process conditioning), per signal
                ``(S, n_layers, m)`` or per point ``(S, M, n_layers, m)``.
        """
        dims = self.batch_dims(params)
        if all(d is None for d in dims.values()):
            return self._single(params, coords, modulations)
        coord_dim = 0 if coords.dim() >= 3 else None
        mod_dim = None if modulations is None else 0
        if not self.supports_vmap:  # tiny-cuda-nn kernels cannot be vmapped: loop over signals
            num = next(v.shape[0] for k, v in params.items() if dims[k] == 0)
            return torch.stack(
                [
                    self._single(
                        {k: v[s] if dims[k] == 0 else v for k, v in params.items()},
                        coords[s] if coord_dim == 0 else coords,
                        None if modulations is None else modulations[s],
                    )
                    for s in range(num)
                ]
            )
        batched = vmap(self._single, in_dims=(dims, coord_dim, mod_dim), randomness="different")
        return batched(params, coords, modulations)

    def bind(self, params: Params, modulations: torch.Tensor | None = None) -> Callable:
        """The closure ``coords -> field(params, coords)`` that forward maps take as ``field_fn``."""
        return lambda coords: self(params, coords, modulations)

    def describe(self) -> dict[str, Any]:
        return asdict(self.config)


def field_config(name: str = "siren", **overrides: Any) -> FieldConfig:
    """A :class:`FieldConfig` from a preset name (``siren``, ``relu_pe``, ``fourier``, ``hashgrid``)."""
    if name not in FIELD_PRESETS:
        raise unknown_name("field", name, list(FIELD_PRESETS))
    preset = dict(FIELD_PRESETS[name])
    hashgrid = {**preset.pop("hashgrid", {}), **overrides.pop("hashgrid", {})}
    unknown = set(overrides) - set(FieldConfig.__dataclass_fields__)
    if unknown:
        raise InputError(f"unknown field option(s) {sorted(unknown)}")
    return replace(FieldConfig(), **{**preset, **overrides, "hashgrid": hashgrid})


def build_field(name: str = "siren", **overrides: Any) -> Field:
    """Build a field from a preset name and overrides, e.g. ``build_field("siren", head="grey")``."""
    return Field(field_config(name, **overrides))
