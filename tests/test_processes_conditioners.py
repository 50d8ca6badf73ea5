"""The neural processes' conditioners, test-time refinement, context subsampling and checkpoint keys."""

from __future__ import annotations

import pytest
import torch

from genfield.datasets.batch import Observations
from genfield.fields.coords import grid_coords
from genfield.fields.field import Field, field_config
from genfield.forward import PointMap
from genfield.processes import build_process
from genfield.processes.conditioners import Conditioning
from genfield.processes.refinement import refine
from genfield.processes.subsampling import subsample_context

SMALL = {"width": 16, "heads": 2, "depth": 1}


def grey_field(**overrides):
    return field_config("siren", **{"in_dim": 2, "head": "grey", "hidden": 8, "n_layers": 3, **overrides})


def context(n_signals: int = 2, n: int = 10, seed: int = 0) -> Observations:
    g = torch.Generator().manual_seed(seed)
    return Observations(
        torch.rand(n_signals, n, 2, generator=g) * 2 - 1, torch.rand(n_signals, n, 1, generator=g)
    )


def test_hidden_weight_names_are_the_matrices_that_map_each_hidden_layer():
    field = Field(grey_field(network="relu", n_layers=3))
    names = field.hidden_weight_names
    params = field.init(seed=0)
    assert len(names) == 3 and all(params[n].shape[0] == 8 for n in names)  # not the output's (1, 8)
    points = torch.rand(20, 2) * 2 - 1
    for name in names:  # without any one of them, the output no longer depends on the point
        cut = field({**params, name: torch.zeros_like(params[name])}, points)
        assert torch.allclose(cut, cut[:1].expand_as(cut))
    assert not torch.allclose(field(params, points), field(params, points)[:1])
    assert [params[n].shape[1] for n in names] == [2, 8, 8]  # first to last (the input is 2-D)


def test_weight_tokens_rescale_rows_of_the_chosen_matrices_keeping_their_norms():
    torch.manual_seed(0)
    options = {**SMALL, "conditioning": "weights", "latent_dim": 0, "local_features": False}
    model = build_process("ponp", grey_field(), "image", weight_layers=(0, -1), **options)
    names = model.decoder.hidden_weight_names
    cond = model.condition(context(), None)
    base = dict(model.decoder_module.named_parameters())
    for name, value in cond.params.items():
        if name in (names[0], names[-1]):  # per signal (S, rows, in), each row keeps the base row's norm
            assert value.shape == (2, *base[name].shape)
            torch.testing.assert_close(value.norm(dim=-1), base[name].norm(dim=-1).expand(2, -1))
            assert not torch.allclose(value[0], value[1])  # the two contexts give two decoders
        else:
            assert value is base[name]
    assert cond.code is None and model.conditioner.modulations(cond, torch.zeros(2, 3, 2)) is None


def test_modulation_conditioner_starts_at_the_base_field_and_joins_r_and_z():
    torch.manual_seed(0)
    model = build_process("anp", grey_field(), "image", **SMALL)
    z = torch.randn(3, 2, model.config.latent_dim)
    cond = model.condition(context(), z)
    # ANP: the code is z alone (r is per point, by cross-attention), repeated for the K = 3 draws
    torch.testing.assert_close(cond.code, z.reshape(6, -1))
    assert cond.tokens.shape[0] == 6
    points = torch.rand(6, 5, 2) * 2 - 1
    modulations = model.conditioner.modulations(cond, points)
    assert modulations.shape == (6, 5, *model.decoder.modulation_shape)
    assert not modulations.abs().sum()  # zero-initialised map: the base field
    ponp = build_process("ponp", grey_field(), "image", local_features=False, **SMALL)
    cond = ponp.condition(context(), z)
    torch.testing.assert_close(cond.code[:, -z.shape[-1] :], z.reshape(6, -1))  # [r, z]
    torch.testing.assert_close(cond.code[:2, :16], cond.code[2:4, :16])  # r: one per signal


