"""Tests of the functional field: presets, SIREN initialisation, vmapped batches, torch.func."""

import math

import pytest
import torch
from torch.func import grad, jvp, vmap

from genfield.datasets.batch import Observations
from genfield.errors import InputError
from genfield.fields import FIELD_PRESETS, build_field, grid_coords
from genfield.fields.encodings import FourierFeatures, PositionalEncoding
from genfield.fields.networks import CoordinateMLP
from genfield.fitting import fit_from_scratch
from genfield.forward import PointMap


def test_positional_encoding_matches_definition():
    enc = PositionalEncoding(2, n_octaves=3)
    x = torch.tensor([[0.25, -0.5]])
    out = enc(x)
    expected = [0.25, -0.5]
    for fn in (math.sin, math.cos):
        for d in (0.25, -0.5):
            expected += [fn(2**k * math.pi * d) for k in range(3)]
    assert out.shape == (1, enc.out_dim) == (1, 14)
    torch.testing.assert_close(out[0], torch.tensor(expected))


def test_fourier_features_are_fixed_by_seed_and_not_parameters():
    a, b = FourierFeatures(2, 16, 5.0, seed=3), FourierFeatures(2, 16, 5.0, seed=3)
    torch.testing.assert_close(a.B, b.B)
    assert list(a.parameters()) == []
    x = torch.rand(4, 2)
    torch.testing.assert_close(a(x).pow(2).reshape(4, 2, 16).sum(1), torch.ones(4, 16))


def test_siren_initialisation_keeps_activation_spread_through_depth():
    torch.manual_seed(0)
    net = CoordinateMLP(2, 1, hidden=256, n_layers=5, activation="sine", omega0=30.0)
    h = torch.rand(4096, 2) * 2 - 1
    stds, preactivation_stds = [], []
    for index, layer in enumerate(net.hidden_layers):
        z = net.omega0 * layer(h)
        h = torch.sin(z)
        stds.append(h.std().item())
        if index > 0:
            preactivation_stds.append(z.std().item())
    # Sitzmann et al. Sec 3.2: activations are arcsine distributed (std 1/sqrt 2) at every depth,
    # After the first layer omega_0 * W h has unit variance; the bias keeps PyTorch's default
    # U(-1/sqrt(n), 1/sqrt(n)) as in the reference code, adding omega_0^2 / (3 n).
    expected = math.sqrt(1 + 30.0**2 / (3 * 256))
    for s in stds:
        assert abs(s - 1 / math.sqrt(2)) < 0.05, stds
    for s in preactivation_stds:
        assert abs(s - expected) < 0.1, (preactivation_stds, expected)


@pytest.mark.parametrize("name", sorted(FIELD_PRESETS))
def test_vmapped_batch_equals_loop(name):
    field = build_field(name, in_dim=2, head="rgb")
    params = field.init_batch(3, seed=1)
    coords = torch.rand(3, 17, 2) * 2 - 1
    batched = field(params, coords)
    looped = torch.stack([field({k: v[s] for k, v in params.items()}, coords[s]) for s in range(3)])
    assert batched.shape == (3, 17, 3)
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-6)


def test_shared_weights_with_per_signal_latents():
    field = build_field("siren", head="grey", modulation="film", latent_dim=4)
    base = field.init(0)
    latents = torch.randn(5, 4)
    coords = grid_coords((6, 6))
    out = field({**base, "latent": latents}, coords)
    for s in range(5):
        torch.testing.assert_close(out[s], field({**base, "latent": latents[s]}, coords))
    assert not torch.allclose(out[0], out[1])


def test_external_per_signal_and_per_point_modulations_agree():
    field = build_field("relu_pe", head="grey", modulation="shift", hidden=16, n_layers=2)
    params = field.init(0)
    coords = torch.rand(2, 9, 2) * 2 - 1
    per_signal = torch.randn(2, *field.modulation_shape)
    per_point = per_signal[:, None].expand(2, 9, *field.modulation_shape)
    torch.testing.assert_close(field(params, coords, per_signal), field(params, coords, per_point))


