"""The multiresolution hash-grid encoding of Instant-NGP (Müller et al. 2022), with two backends.

``backend="tcnn"`` wraps ``tinycudann.Encoding`` (fused CUDA kernels). ``backend="torch"`` is a pure
PyTorch implementation of the *same function*: it takes the same config dict, lays out its parameters
the same way and uses the same spatial hash, so a table trained with one backend can be loaded into
the other. The torch backend is also the one that meta-learning needs: it runs on any device, inside
``torch.func.vmap`` (a leading signal dimension on the table) and supports double backward.

The function (tiny-cuda-nn ``include/tiny-cuda-nn/encodings/grid.h`` and ``common_device.h``:
``grid_scale``, ``grid_resolution``, ``pos_fract``, ``grid_index``, ``coherent_prime_hash``, and the
``GridEncodingTemplated`` constructor), for an input ``x`` in [0, 1]^d and level ``l = 0 .. L-1``:

1. Scale and resolution, rounded to float32 at every step as tcnn's host code computes them (its
   kernels recompute them with CUDA's ``exp2f``, which could differ in the last bit)::

       scale_l = exp2f(l * log2f(per_level_scale)) * base_resolution - 1
       res_l   = ceil(scale_l) + 1            # grid vertices per axis

   The ``- 1`` makes ``base_resolution`` count vertices, not cells (paper eq. 2-3 use
   ``N_l = floor(N_min * b^l)``; tcnn departs from it here).
2. Position (``pos_fract``, linear interpolation): ``p = x * scale_l + 0.5``; the cell corner is
   ``c = floor(p)`` and the local coordinate ``t = p - c``. The ``+ 0.5`` staggers the levels
   (paper appendix A); it lets ``c + 1`` reach ``res_l``, i.e. one past the last vertex, which dense
   levels wrap around (below) exactly as tcnn does.
3. Table size per level (constructor): ``T_l = min(next_multiple(res_l^d, 8), 2^log2_hashmap_size)``;
   levels are concatenated, level ``l`` starting at row ``offset_l = T_0 + ... + T_{l-1}``. The one
   parameter tensor has shape ``(sum_l T_l, n_features_per_level)`` (tcnn's flat ``params`` is this
   tensor in C order) and is initialised uniform in [-1e-4, 1e-4].
4. Index of a vertex ``v`` (``grid_index``): if ``res_l^d <= T_l`` the level is *dense* and
   ``i = v_0 + v_1 res_l + v_2 res_l^2`` (dimension 0 varies fastest); otherwise it is *hashed*
   and ``i = (v_0 * 1) xor (v_1 * 2654435761) xor (v_2 * 805459861)`` in uint32 arithmetic (paper
   eq. 4; tcnn's default ``"CoherentPrime"`` hash). Either way the row is ``offset_l + i mod T_l``.
   Here the hash is computed in int64, where every product stays below 2^56 (resolutions are
   capped at 2^24), and masked with ``T_l - 1``: a hashed level has ``T_l = 2^log2_hashmap_size``
   <= 2^31 rows, so the mask is at once the truncation to uint32 and the modulo. Resolutions grow
   with the level, so the dense levels are the coarsest ones and the hashed ones follow.
5. d-linear interpolation of the ``2^d`` cell vertices, with weight ``prod_k (t_k or 1 - t_k)``.
6. Output: the ``L * n_features_per_level`` features, level-major (level 0's features first).

Inputs outside [0, 1] are clamped to [0, 1] by both backends (tcnn itself does not clamp: it wraps
the integer vertex coordinates, a different but equally arbitrary function), so the two backends agree
everywhere and no index is ever out of range. The gradient with respect to a clamped coordinate is
zero. Remaining differences from tcnn are floating point only: tcnn uses ``fmaf`` for ``p`` (one
rounding instead of two) and half-precision tables by default (this wrapper asks for float32).

tcnn's torch bindings implement the backward of the input gradient (enough for eikonal losses) but
not second derivatives of the parameter gradient, which MAML-style meta-learning needs; hence
``supports_double_backward`` is False for the tcnn backend.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from einops import rearrange
from torch import nn

from genfield.errors import InputError, unknown_name

HASHGRID_DEFAULTS: dict[str, Any] = {
    "otype": "HashGrid",
    "n_levels": 16,
    "n_features_per_level": 2,
    "log2_hashmap_size": 19,
    "base_resolution": 16,
    "per_level_scale": 1.5,
}
BACKENDS = ("auto", "torch", "tcnn")
PRIMES = (1, 2654435761, 805459861)
MAX_RESOLUTION = 2**24  # float32 inputs cannot resolve finer cells; keeps the int64 hash exact
TCNN_INSTALL = "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch"


# ---------------------------------------------------------------------------------------------------
# Config and backend resolution


def _check_int(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not low <= value <= high:
        raise InputError(f"hash grid config {key}={value!r}: expected an integer in [{low}, {high}]")
    return int(value)


def validate_config(config: dict | None) -> dict[str, Any]:
    """Fill ``config`` from :data:`HASHGRID_DEFAULTS` and check every key and value."""
    config = dict(config or {})
    unknown = sorted(set(config) - set(HASHGRID_DEFAULTS))
    if unknown:
        raise InputError(
            f"unknown hash grid config key {unknown[0]!r}; valid keys: {', '.join(HASHGRID_DEFAULTS)}"
        )
    cfg = {**HASHGRID_DEFAULTS, **config}
    if not isinstance(cfg["otype"], str) or cfg["otype"].lower() != "hashgrid":
        raise InputError(f"hash grid config otype={cfg['otype']!r}: expected 'HashGrid'")
    cfg["otype"] = "HashGrid"
    cfg["n_levels"] = _check_int("n_levels", cfg["n_levels"], 1, 128)
    cfg["log2_hashmap_size"] = _check_int("log2_hashmap_size", cfg["log2_hashmap_size"], 1, 31)
    cfg["base_resolution"] = _check_int("base_resolution", cfg["base_resolution"], 1, MAX_RESOLUTION)
    nf = cfg["n_features_per_level"]
    if isinstance(nf, bool) or nf not in (1, 2, 4, 8):
        raise InputError(f"hash grid config n_features_per_level={nf!r}: expected 1, 2, 4 or 8")
    cfg["n_features_per_level"] = int(nf)
    pls = cfg["per_level_scale"]
    if isinstance(pls, bool) or not isinstance(pls, int | float) or not 1.0 <= pls < math.inf:
        raise InputError(f"hash grid config per_level_scale={pls!r}: expected a number >= 1")
    cfg["per_level_scale"] = float(pls)
    return cfg


def tcnn_encoding_config(config: dict) -> dict:
    """The ``encoding_config`` dict for ``tinycudann.Encoding`` that computes this encoding.

    Every key is written out, so tcnn's own defaults (``per_level_scale`` 2.0 where ours is 1.5)
    never apply, and linear interpolation with the coherent prime hash is pinned explicitly.
    """
    cfg = validate_config(config)
    return {
        "otype": "HashGrid",
        "n_levels": cfg["n_levels"],
        "n_features_per_level": cfg["n_features_per_level"],
        "log2_hashmap_size": cfg["log2_hashmap_size"],
        "base_resolution": cfg["base_resolution"],
        "per_level_scale": cfg["per_level_scale"],
        "interpolation": "Linear",
        "hash": "CoherentPrime",
    }


@functools.lru_cache(maxsize=1)
def _tcnn_module() -> Any:
    """``tinycudann`` if it imports (it needs CUDA at import time), else ``None``."""
    try:
        import tinycudann
    except (ImportError, OSError, RuntimeError):
        return None
    return tinycudann


def resolve_backend(name: str) -> str:
    """``"torch"`` or ``"tcnn"``: ``"auto"`` picks tcnn when it imports and CUDA is available."""
    if name not in BACKENDS:
        raise unknown_name("hash grid backend", name, BACKENDS)
    if name == "torch":
        return "torch"
    usable = torch.cuda.is_available() and _tcnn_module() is not None
    if name == "auto":
        return "tcnn" if usable else "torch"
    if not usable:
        raise InputError(
            "hash grid backend 'tcnn' needs tinycudann and a CUDA device; install it on a CUDA "
            f"machine with `{TCNN_INSTALL}`, or use backend='torch', which computes the same function"
        )
    return "tcnn"


# ---------------------------------------------------------------------------------------------------
# Level geometry


def level_scale(level: int, base_resolution: int, per_level_scale: float) -> float:
    """``exp2f(level * log2f(per_level_scale)) * base_resolution - 1`` with float32 rounding.

    Each step is computed in double and rounded to float32, which reproduces the correctly rounded
    float32 operations of tcnn's host code (``grid_scale``); the resolution ``ceil(scale) + 1``
    depends on the last bit when ``scale`` is an integer (e.g. 16 * 1.5^4 - 1 = 80).
    """
    f32 = np.float32
    log2_scale = f32(math.log2(f32(per_level_scale)))
    exponent = f32(float(f32(level)) * float(log2_scale))
    return float(f32(float(f32(math.exp2(float(exponent)))) * base_resolution) - f32(1.0))


def level_geometry(in_dim: int, cfg: dict) -> dict[str, list]:
    """Per-level ``scale``, ``resolution``, table ``size``, row ``offset`` and ``hashed`` flag."""
    out: dict[str, list] = {k: [] for k in ("scale", "resolution", "size", "offset", "hashed")}
    offset = 0
    for level in range(cfg["n_levels"]):
        scale = level_scale(level, cfg["base_resolution"], cfg["per_level_scale"])
        resolution = math.ceil(scale) + 1
        if resolution > MAX_RESOLUTION:
            raise InputError(
                f"hash grid config gives level {level} a resolution of {resolution} > 2^24 "
                f"(n_levels={cfg['n_levels']}, per_level_scale={cfg['per_level_scale']})"
            )
        dense = resolution**in_dim
        size = min(-(-dense // 8) * 8, 2 ** cfg["log2_hashmap_size"])
        out["scale"].append(scale)
        out["resolution"].append(resolution)
        out["size"].append(size)
        out["offset"].append(offset)
        out["hashed"].append(dense > size)
        offset += size
    return out


# ---------------------------------------------------------------------------------------------------
# The torch backend


def _over_vertices(choices: torch.Tensor, op: Callable) -> torch.Tensor:
    """Combine per-dimension choices ``(..., d, 2)`` into ``(..., 2^d)`` values, one per vertex.

    Vertex ``v`` takes choice ``(v >> k) & 1`` in dimension ``k``; the ``2^d`` combinations are
    built by broadcasting, one dimension at a time (d <= 3), never per point.
    """
    out = choices[..., 0, :]
    for k in range(1, choices.shape[-2]):
        out = op(out[..., None, :], choices[..., k, :, None]).flatten(-2)
    return out


def hashgrid_indices_and_weights(
    x: torch.Tensor,
    scales: torch.Tensor,
    multipliers: torch.Tensor,
    sizes: torch.Tensor,
    offsets: torch.Tensor,
    n_dense: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Table rows and d-linear weights ``(..., L, 2^d)`` of the vertices of each level's cell.

    Args:
        x: points ``(..., d)``; clamped to [0, 1].
        scales: ``(L,)`` per-level scales (``pos = x * scale + 0.5``).
        multipliers: ``(L, d)``: the strides ``res^k`` of a dense level, the primes of a hashed one,
            so that one product ``vertex_k * multiplier_k`` serves both.
        sizes, offsets: ``(L,)`` rows of each level's table and where they start.
        n_dense: how many of the (coarsest) levels are dense; the rest are hashed, and their size
            is ``2^log2_hashmap_size``.

    A dense index is the sum of the products, wrapped modulo the level size; a hashed index is
    their xor, masked with ``size - 1``, which is at once the truncation to uint32 (``size`` is at
    most 2^31) and the modulo.
    """
    pos = x.clamp(0.0, 1.0)[..., None, :] * scales[:, None] + 0.5  # (..., L, d)
    corner = torch.floor(pos)
    t = pos - corner
    factor = corner.long() * multipliers  # (..., L, d), below 2^56 as resolutions are <= 2^24
    choices = torch.stack([factor, factor + multipliers], dim=-1)  # (..., L, d, 2)
    weight = _over_vertices(torch.stack([1.0 - t, t], dim=-1), torch.mul)

    parts = []
    if n_dense > 0:
        dense = _over_vertices(choices[..., :n_dense, :, :], torch.add)
        parts.append(dense % sizes[:n_dense, None])
    if n_dense < scales.shape[0]:
        hashed = _over_vertices(choices[..., n_dense:, :, :], torch.bitwise_xor)
        parts.append(torch.bitwise_and(hashed, sizes[n_dense:, None] - 1))
    rows = torch.cat(parts, dim=-2) + offsets[:, None]
    return rows, weight