def test_one_refinement_step_is_adams_signed_step_on_the_chosen_variables():
    code = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    params = {"w": torch.ones(2, 3)}
    target = torch.randn(4, 3, generator=torch.Generator().manual_seed(1))

    def nll(cond: Conditioning) -> torch.Tensor:
        return ((cond.code - target) ** 2).sum() + (cond.params["w"] ** 2).sum()

    lr = 0.1
    latent = refine(Conditioning(params, code), nll, {"w": 2}, 4, target="latent", steps=1, lr=lr)
    # Adam's first step is lr * g / (|g| + eps): lr times the sign of the gradient, 2 (code - target)
    torch.testing.assert_close(latent.code, code - lr * torch.sign(code - target), atol=1e-6, rtol=0)
    assert latent.params["w"].shape == (2, 3) and torch.equal(latent.params["w"], params["w"])
    decoder = refine(Conditioning(params, code), nll, {"w": 2}, 4, target="decoder", steps=1, lr=lr)
    torch.testing.assert_close(decoder.params["w"], torch.full((4, 2, 3), 1.0 - lr), atol=1e-6, rtol=0)
    torch.testing.assert_close(decoder.code, code)  # the code is not refined, only the decoder copies
    assert refine(Conditioning(params, code), nll, {"w": 2}, 4, target="latent", steps=0, lr=lr).code is code


def test_context_subsampling_draws_every_size_between_lo_and_hi():
    ctx, target = context(n=5), context(n=3, seed=1)
    torch.manual_seed(0)
    sizes = {subsample_context(ctx, target, 1, 2, 4)[0].num_observations for _ in range(60)}
    assert sizes == {2, 3, 4}
    kept, scored = subsample_context(ctx, target, 1, 2, 9)  # hi past the context: may keep it whole
    assert kept.num_observations + scored.num_observations == 8
    whole = {subsample_context(ctx, target, 1, 5, 9)[0] is ctx for _ in range(5)}
    assert whole == {True}


@pytest.mark.parametrize(
    "name,options,own",
    [
        ("cnp", {}, {"to_modulation.weight", "to_modulation.bias"}),
        ("anp", {"conditioning": "film"}, {"to_modulation.weight", "cross.attention.in_proj_weight"}),
        ("ponp", {"local_options": {"resolution": 4, "channels": [4]}}, {"to_modulation.weight"}),
        ("ponp", {"conditioning": "weights", "latent_dim": 0, "local_features": False}, {"weight_tokens"}),
    ],
)
def test_checkpoints_keep_the_keys_of_the_process_and_load_into_a_fresh_build(name, options, own):
    """The conditioner's parameters sit on the process under their own names, once each, and a
    state dict restores every prediction of another build exactly."""
    torch.manual_seed(0)
    model = build_process(name, grey_field(), "image", **SMALL, **options)
    state = model.state_dict()
    assert own <= set(state) and not any(key.startswith("conditioner.") for key in state)
    assert len(state) == len(list(model.named_parameters())) + len(list(model.named_buffers()))
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    torch.manual_seed(1)
    fresh = build_process(name, grey_field(), "image", **SMALL, **options)
    fresh.load_state_dict(model.state_dict(), strict=True)
    queries = grid_coords((4, 4)).expand(2, -1, -1)
    outs = []
    for process in (model.eval(), fresh.eval()):
        torch.manual_seed(2)
        outs.append(process.reconstruct(context(), PointMap(), queries, PointMap(), num_samples=2).mean)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


def test_injected_parts_replace_the_built_ones():
    """A process built from hand-made parts uses them: here a likelihood with another std floor."""
    from dataclasses import replace

    from genfield.processes.config import process_config
    from genfield.processes.likelihoods import GaussianLikelihood
    from genfield.processes.models import NeuralProcess
    from genfield.processes.parts import build_parts

    fc, config = grey_field(), process_config("cnp", "image", **SMALL)
    torch.manual_seed(0)
    default = NeuralProcess(fc, "image", config)
    torch.manual_seed(0)
    parts = build_parts(fc, "image", config)
    floored = NeuralProcess(
        fc, "image", config, replace(parts, likelihood=GaussianLikelihood(1, min_std=0.5))
    )
    queries = grid_coords((3, 3)).expand(2, -1, -1)
    a, b = (m.reconstruct(context(), PointMap(), queries, PointMap()) for m in (default, floored))
    torch.testing.assert_close(a.mean, b.mean)
    torch.testing.assert_close(b.std, a.std + 0.5 - config.min_std)