def test_field_composes_with_grad_and_jvp():
    field = build_field("siren", head="grey", hidden=16, n_layers=2)
    params = field.init(0)
    x = torch.rand(8, 2) * 2 - 1

    def loss(p):
        return field(p, x).pow(2).sum()

    grads = grad(loss)(params)
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    auto = torch.autograd.grad(loss(leaves), list(leaves.values()))
    for g, a in zip(grads.values(), auto):
        torch.testing.assert_close(g, a)
    # jvp against a finite difference in a random parameter direction
    tangent = {k: torch.randn_like(v) for k, v in params.items()}
    params = {k: v.detach().double() for k, v in params.items()}
    tangent = {k: v.double() for k, v in tangent.items()}
    field.module.double()
    f = lambda p: field(p, x.double())  # noqa: E731
    _, directional = jvp(f, (params,), (tangent,))
    eps = 1e-6
    plus = f({k: params[k] + eps * tangent[k] for k in params})
    minus = f({k: params[k] - eps * tangent[k] for k in params})
    torch.testing.assert_close(directional, (plus - minus) / (2 * eps), rtol=1e-5, atol=1e-7)


def test_per_signal_gradients_by_vmap_of_grad():
    field = build_field("relu_pe", head="grey", hidden=8, n_layers=2)
    params = field.init_batch(4, seed=0)
    x = torch.rand(4, 10, 2) * 2 - 1
    y = torch.rand(4, 10, 1)

    def loss(p, xs, ys):
        return (field(p, xs) - ys).pow(2).mean()

    per_signal = vmap(grad(loss))(params, x, y)
    for s in range(4):
        single = grad(loss)({k: v[s] for k, v in params.items()}, x[s], y[s])
        for k in params:
            torch.testing.assert_close(per_signal[k][s], single[k])


def test_heads_respect_their_ranges():
    x = torch.rand(64, 3) * 2 - 1
    for head, check in {
        "rgb": lambda y: (y >= 0).all() and (y <= 1).all() and y.shape[-1] == 3,
        "attenuation": lambda y: (y >= 0).all() and y.shape[-1] == 1,
        "radiance": lambda y: (y[..., 0] >= 0).all() and (y[..., 1:] <= 1).all(),
    }.items():
        field = build_field("relu_pe", in_dim=3, head=head)
        assert check(field(field.init(0), x))


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(InputError, match="valid names: fourier, hashgrid, relu_pe, siren"):
        build_field("nerf")
    with pytest.raises(InputError, match="unknown output head 'rgba'"):
        build_field("siren", head="rgba")
    with pytest.raises(InputError, match="unknown field option"):
        build_field("siren", widht=3)


@pytest.mark.parametrize("name", sorted(FIELD_PRESETS))
def test_each_field_type_fits_a_tiny_image_above_random_init(name):
    from skimage.data import astronaut
    from skimage.transform import resize

    image = torch.tensor(resize(astronaut()[100:300, 150:350], (16, 16), anti_aliasing=True))
    values = image.float().reshape(1, 256, 3)
    obs = Observations(grid_coords((16, 16))[None], values)
    field = build_field(name, head="rgb", hidden=32)
    before = (field(field.init_batch(1), obs.queries) - values).pow(2).mean()
    params, history = fit_from_scratch(
        field, obs, PointMap(), steps=150, lr=3e-3 if name != "hashgrid" else 1e-2
    )
    after = (field(params, obs.queries) - values).pow(2).mean()
    psnr_before, psnr_after = -10 * torch.log10(before), -10 * torch.log10(after)
    assert psnr_after > psnr_before + 8, (name, psnr_before.item(), psnr_after.item())
    assert history[-1, 0] < history[0, 0]
