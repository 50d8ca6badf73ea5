"""Neural processes: tokenizers, order invariance, gradients through maps, objectives, bad input."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from genfield.datasets.batch import Observations, SignalBatch
from genfield.errors import InputError
from genfield.fields.coords import grid_coords
from genfield.fields.field import field_config
from genfield.forward import PointMap
from genfield.processes import build_process
from genfield.processes.tokenizers import PatchTokenizer, ProjectionTokenizer, select_tokens

SMALL = {"width": 32, "heads": 2, "depth": 1}


def image_field(**overrides):
    options = {"in_dim": 2, "head": "grey", "hidden": 16, "n_layers": 2, "fourier_features": 16}
    return field_config("fourier", **{**options, **overrides})


def image_batch(n_signals: int = 3, side: int = 8, n_context: int = 12, seed: int = 0) -> SignalBatch:
    g = torch.Generator().manual_seed(seed)
    coords = grid_coords((side, side))
    yy, xx = coords[:, 0], coords[:, 1]
    phase = torch.rand(n_signals, 1, generator=g) * 3
    values = (0.5 + 0.4 * torch.sin(3 * xx + phase) * torch.cos(2 * yy))[..., None]
    index = torch.stack([torch.randperm(side * side, generator=g)[:n_context] for _ in range(n_signals)])
    queries = coords.expand(n_signals, -1, -1)
    context = Observations(
        torch.gather(queries, 1, index[..., None].expand(-1, -1, 2)),
        torch.gather(values, 1, index[..., None]),
    )
    return SignalBatch("image", PointMap(), context, Observations(queries.clone(), values))


# -- tokenizers --------------------------------------------------------------------------------
def test_projection_tokens_hold_each_angle_and_its_whole_profile():
    angles = torch.tensor([[0.3, 1.2, 2.5]])
    d = 5
    offsets = torch.linspace(-0.8, 0.8, d)
    queries = torch.stack(torch.broadcast_tensors(angles[..., None], offsets), -1).reshape(1, 15, 2)
    values = torch.arange(15.0).reshape(1, 15, 1)
    tokens = ProjectionTokenizer(n_bins=d, n_frequencies=2)(Observations(queries, values))
    assert tokens.shape == (1, 3, 4 + d)
    a = angles[0, 1]
    expected_angle = torch.stack([a.sin(), (2 * a).sin(), a.cos(), (2 * a).cos()])
    torch.testing.assert_close(tokens[0, 1, :4], expected_angle)
    torch.testing.assert_close(tokens[0, 1, 4:], torch.arange(5.0, 10.0))  # projection 1's bins
    resampled = ProjectionTokenizer(n_bins=2 * d, n_frequencies=2)(Observations(queries, values))
    assert resampled.shape == (1, 3, 4 + 2 * d)  # fixed token size whatever the detector count


def test_patch_tokens_carry_pixels_and_rays_of_their_patch():
    v, h, w, p = 2, 4, 4, 2
    origins = torch.arange(v, dtype=torch.float32)[:, None, None, None].expand(v, h, w, 3)
    dirs = torch.randn(v, h, w, 3)
    rgb = torch.rand(v, h, w, 3)
    queries = torch.cat([origins, dirs, torch.zeros(v, h, w, 2)], -1).reshape(1, -1, 8)
    tokens = PatchTokenizer(patch_size=p)(Observations(queries, rgb.reshape(1, -1, 3)))
    assert tokens.shape == (1, v * (h // p) * (w // p), p * p * 9)
    # token 5 = view 1, patch row 0, patch column 1: pixels (0..1, 2..3) of view 1
    expected = torch.cat([origins, dirs, rgb], -1)[1, 0:2, 2:4].reshape(-1)
    torch.testing.assert_close(tokens[0, 5], expected)


def test_token_budget_keeps_evenly_spaced_tokens():
    tokens = torch.arange(10.0).reshape(1, 10, 1)
    assert select_tokens(tokens, 4)[0, :, 0].tolist() == [0.0, 3.0, 6.0, 9.0]
    assert select_tokens(tokens, 20) is tokens


# -- order invariance ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cnp", "np", "anp", "ponp"])
def test_predictions_do_not_depend_on_the_order_of_context_tokens(name):
    torch.manual_seed(0)
    model = build_process(name, image_field(), "image", **SMALL).eval()
    for p in model.parameters():  # move the zero-initialised modulation maps off zero
        p.data.add_(0.05 * torch.randn_like(p))
    batch = image_batch()
    perm = torch.randperm(batch.context.num_observations)
    shuffled = Observations(batch.context.queries[:, perm], batch.context.values[:, perm])
    outs = []
    for context in (batch.context, shuffled):
        torch.manual_seed(1)
        outs.append(model.reconstruct(context, PointMap(), batch.target.queries, PointMap(), num_samples=3))
    torch.testing.assert_close(outs[0].mean, outs[1].mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(outs[0].variance, outs[1].variance, atol=1e-5, rtol=1e-5)
    assert outs[0].mean.shape == batch.target.values.shape


def test_ct_representation_invariant_to_the_order_of_projections():
    model = build_process(
        "ponp", field_config("siren", in_dim=2, head="attenuation", hidden=16), "ct", **SMALL
    )
    a, d = 4, 6
    angles = torch.rand(2, a) * math.pi
    offsets = torch.linspace(-0.9, 0.9, d)
    queries = torch.stack(torch.broadcast_tensors(angles[..., None], offsets), -1).reshape(2, a * d, 2)
    values = torch.rand(2, a * d, 1)
    order = torch.tensor([2, 0, 3, 1])
    permuted = Observations(
        queries.reshape(2, a, d, 2)[:, order].reshape(2, a * d, 2),
        values.reshape(2, a, d, 1)[:, order].reshape(2, a * d, 1),
    )
    first = model.encode(model.tokens(Observations(queries, values)))[1]
    second = model.encode(model.tokens(permuted))[1]
    torch.testing.assert_close(first, second, atol=1e-5, rtol=1e-5)


# -- gradients through the forward maps -------------------------------------------------------------
def directional_check(model, batch, seed=0):
    """Autograd's directional derivative of the loss against a central finite difference (float64)."""
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(seed)
    direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
    model.zero_grad()
    torch.manual_seed(3)
    model.compute_gradients(batch)
    analytic = sum((p.grad * v).sum() for p, v in zip(params, direction))
    eps = 1e-7  # ReLU kinks: keep the step tiny (float64 round-off is ~1e-9 here)
    losses = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.add_(sign * eps * v)
        torch.manual_seed(3)
        losses.append(model.loss(batch)[0].detach())
        with torch.no_grad():
            for p, v in zip(params, direction):
                p.sub_(sign * eps * v)
    numeric = (losses[0] - losses[1]) / (2 * eps)
    torch.testing.assert_close(analytic, numeric, rtol=1e-4, atol=1e-7)
    return analytic


