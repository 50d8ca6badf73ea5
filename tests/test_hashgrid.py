"""Tests of the hash-grid encoding: the torch backend against a slow per-point reference."""

from __future__ import annotations

import ctypes
import ctypes.util
import itertools
import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.func import functional_call, grad, vmap

from genfield.errors import InputError
from genfield.fields import hashgrid
from genfield.fields.hashgrid import (
    HASHGRID_DEFAULTS,
    HashGridEncoding,
    hashgrid_indices_and_weights,
    level_scale,
    resolve_backend,
    tcnn_encoding_config,
)

# Coarse levels dense, fine levels hashed. 2-D: resolutions 3, 5, 9, 17, 33 with 2^8 = 256 rows:
# 9 rows pad to 16, 289 > 256 hashes. 3-D: 1.7x growth, 512 rows.
CONFIG_2D = {
    "n_levels": 5,
    "n_features_per_level": 2,
    "log2_hashmap_size": 8,
    "base_resolution": 3,
    "per_level_scale": 1.8,
}
CONFIG_3D = {
    "n_levels": 4,
    "n_features_per_level": 4,
    "log2_hashmap_size": 9,
    "base_resolution": 3,
    "per_level_scale": 1.7,
}
# 2-D case where a level's dense grid exactly fills the table: resolution 16, 16^2 = 2^8 rows.
CONFIG_EXACT = {
    "n_levels": 4,
    "n_features_per_level": 1,
    "log2_hashmap_size": 8,
    "base_resolution": 4,
    "per_level_scale": 2.0,
}


# ----------------------------------------------------------------------------------------------
# Independent reference: the Instant-NGP paper's algorithm with tiny-cuda-nn's conventions, one
# point, one level, one corner at a time, Python floats and ints.


def _libm():
    path = ctypes.util.find_library("m")
    if path is None:
        return None
    lib = ctypes.CDLL(path)
    for name in ("exp2f", "log2f"):
        getattr(lib, name).restype = ctypes.c_float
        getattr(lib, name).argtypes = [ctypes.c_float]
    return lib


LIBM = _libm()


def c_float(v: float) -> float:
    return ctypes.c_float(v).value


def reference_scale(level: int, base: int, per_level_scale: float) -> float:
    """tcnn's host code: exp2f(level * log2f(per_level_scale)) * base - 1.0f, via the C library."""
    if LIBM is None:
        pytest.skip("no C math library to reproduce float32 exp2f")
    exponent = c_float(c_float(float(level)) * LIBM.log2f(per_level_scale))
    return c_float(c_float(LIBM.exp2f(exponent) * c_float(float(base))) - 1.0)