class HashGridEncoding(nn.Module):
    """Multiresolution hash-grid encoding of points in [0, 1]^d (d = 2 or 3) to ``L * F`` features.

    Args:
        in_dim: 2 or 3.
        config: tiny-cuda-nn encoding config (keys of :data:`HASHGRID_DEFAULTS`; missing keys take
            those defaults).
        backend: ``"auto"`` (tcnn when available, else torch), ``"torch"`` or ``"tcnn"``.
        seed: seed of the uniform [-1e-4, 1e-4] table initialisation (``None``: torch's global RNG
            for the torch backend, tcnn's default 1337 for tcnn).

    The torch backend's one parameter is ``params``, shape ``(n_entries, n_features_per_level)``;
    the tcnn backend's is ``tcnn_module.params``, the same values flattened. :attr:`table` is the
    ``(n_entries, n_features_per_level)`` view for both, e.g. to copy a table across backends.
    Level geometry (plain lists, for inspection and tests): ``resolutions``, ``level_sizes``,
    ``level_offsets``, ``level_hashed``; ``n_dense`` is the number of dense (coarsest) levels.

    The torch backend materialises ``L * 2^d`` int64 row indices and ``L * 2^d * F`` gathered
    features per point (a few KiB per 3-D point with the defaults, with the intermediates);
    evaluate very large point sets in chunks. The tcnn backend needs a CUDA device, a float32
    module and cannot run under ``vmap`` (its table has no signal dimension).
    """

    input_range = (0.0, 1.0)

    def __init__(
        self,
        in_dim: int,
        config: dict | None = None,
        backend: str = "auto",
        seed: int | None = None,
    ) -> None:
        super().__init__()
        if isinstance(in_dim, bool) or in_dim not in (2, 3):
            raise InputError(f"hash grid in_dim={in_dim!r}: expected 2 or 3")
        self.config = validate_config(config)
        self.backend = resolve_backend(backend)
        self.in_dim = in_dim
        self.n_features_per_level = self.config["n_features_per_level"]
        self.out_dim = self.config["n_levels"] * self.n_features_per_level
        geometry = level_geometry(in_dim, self.config)
        self.resolutions = geometry["resolution"]
        self.level_sizes = geometry["size"]
        self.level_offsets = geometry["offset"]
        self.level_hashed = geometry["hashed"]
        self.n_dense = self.level_hashed.count(False)
        assert not any(self.level_hashed[: self.n_dense])  # resolutions never decrease
        self.n_entries = sum(self.level_sizes)
        self.supports_double_backward = self.backend == "torch"

        if self.backend == "tcnn":
            tcnn = _tcnn_module()
            self.tcnn_module = tcnn.Encoding(
                in_dim,
                tcnn_encoding_config(self.config),
                seed=1337 if seed is None else seed,
                dtype=torch.float32,
            )
            return

        generator = None if seed is None else torch.Generator().manual_seed(seed)
        table = torch.rand(self.n_entries, self.n_features_per_level, generator=generator)
        self.params = nn.Parameter(table * 2e-4 - 1e-4)
        primes = torch.tensor(PRIMES[:in_dim], dtype=torch.long)
        multipliers = [
            primes if hashed else torch.tensor([res**k for k in range(in_dim)], dtype=torch.long)
            for res, hashed in zip(geometry["resolution"], geometry["hashed"], strict=True)
        ]
        buffers = {
            "scales": torch.tensor(geometry["scale"], dtype=torch.float32),
            "multipliers": torch.stack(multipliers),
            "sizes": torch.tensor(geometry["size"], dtype=torch.long),
            "offsets": torch.tensor(geometry["offset"], dtype=torch.long),
        }
        for name, value in buffers.items():  # derived from the config: not saved in state_dict
            self.register_buffer(name, value, persistent=False)

    @property
    def table(self) -> torch.Tensor:
        """The parameter table as ``(n_entries, n_features_per_level)``, for either backend."""
        if self.backend == "tcnn":
            return self.tcnn_module.params.view(self.n_entries, self.n_features_per_level)
        return self.params

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode ``x`` ``(..., in_dim)`` in [0, 1] (clamped) into ``(..., out_dim)``."""
        if x.shape[-1] != self.in_dim:
            raise InputError(f"hash grid input has {x.shape[-1]} coordinates, expected {self.in_dim}")
        if self.backend == "tcnn":
            return self._forward_tcnn(x)
        compute = torch.promote_types(x.dtype, torch.float32)
        rows, weight = hashgrid_indices_and_weights(
            x.to(compute),
            self.scales.to(compute),
            self.multipliers,
            self.sizes,
            self.offsets,
            self.n_dense,
        )
        # index_select (backward: index_add) is ~2x faster than advanced indexing on CPU and has
        # a vmap batching rule for a table with a leading signal dimension
        features = self.params.index_select(0, rows.flatten()).view(*rows.shape, -1)
        out = torch.einsum("...v,...vf->...f", weight.to(features.dtype), features)
        return rearrange(out, "... l f -> ... (l f)")

    def _forward_tcnn(self, x: torch.Tensor) -> torch.Tensor:
        flat = rearrange(x, "... d -> (...) d").clamp(0.0, 1.0).float().contiguous()
        out = self.tcnn_module(flat)
        return out.reshape(*x.shape[:-1], self.out_dim)

    def extra_repr(self) -> str:
        return f"in_dim={self.in_dim}, backend={self.backend!r}, config={self.config}"