@pytest.fixture
def float64():
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(default)


def test_gradient_through_point_map_matches_finite_differences(float64):
    torch.manual_seed(0)
    model = build_process("np", image_field(), "image", objective="elbo", **SMALL)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    assert directional_check(model, image_batch()).abs() > 0


def test_gradient_through_ct_projection_matches_finite_differences(float64):
    from genfield.forward.ct import ParallelBeamProjection

    torch.manual_seed(0)
    fc = field_config("fourier", in_dim=2, head="attenuation", hidden=16, n_layers=2, fourier_features=16)
    model = build_process("ponp", fc, "ct", tokenizer_options={"n_bins": 6}, **SMALL)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    a, d = 3, 6
    angles = torch.rand(2, a) * math.pi
    offsets = torch.linspace(-0.9, 0.9, d)
    queries = torch.stack(torch.broadcast_tensors(angles[..., None], offsets), -1).reshape(2, a * d, 2)
    obs = Observations(queries, torch.rand(2, a * d, 1))
    fmap = ParallelBeamProjection(n_samples=8)
    batch = SignalBatch("ct", fmap, obs, obs)
    assert directional_check(model, batch).abs() > 0

    # the observed mean and scale are the projector applied by hand to the mean and scale fields
    cond = model.condition(obs, model.latent_prior(obs).mean[None], forward_map=fmap)
    mean, std = model.predict_observations(cond, queries, fmap, 1)
    fn = model.field_fn(cond)
    torch.testing.assert_close(mean[0], fmap(lambda x: fn(x)[..., :1], queries))
    torch.testing.assert_close(std[0], fmap(lambda x: fn(x)[..., 1:], queries) + model.config.min_std)


