"""The SIREN network against the textbook formula of Sitzmann et al. (``sin(omega_0 (W h + b))``):
values, and the second derivatives MAML and the implicit estimators take through it (a guard for
any rewrite of the sine layer, e.g. folding ``omega_0`` into the weights)."""

import torch
from torch.func import functional_call

from genfield.fields import build_field
from genfield.fields.networks import CoordinateMLP


def reference(net: CoordinateMLP, params: dict, h: torch.Tensor) -> torch.Tensor:
    """The textbook SIREN, written from the parameters: scale applied to each pre-activation."""
    for i in range(net.n_layers):
        w, b = params[f"hidden_layers.{i}.weight"], params[f"hidden_layers.{i}.bias"]
        h = torch.sin(net.omega0 * (h @ w.T + b))
    return h @ params["output_layer.weight"].T + params["output_layer.bias"]


def test_siren_matches_reference_values_and_second_derivatives():
    torch.manual_seed(0)
    net = CoordinateMLP(2, 1, hidden=32, n_layers=3, activation="sine", omega0=30.0).double()
    params = {k: v.detach().clone().requires_grad_(True) for k, v in net.named_parameters()}
    x = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    out = functional_call(net, params, (x,))
    expected = reference(net, params, x)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)

    def grad_norm(out):  # a second-order quantity, as in MAML's meta-gradient
        g = torch.autograd.grad(out.square().sum(), list(params.values()), create_graph=True)
        return torch.autograd.grad(sum(t.square().sum() for t in g), list(params.values()))

    for a, b in zip(grad_norm(out), grad_norm(expected)):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_modulated_sine_keeps_the_modulation():
    net = CoordinateMLP(2, 1, hidden=16, n_layers=2, activation="sine", modulation="shift")
    x = torch.rand(20, 2) * 2 - 1
    shift = torch.randn(2, 16)
    params = dict(net.named_parameters())
    h = x
    for i in range(2):
        z = h @ params[f"hidden_layers.{i}.weight"].T + params[f"hidden_layers.{i}.bias"] + shift[i]
        h = torch.sin(net.omega0 * z)
    expected = h @ params["output_layer.weight"].T + params["output_layer.bias"]
    torch.testing.assert_close(net(x, shift), expected)


def test_batched_field_matches_reference_per_signal():
    field = build_field("siren", head="grey", hidden=16, n_layers=2)
    batch = field.init_batch(3, seed=0)
    x = torch.rand(3, 10, 2) * 2 - 1
    out = field(batch, x)
    net = field.module.network
    for s in range(3):
        params = {k.removeprefix("network."): v[s] for k, v in batch.items()}
        torch.testing.assert_close(out[s], torch.sigmoid(reference(net, params, x[s])))