def reference_encode(points: list[list[float]], table: list[list[float]], d: int, cfg: dict):
    primes = [1, 2654435761, 805459861]
    outputs = []
    for x in points:
        features = []
        offset = 0
        for level in range(cfg["n_levels"]):
            scale = reference_scale(level, cfg["base_resolution"], cfg["per_level_scale"])
            res = math.ceil(scale) + 1
            size = min(((res**d + 7) // 8) * 8, 2 ** cfg["log2_hashmap_size"])
            pos = [min(max(xi, 0.0), 1.0) * scale + 0.5 for xi in x]
            cell = [math.floor(p) for p in pos]
            frac = [p - c for p, c in zip(pos, cell, strict=True)]
            acc = [0.0] * cfg["n_features_per_level"]
            for bits in itertools.product((0, 1), repeat=d):
                vertex = [c + b for c, b in zip(cell, bits, strict=True)]
                weight = 1.0
                for b, t in zip(bits, frac, strict=True):
                    weight *= t if b else 1.0 - t
                if res**d <= size:  # dense, row-major with dimension 0 fastest
                    index = sum(v * res**k for k, v in enumerate(vertex))
                else:  # spatial hash in uint32
                    index = 0
                    for v, p in zip(vertex, primes, strict=False):
                        index ^= (v * p) % 2**32
                row = table[offset + index % size]
                acc = [a + weight * r for a, r in zip(acc, row, strict=True)]
            features.extend(acc)
            offset += size
        outputs.append(features)
    return outputs


def random_table(enc: HashGridEncoding, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(enc.n_entries, enc.n_features_per_level, generator=gen, dtype=torch.float64)


# ----------------------------------------------------------------------------------------------


def test_level_scale_matches_c_float32():
    for base, pls in [(16, 1.5), (16, 2.0), (3, 1.7), (16, math.exp(math.log(2048 / 16) / 15))]:
        for level in range(16):
            assert level_scale(level, base, pls) == reference_scale(level, base, pls)
    assert level_scale(4, 16, 1.5) == 80.0  # float32 lands exactly on 80: resolution 81, not 82


def test_level_sizes_match_tcnn_own_test():
    # tiny-cuda-nn tests/test_grid.cu: "GridEncoding sanity checks"
    cfg = {
        "base_resolution": 32,
        "log2_hashmap_size": 16,
        "n_features_per_level": 2,
        "n_levels": 20,
        "per_level_scale": 1.5,
    }
    enc = HashGridEncoding(3, cfg, backend="torch")
    assert enc.level_sizes[:3] == [32**3, 65536, 65536]
    assert enc.level_offsets[:3] == [0, 32**3, 32**3 + 65536]
    assert enc.n_entries * enc.n_features_per_level == 2555904
    assert enc.out_dim == 40 and enc.table.shape == (enc.n_entries, 2)


@pytest.mark.parametrize(("d", "cfg"), [(2, CONFIG_2D), (3, CONFIG_3D), (2, CONFIG_EXACT)])
def test_matches_reference(d, cfg):
    enc = HashGridEncoding(d, cfg, backend="torch").double()
    hashed = enc.level_hashed
    assert any(hashed) and not all(hashed)
    table = random_table(enc)
    with torch.no_grad():
        enc.params.copy_(table)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(40, d, generator=gen, dtype=torch.float64)
    corners = torch.tensor(list(itertools.product((0.0, 1.0), repeat=d)), dtype=torch.float64)
    x = torch.cat([x, corners])  # x = 1 reaches one past the last vertex: dense levels wrap
    expected = torch.tensor(reference_encode(x.tolist(), table.tolist(), d, enc.config), dtype=torch.float64)
    got = enc(x)
    assert got.shape == (x.shape[0], enc.out_dim)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    # float32 end to end agrees up to float32 rounding
    got32 = enc.float()(x.float())
    torch.testing.assert_close(got32.double(), expected, rtol=0, atol=1e-4)


def test_dense_level_interpolates_linear_functions_exactly():
    # One dense level holding f(v) = v0 + 10 v1 at vertex v reproduces f at p = x * scale + 0.5.
    enc = HashGridEncoding(
        2,
        {"n_levels": 1, "n_features_per_level": 1, "base_resolution": 9, "log2_hashmap_size": 10},
        backend="torch",
    ).double()
    res = enc.resolutions[0]
    v0, v1 = torch.meshgrid(torch.arange(res), torch.arange(res), indexing="xy")
    values = (v0 + 10 * v1).flatten().double()  # row-major, dimension 0 fastest
    with torch.no_grad():
        enc.params.zero_()
        enc.params[: res * res, 0] = values
    x = torch.rand(50, 2, dtype=torch.float64) * 0.9  # stay inside the grid (no wraparound)
    p = x * enc.scales.double() + 0.5
    torch.testing.assert_close(enc(x)[:, 0], p[:, 0] + 10 * p[:, 1])


def test_clamps_out_of_range_inputs_and_never_indexes_out_of_range():
    enc = HashGridEncoding(3, CONFIG_3D, backend="torch", seed=0)
    x = torch.tensor([[-3.0, 0.5, 2.0], [1e9, -1e9, 0.25], [float("inf"), 0.0, -float("inf")]])
    torch.testing.assert_close(enc(x), enc(x.clamp(0, 1)), rtol=0, atol=0)
    weird = torch.tensor([[float("nan"), 0.5, 0.5], [1e30, -1e30, 0.5]])
    rows, _ = hashgrid_indices_and_weights(
        weird, enc.scales, enc.multipliers, enc.sizes, enc.offsets, enc.n_dense
    )
    assert rows.min() >= 0 and rows.max() < enc.n_entries
    assert enc(weird).shape == (2, enc.out_dim)


def test_leading_dims_and_initialisation():
    enc = HashGridEncoding(2, CONFIG_2D, backend="torch", seed=3)
    assert enc.params.abs().max() <= 1e-4 and enc.params.std() > 1e-5
    same = HashGridEncoding(2, CONFIG_2D, backend="torch", seed=3)
    torch.testing.assert_close(enc.params, same.params, rtol=0, atol=0)
    x = torch.rand(2, 3, 5, 2)
    torch.testing.assert_close(enc(x), enc(x.reshape(-1, 2)).reshape(2, 3, 5, enc.out_dim))


def _interior_points(enc: HashGridEncoding, n: int, d: int, margin: float = 0.02) -> torch.Tensor:
    """Random points whose local cell coordinates stay ``margin`` away from every cell boundary."""
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(200, d, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    pos = x[:, None, :] * enc.scales.double()[:, None] + 0.5
    frac = pos - pos.floor()
    keep = ((frac > margin) & (frac < 1 - margin)).flatten(1).all(-1)
    assert keep.sum() >= n
    return x[keep][:n]


@pytest.mark.parametrize("d", [2, 3])
def test_gradcheck_and_gradgradcheck(d):
    cfg = {
        "n_levels": 2,
        "n_features_per_level": 2,
        "log2_hashmap_size": 5,
        "base_resolution": 2,
        "per_level_scale": 2.0,
    }
    enc = HashGridEncoding(d, cfg, backend="torch").double()
    assert enc.supports_double_backward
    table = random_table(enc).requires_grad_()
    x = _interior_points(enc, 3, d).requires_grad_()

    def fn(table, x):
        return functional_call(enc, {"params": table}, (x,))

    assert torch.autograd.gradcheck(fn, (table, x))
    assert torch.autograd.gradgradcheck(fn, (table, x))


def test_vmap_over_stacked_tables_equals_loop():
    enc = HashGridEncoding(2, CONFIG_2D, backend="torch")
    tables = torch.randn(3, enc.n_entries, enc.n_features_per_level)
    x_shared = torch.rand(7, 2)
    x_per = torch.rand(3, 7, 2)

    def fn(table, x):
        return functional_call(enc, {"params": table}, (x,))

    loop_shared = torch.stack([fn(t, x_shared) for t in tables])
    loop_per = torch.stack([fn(t, x) for t, x in zip(tables, x_per, strict=True)])
    torch.testing.assert_close(vmap(fn, in_dims=(0, None))(tables, x_shared), loop_shared)
    torch.testing.assert_close(vmap(fn)(tables, x_per), loop_per)

    # an inner-loop gradient step per signal, as meta-learning does it
    def loss(table, x):
        return fn(table, x).square().sum()

    grads = vmap(grad(loss))(tables, x_per)
    loop_grads = torch.stack([grad(loss)(t, x) for t, x in zip(tables, x_per, strict=True)])
    torch.testing.assert_close(grads, loop_grads)


def test_second_order_meta_gradient_under_vmap_equals_loop():
    # MAML: differentiate through one inner gradient step, per signal under vmap
    enc = HashGridEncoding(2, CONFIG_2D, backend="torch").double()
    table = random_table(enc)
    x = torch.rand(3, 20, 2, dtype=torch.float64)
    y = torch.randn(3, 20, enc.out_dim, dtype=torch.float64)

    def inner(t, x, y):
        return (functional_call(enc, {"params": t}, (x,)) - y).square().mean()

    def adapted(t, x, y):
        return inner(t - 10.0 * grad(inner)(t, x, y), x, y)

    meta = grad(lambda t: vmap(adapted, in_dims=(None, 0, 0))(t, x, y).sum())(table)
    loop = sum(grad(adapted)(table, x[i], y[i]) for i in range(3))
    torch.testing.assert_close(meta, loop)


def test_state_dict_roundtrip_through_a_file(tmp_path):
    enc = HashGridEncoding(3, CONFIG_3D, backend="torch", seed=1)
    assert list(enc.state_dict()) == ["params"]  # level geometry is derived, not saved
    path = tmp_path / "grid.safetensors"
    save_file(enc.state_dict(), str(path))
    other = HashGridEncoding(3, CONFIG_3D, backend="torch", seed=2)
    other.load_state_dict(load_file(str(path)))
    x = torch.rand(9, 3)
    torch.testing.assert_close(other(x), enc(x), rtol=0, atol=0)


def test_config_errors():
    with pytest.raises(InputError, match="'n_level'"):
        HashGridEncoding(2, {"n_level": 4})
    with pytest.raises(InputError, match="otype='Frequency'"):
        HashGridEncoding(2, {"otype": "Frequency"})
    with pytest.raises(InputError, match="in_dim=4"):
        HashGridEncoding(4)
    with pytest.raises(InputError, match="n_features_per_level=3"):
        HashGridEncoding(2, {"n_features_per_level": 3})
    with pytest.raises(InputError, match="log2_hashmap_size=True"):
        HashGridEncoding(2, {"log2_hashmap_size": True})
    with pytest.raises(InputError, match="per_level_scale=0.5"):
        HashGridEncoding(2, {"per_level_scale": 0.5})
    with pytest.raises(InputError, match="resolution"):
        HashGridEncoding(2, {"n_levels": 64, "per_level_scale": 2.0})
    with pytest.raises(InputError, match="expected 3"):
        HashGridEncoding(3, CONFIG_3D, backend="torch")(torch.rand(4, 2))
    with pytest.raises(InputError) as info:
        HashGridEncoding(2, backend="cuda")
    assert "'cuda'" in str(info.value) and "auto, tcnn, torch" in str(info.value)


def test_backend_resolution_without_tinycudann():
    assert resolve_backend("auto") == "torch"
    assert resolve_backend("torch") == "torch"
    assert HashGridEncoding(2).backend == "torch"
    with pytest.raises(InputError) as info:
        HashGridEncoding(2, backend="tcnn")
    message = str(info.value)
    assert "pip install git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch" in (message)
    assert "backend='torch'" in message and "\n" not in message


def test_tcnn_config_translation():
    assert tcnn_encoding_config({}) == {
        **HASHGRID_DEFAULTS,
        "interpolation": "Linear",
        "hash": "CoherentPrime",
    }
    cfg = tcnn_encoding_config({"otype": "hashgrid", "n_levels": 8, "per_level_scale": 2})
    assert cfg["otype"] == "HashGrid" and cfg["n_levels"] == 8
    assert cfg["per_level_scale"] == 2.0 and isinstance(cfg["per_level_scale"], float)
    assert cfg["base_resolution"] == 16 and cfg["log2_hashmap_size"] == 19
    with pytest.raises(InputError, match="'interpolation'"):
        tcnn_encoding_config({"interpolation": "Smoothstep"})


class StandInTcnnEncoding(nn.Module):
    """Stand-in for ``tinycudann.Encoding`` (not installable here): same constructor, a flat
    ``params`` like tcnn's, float32 ``(batch, n_input_dims)`` inputs only. It lets the tcnn wrapper's
    plumbing (config translation, flattening, clamping, table view) run without CUDA."""

    def __init__(self, n_input_dims, encoding_config, seed=1337, dtype=None):
        super().__init__()
        assert dtype is torch.float32
        assert encoding_config.pop("interpolation") == "Linear"
        assert encoding_config.pop("hash") == "CoherentPrime"
        self.grid = HashGridEncoding(n_input_dims, encoding_config, backend="torch", seed=seed)
        self.params = nn.Parameter(self.grid.params.detach().flatten())
        self.n_output_dims = self.grid.out_dim

    def forward(self, x):
        assert x.ndim == 2 and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        table = self.params.view(-1, self.grid.n_features_per_level)
        return functional_call(self.grid, {"params": table}, (x,))


class _StandInModule:  # what ``import tinycudann`` would give
    Encoding = StandInTcnnEncoding


def test_tcnn_wrapper_plumbing_with_a_stand_in(monkeypatch):
    monkeypatch.setattr(hashgrid, "_tcnn_module", lambda: _StandInModule)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_backend("auto") == "tcnn"
    enc = HashGridEncoding(3, CONFIG_3D, backend="auto", seed=4)
    assert enc.backend == "tcnn" and not enc.supports_double_backward
    assert enc.table.shape == (enc.n_entries, enc.n_features_per_level)

    reference = HashGridEncoding(3, CONFIG_3D, backend="torch")
    with torch.no_grad():
        reference.params.copy_(torch.randn_like(reference.params))
        enc.table.copy_(reference.params)  # a table moves between backends as is
    x = torch.rand(2, 5, 3) * 1.4 - 0.2  # leading dims and out-of-range coordinates
    torch.testing.assert_close(enc(x), reference(x), rtol=0, atol=0)