def test_gradient_through_volume_rendering_matches_finite_differences(float64):
    from genfield.forward.volume import VolumeRenderer

    torch.manual_seed(0)
    fc = field_config("fourier", in_dim=3, head="radiance", hidden=16, n_layers=2, fourier_features=16)
    model = build_process("cnp", fc, "views", tokenizer_options={"patch_size": 2}, **SMALL)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    h = w = 2
    origins = torch.tensor([0.0, 0.0, 2.5]).expand(1, h * w, 3)
    dirs = torch.nn.functional.normalize(torch.randn(1, h * w, 3) * 0.2 + torch.tensor([0, 0, -1.0]), dim=-1)
    rays = torch.cat([origins, dirs, torch.full((1, h * w, 1), 1.0), torch.full((1, h * w, 1), 4.0)], -1)
    obs = Observations(rays, torch.rand(1, h * w, 3))
    fmap = VolumeRenderer(n_samples=8, stratified=False)
    batch = SignalBatch("views", fmap, obs, obs)
    assert directional_check(model, batch).abs() > 0

    # the scale is composited like a colour with no background: a black-background render of it
    cond = model.condition(obs, None)
    mean, std = model.predict_observations(cond, rays, fmap, 1)
    fn = model.field_fn(cond)
    black = VolumeRenderer(n_samples=8, stratified=False, white_background=False)
    scale = black(lambda x: torch.cat([fn(x)[..., :1], fn(x)[..., 4:]], -1), rays)
    torch.testing.assert_close(std[0], scale + model.config.min_std)
    torch.testing.assert_close(mean[0], fmap(lambda x: fn(x)[..., :4], rays))


# -- objectives ----------------------------------------------------------------------------------
@pytest.mark.parametrize("objective,proposal", [("elbo", "posterior"), ("ml", "posterior"), ("ml", "prior")])
def test_latent_objectives_are_finite_and_decrease_on_a_fixed_batch(objective, proposal):
    torch.manual_seed(0)
    model = build_process("np", image_field(), "image", objective=objective, proposal=proposal, **SMALL)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = image_batch(n_signals=4)
    losses = []
    for _ in range(30):
        optimizer.zero_grad()
        metrics = model.compute_gradients(batch)
        optimizer.step()
        losses.append(float(metrics["loss"]))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, losses
    # the reported KL is KL(posterior || prior) of the model's two diagonal Gaussians, by the closed form
    model.eval()  # no context subsampling: the loss sees the batch's own context
    with torch.no_grad():
        _, metrics = model.loss(batch)
        prior = model.latent_prior(batch.context)
        posterior = model.latent_posterior(batch.context, batch.target)
    mq, sq, mp, sp = posterior.mean, posterior.stddev, prior.mean, prior.stddev
    closed_form = (torch.log(sp / sq) + (sq**2 + (mq - mp) ** 2) / (2 * sp**2) - 0.5).sum(-1)
    torch.testing.assert_close(metrics["kl"], closed_form.mean())
    assert bool((closed_form > 0).all())  # the posterior saw the targets: it is not the prior


def test_weight_token_conditioning_trains_and_is_order_invariant():
    torch.manual_seed(0)
    model = build_process(
        "ponp", image_field(), "image", conditioning="weights", latent_dim=0, local_features=False, **SMALL
    )
    batch = image_batch()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = float(model.compute_gradients(batch)["loss"])
    optimizer.step()
    for _ in range(15):
        optimizer.zero_grad()
        last = float(model.compute_gradients(batch)["loss"])
        optimizer.step()
    assert last < first
    perm = torch.randperm(batch.context.num_observations)
    shuffled = Observations(batch.context.queries[:, perm], batch.context.values[:, perm])
    a = model.reconstruct(batch.context, PointMap(), batch.target.queries, PointMap())
    b = model.reconstruct(shuffled, PointMap(), batch.target.queries, PointMap())
    torch.testing.assert_close(a.mean, b.mean, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("target", ["latent", "decoder"])
def test_test_time_optimisation_fits_the_context_better(target):
    torch.manual_seed(0)
    # the refined decoder's own std (the predictions of the default keep the forward pass's std)
    model = build_process(
        "ponp", image_field(), "image", tto_params=target, tto_lr=1e-2, tto_scale="adapted", **SMALL
    )
    for p in model.parameters():  # as after training: the code reaches the decoder
        p.data.add_(0.05 * torch.randn_like(p))
    batch = image_batch()
    ctx = batch.context

    def context_nll(steps):  # the predictive Gaussian NLL of the context measurements
        torch.manual_seed(1)
        pred = model.reconstruct(ctx, PointMap(), ctx.queries, PointMap(), steps=steps, num_samples=2)
        return (
            0.5 * (2 * math.pi * pred.variance).log() + (pred.mean - ctx.values) ** 2 / (2 * pred.variance)
        ).mean()

    before, after = context_nll(0), context_nll(30)
    assert after < before - 0.05, (before, after)


# -- bad input -----------------------------------------------------------------------------------
def test_bad_input_gives_clear_errors():
    model = build_process("cnp", image_field(), "image", **SMALL)
    batch = image_batch()
    empty = Observations(torch.zeros(3, 0, 2), torch.zeros(3, 0, 1))
    with pytest.raises(InputError, match="context is empty"):
        model.reconstruct(empty, PointMap(), batch.target.queries, PointMap())
    with pytest.raises(InputError, match=r"\[-1, 1\]"):
        model.reconstruct(batch.context, PointMap(), batch.target.queries * 1.5, PointMap())
    wrong = SignalBatch("ct", PointMap(), batch.context, batch.target)
    with pytest.raises(InputError, match="kind"):
        model.compute_gradients(wrong)
    with pytest.raises(InputError, match="unknown neural process"):
        build_process("gp", image_field(), "image")
    with pytest.raises(InputError, match="unknown process option"):
        build_process("cnp", image_field(), "image", widht=3)


@pytest.mark.parametrize("value", [3, [1, 2, 3], [0.5, 2], [5, 1], [0, 2], "12", [True, 2]])
def test_a_malformed_context_subsample_is_a_one_line_error_naming_the_option(value):
    from genfield.processes import build_prior_residual

    with pytest.raises(InputError, match=r"^process context_subsample must be \(lo, hi\)"):
        build_process("cnp", image_field(), "image", context_subsample=value, **SMALL)
    with pytest.raises(InputError, match=r"^prior_residual context_subsample must be \(lo, hi\)"):
        build_prior_residual("prior_residual", image_field(), "image", context_subsample=value)
    assert build_process(
        "cnp", image_field(), "image", context_subsample=[2, 4], **SMALL
    ).config.context_subsample == (
        2,
        4,
    )


def test_token_budget_warns_and_is_deterministic():
    model = build_process("cnp", image_field(), "image", max_tokens=5, **SMALL)
    batch = image_batch()
    with pytest.warns(UserWarning, match="max_tokens=5"):
        a = model.reconstruct(batch.context, PointMap(), batch.target.queries, PointMap())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = model.reconstruct(batch.context, PointMap(), batch.target.queries, PointMap())
    torch.testing.assert_close(a.mean, b.mean)


def test_non_finite_loss_is_reported_not_hidden():
    model = build_process("cnp", image_field(), "image", **SMALL)
    batch = image_batch()
    batch.target.values[0, 0, 0] = float("nan")
    metrics = model.compute_gradients(batch)
    assert not torch.isfinite(metrics["loss"])


# -- local features through the adjoint of the forward map (CT) ----------------------------------
def ct_context(n_signals: int = 2, n_angles: int = 4, d: int = 8, seed: int = 0) -> Observations:
    from genfield.forward.ct import ct_queries

    g = torch.Generator().manual_seed(seed)
    angles = torch.rand(n_signals, n_angles, generator=g) * math.pi
    return Observations(ct_queries(angles, d), torch.rand(n_signals, n_angles * d, 1, generator=g))


def test_view_backprojections_sum_to_fbp_and_read_neighbouring_bins():
    from genfield.forward.ct import ParallelBeamProjection, ct_queries, fbp
    from genfield.processes.local import BackProjectionFeatures

    d, a = 32, 6
    angles = torch.rand(2, a, generator=torch.Generator().manual_seed(0)) * math.pi
    queries = ct_queries(angles, d)
    values = torch.exp(-4 * (queries[..., 1:] - 0.2 * torch.cos(queries[..., :1])) ** 2)  # smooth
    features = BackProjectionFeatures(1, 8, window=1)  # offsets -1, 0, +1 bins
    fmap = ParallelBeamProjection()
    raw, ramp = features.view_backprojections(fmap, Observations(queries, values), d, d)
    assert raw.shape == ramp.shape == (2, d * d, a, 3)
    inside = grid_coords((d, d)).square().sum(-1) < 0.8

    def relative_error(estimate, reference):
        return float((estimate - reference)[:, inside].norm() / reference[:, inside].norm())

    profiles = values.reshape(2, a, d)
    # (pi / A) times the sum of the ramp-filtered views is FBP; the raw sum, the plain back-projection
    fbp_grid = fbp(profiles, angles, d, circle=False).reshape(2, -1)
    assert relative_error((math.pi / a) * ramp[..., 1].sum(-1), fbp_grid) < 0.02
    plain = fbp(profiles, angles, d, filter_name=None, circle=False).reshape(2, -1) * (a / math.pi)
    assert relative_error(raw[..., 1].sum(-1), plain) < 0.02
    # offset +1 reads the next bin: the offset-0 view of the profiles moved down by one bin
    moved = torch.zeros_like(profiles)
    moved[..., :-1] = profiles[..., 1:]
    raw_moved, _ = features.view_backprojections(fmap, Observations(queries, moved.reshape(2, -1, 1)), d, d)
    torch.testing.assert_close(raw[..., 2], raw_moved[..., 1])
    assert not torch.allclose(raw[..., 0], raw_moved[..., 1], atol=1e-3)


def ct_process(**options):
    fc = field_config("fourier", in_dim=2, head="attenuation", hidden=16, n_layers=2, fourier_features=16)
    return build_process("ponp", fc, "ct", **{**SMALL, "latent_dim": 0, **options})


def test_ct_local_features_are_the_ponp_default_and_invariant_to_the_order_of_views():
    from genfield.forward.ct import ParallelBeamProjection

    torch.manual_seed(0)
    model = ct_process().eval()
    assert model.config.local_features and model.config.context_subsample == (1, 20)
    assert not ct_process(local_features=False).config.local_features
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    d, a = 8, 4
    ctx = ct_context(n_angles=a, d=d)
    order = torch.tensor([2, 0, 3, 1])
    permuted = Observations(
        ctx.queries.reshape(2, a, d, 2)[:, order].reshape(2, a * d, 2),
        ctx.values.reshape(2, a, d, 1)[:, order].reshape(2, a * d, 1),
    )
    fmap = ParallelBeamProjection(n_samples=8)
    points = torch.rand(2, 30, 2) * 2 - 1
    first = model.reconstruct(ctx, fmap, points, PointMap())
    second = model.reconstruct(permuted, fmap, points, PointMap())
    torch.testing.assert_close(first.mean, second.mean, atol=1e-5, rtol=1e-5)
    # the features depend on the measurements: other projections, other predictions
    other = Observations(ctx.queries, ctx.values.flip(1))
    assert (model.reconstruct(other, fmap, points, PointMap()).mean - first.mean).abs().max() > 1e-4


def test_context_subsampling_partitions_the_context_into_context_and_target():
    torch.manual_seed(0)
    model = ct_process(context_subsample=(2, 3))
    d, a = 8, 5
    ctx, target = ct_context(n_angles=a, d=d), ct_context(n_angles=2, d=d, seed=1)
    kept, scored = model.subsample_context(ctx, target)
    n_kept = kept.num_observations // d
    assert 2 <= n_kept <= 3 and kept.num_observations % d == 0
    assert scored.num_observations == target.num_observations + (a - n_kept) * d
    torch.testing.assert_close(scored.values[:, : target.num_observations], target.values)
    for s in range(2):  # whole projections, each in exactly one of the two sets
        ours = torch.cat([kept.values[s], scored.values[s, target.num_observations :]]).reshape(a, d)
        theirs = ctx.values[s].reshape(a, d)
        matches = (ours[:, None] == theirs[None]).all(-1)
        assert matches.sum(0).tolist() == [1] * a


def test_kind_options_and_local_feature_errors(monkeypatch):
    fc = image_field()
    model = build_process("cnp", fc, "image", width=16, by_kind={"image": {"width": 24}, "ct": {"width": 8}})
    assert model.config.width == 24
    with pytest.raises(InputError, match="by_kind"):
        build_process("cnp", fc, "image", by_kind={"pictures": {}})
    view_field = field_config("siren", in_dim=3, head="radiance", hidden=16, n_layers=2)
    from genfield.kinds import get_kind

    monkeypatch.setattr(get_kind("views"), "local_features", None)  # a kind that names no part
    with pytest.raises(
        InputError, match=r"local_features .* kind 'views'; available: \['image', 'ct', 'shape'\]"
    ):
        build_process("ponp", view_field, "views", local_features=True)
    with pytest.raises(InputError, match="context_subsample"):
        build_process("ponp", fc, "image", context_subsample=(3, 2))
