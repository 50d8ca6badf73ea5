"""The learned residual over the linear Gaussian prior (genfield/processes/prior_residual.py)."""

import pytest
import torch
from test_classical import ct_batch, image_batch

from genfield.builders import build_data, build_field_for, build_method
from genfield.checkpoint import load_checkpoint, save_checkpoint
from genfield.classical.gaussian import (
    GaussianPrior,
    gaussian_posterior,
    noise_by_marginal_likelihood,
    pixel_selection,
)
from genfield.comparison import load_group
from genfield.datasets.batch import Observations
from genfield.datasets.ct import PhantomDataset
from genfield.datasets.images import ImageSignal
from genfield.errors import InputError
from genfield.fields.field import FieldConfig
from genfield.forward.ct import project_image
from genfield.kinds import get_kind
from genfield.processes import PriorResidual
from genfield.processes.prior_residual import build_prior_residual


def images(n: int, size: int, channels: int, seed: int) -> list[ImageSignal]:
    """Smooth random images (a low-rank family, so the prior has structure to learn)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.rand(4, size, size, channels, generator=g)
    weights = torch.rand(n, 4, generator=g)
    stack = torch.einsum("nk,khwc->nhwc", weights, basis) / 2
    return [ImageSignal(stack[i], f"t{i}", (size, size)) for i in range(n)]


def method_for(kind: str, channels: int, collection, **options) -> PriorResidual:
    head = {"image": "grey" if channels == 1 else "rgb", "ct": "attenuation"}[kind]
    config = FieldConfig(in_dim=2, head=head, hidden=8)
    return build_prior_residual(
        "prior_residual", config, kind, collection=collection, channels=(8, 16), **options
    )


@pytest.mark.parametrize("channels", [1, 3])
def test_untrained_it_is_the_gaussian_prior_on_images(channels):
    train = images(30, 6, channels, seed=0)
    batch = image_batch(torch.stack([s.image for s in images(3, 6, channels, seed=1)]), 0.4)
    method = method_for("image", channels, train, min_std=0.0)
    reference = GaussianPrior().fit(train).reconstruct(batch)
    queries = batch.target.queries
    prediction = method.reconstruct(batch.context, batch.forward_map, queries, batch.forward_map)
    target_index = pixel_selection(queries, (6, 6, 1)).index  # the target pixels, every pixel here
    ref_mean = reference.mean[:, target_index[0]]
    torch.testing.assert_close(prediction.mean, ref_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(
        prediction.variance, reference.variance[:, target_index[0]], rtol=1e-5, atol=1e-7
    )
    torch.testing.assert_close(
        prediction.noise_variance, reference.noise_variance[:, target_index[0]], rtol=1e-5, atol=1e-7
    )


def test_untrained_it_is_the_gaussian_prior_on_ct():
    train = PhantomDataset(20, 7, seed=4)
    batch = ct_batch(7, 3, signals=2)
    method = method_for("ct", 1, train, noise=1e-3, min_std=0.0)
    reference = GaussianPrior(noise=1e-3).fit(train).reconstruct(batch)
    queries, query_map = get_kind("ct").dense_queries(batch)
    prediction = method.reconstruct(batch.context, batch.forward_map, queries, query_map)
    torch.testing.assert_close(prediction.mean, reference.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(prediction.variance, reference.variance, rtol=1e-5, atol=1e-7)
    assert prediction.noise_variance is None  # slice pixels, not new observations
    # through the projector instead: the posterior mean's projections
    projected = method.reconstruct(batch.context, batch.forward_map, batch.target.queries, batch.forward_map)
    slices = reference.mean.reshape(2, 7, 7, 1)
    expected = project_image(slices, batch.target.queries, batch.forward_map.n_samples)
    torch.testing.assert_close(projected.mean, expected, rtol=1e-4, atol=1e-5)


def test_the_pixel_selection_is_the_dense_selection():
    g = torch.Generator().manual_seed(3)
    root = torch.randn(12, 12, generator=g, dtype=torch.float64)
    cov, mean = (
        root @ root.T / 12 + 0.1 * torch.eye(12, dtype=torch.float64),
        torch.randn(12, dtype=torch.float64),
    )
    coords = torch.tensor([[-2 / 3, -0.75], [0.0, 0.25], [2 / 3, 0.75]])  # pixel centres of 3 x 4
    queries = torch.stack([coords, coords.flip(0)])
    selection = pixel_selection(queries, (3, 4, 1))
    assert selection.index.tolist() == [[0, 6, 11], [11, 6, 0]]
    values = torch.randn(2, 3, generator=g, dtype=torch.float64)
    validation = torch.randn(5, 12, generator=g, dtype=torch.float64)
    noise = noise_by_marginal_likelihood(selection, mean, cov, validation)
    torch.testing.assert_close(noise, noise_by_marginal_likelihood(selection.dense(), mean, cov, validation))
    for a, b in zip(
        gaussian_posterior(selection, values, mean, cov, noise),
        gaussian_posterior(selection.dense(), values, mean, cov, noise),
        strict=True,
    ):
        torch.testing.assert_close(a, b)
    with pytest.raises(InputError, match="not at the pixel centres of a 3x4 image"):
        pixel_selection(queries + 0.1, (3, 4, 1))


def test_training_fits_the_residual_and_the_variance_does_not_steer_the_trunk():
    torch.manual_seed(0)
    train = images(40, 8, 1, seed=0)
    batch = image_batch(torch.stack([s.image for s in images(4, 8, 1, seed=2)]) ** 2, 0.3)  # off the family
    method = method_for("image", 1, train)
    prior_error = (
        (
            method.reconstruct(batch.context, batch.forward_map, batch.target.queries, batch.forward_map).mean
            - batch.target.values
        )
        .square()
        .mean()
    )
    optimizer = torch.optim.Adam(method.parameters(), 3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        metrics = method.compute_gradients(batch)
        optimizer.step()
    assert metrics["mse"] < 0.5 * prior_error  # the residual learns what the linear prior misses
    # the trunk's gradient is the squared error's alone
    method.zero_grad()
    method.compute_gradients(batch)
    full = [p.grad.clone() for p in method.unet.down.parameters()]
    method.zero_grad()
    mean = method.observe(
        method.grids(batch.context, batch.forward_map), batch.target.queries, batch.forward_map, False
    ).mean
    (mean - batch.target.values).square().mean().backward()
    for a, p in zip(full, method.unet.down.parameters(), strict=True):
        torch.testing.assert_close(a, p.grad)
    assert method.scale_head.weight.grad is None  # the NLL (only it reaches the scale head) was not run


def test_build_method_fits_on_the_bundle_and_a_checkpoint_rebuilds_without_data(tmp_path):
    data = load_group("data", "glyphs", {"n_signals": 40, "size": 8, "context_fraction": 0.2})
    bundle = build_data(data, seed=0)
    config = load_group("method", "prior_residual", {"options": {"channels": [8, 16]}})
    field = build_field_for(load_group("field", "siren"), bundle)
    method = build_method(config, field, bundle)
    assert tuple(method.prior_shape.tolist()) == (8, 8, 1)
    assert method.prior_mean.shape == (64,) and method.prior_validation.shape[0] > 0
    torch.nn.init.normal_(method.unet.out.weight, std=0.1)  # a trained-looking residual
    save_checkpoint(tmp_path / "last.safetensors", method)
    resolved = {"kind": bundle.kind, "head": bundle.head, "in_dim": bundle.in_dim}
    rebuilt = build_method(config, build_field_for(load_group("field", "siren"), resolved), resolved)
    with pytest.raises(InputError, match="no fitted prior"):
        rebuilt.shape  # noqa: B018
    load_checkpoint(tmp_path / "last.safetensors", rebuilt, restore_rng=False)
    batch = bundle.eval_batch("test", count=2)
    args = (batch.context, batch.forward_map, batch.target.queries, batch.forward_map)
    torch.testing.assert_close(rebuilt.reconstruct(*args).mean, method.reconstruct(*args).mean)


def test_bad_input_is_one_line():
    config = FieldConfig(in_dim=3, head="occupancy", hidden=8)
    with pytest.raises(InputError, match=r"linear forward map over pixels \['image', 'ct'\], not 'shape'"):
        build_prior_residual("prior_residual", config, "shape")
    method = method_for("image", 1, images(10, 4, 1, seed=0))
    batch = image_batch(torch.rand(1, 4, 4, 1), 0.5)
    empty = Observations(batch.context.queries[:, :0], batch.context.values[:, :0])
    with pytest.raises(InputError, match="context is empty"):
        method.reconstruct(empty, batch.forward_map, batch.target.queries, batch.forward_map)
    with pytest.raises(InputError, match="3 channels, the field's head 1"):
        method_for("image", 1, images(10, 4, 3, seed=0))
    with pytest.raises(InputError, match=r"channels must be a list of positive integers, got 'x'"):
        build_prior_residual("prior_residual", FieldConfig(head="grey"), "image", channels="x")
    with pytest.raises(InputError, match="min_std must be >= 0"):
        method_for("image", 1, None, min_std=-1.0)


def test_training_on_ct_subsamples_whole_projections():
    train = PhantomDataset(20, 7, seed=4)
    batch = ct_batch(7, 3, signals=2)
    method = method_for("ct", 1, train, noise=1e-3, context_subsample=(2, 2))
    seen = []
    grids = method.grids
    method.grids = lambda context, fmap: seen.append(context) or grids(context, fmap)
    method.compute_gradients(batch)
    (context,) = seen
    d = batch.context.layout.n_detectors
    assert context.layout.n_angles == 2 and context.num_observations == 2 * d
    kept = {tuple(q) for q in context.queries[0].tolist()}
    assert kept < {tuple(q) for q in batch.context.queries[0].tolist()}  # whole projections of the context
    with pytest.raises(InputError, match=r"context_subsample must be \(lo, hi\)"):
        method_for("ct", 1, None, context_subsample=(3, 1))


def test_scoring_on_the_ground_truth_is_the_squared_error_of_the_slice():
    train = PhantomDataset(20, 7, seed=4)
    batch = ct_batch(7, 3, signals=2)
    method = method_for("ct", 1, train, noise=1e-3, score="ground_truth")
    torch.nn.init.normal_(method.unet.out.weight, std=0.1)
    metrics = method.compute_gradients(batch)
    queries, query_map = get_kind("ct").dense_queries(batch)
    slices = method.reconstruct(batch.context, batch.forward_map, queries, query_map).mean
    expected = (slices - batch.ground_truth.reshape(slices.shape)).square().mean()
    torch.testing.assert_close(metrics["mse"], expected)
    with pytest.raises(InputError, match="prior_residual score 'pixels'"):
        method_for("ct", 1, None, score="pixels")


def test_the_calibrated_factor_scales_what_is_predicted_and_never_what_trains():
    torch.manual_seed(0)
    train = images(30, 6, 1, seed=0)
    batch = image_batch(torch.stack([s.image for s in images(3, 6, 1, seed=1)]), 0.4)
    method = method_for("image", 1, train)
    torch.nn.init.normal_(method.scale_head.weight, std=0.1)  # a trained-looking variance head
    args = (batch.context, batch.forward_map, batch.target.queries, batch.forward_map)
    before, loss = method.reconstruct(*args), method.compute_gradients(batch)["loss"]
    state = {k: v.clone() for k, v in method.state_dict().items() if k != "std_scale"}
    method.std_scale.fill_(2.0)
    after = method.reconstruct(*args)
    torch.testing.assert_close(after.mean, before.mean)
    torch.testing.assert_close(after.variance, 4 * before.variance)
    torch.testing.assert_close(after.noise_variance, 4 * before.noise_variance)
    torch.testing.assert_close(method.compute_gradients(batch)["loss"], loss)
    method.load_state_dict(state)  # a checkpoint written before the factor existed
    assert float(method.std_scale) == 1.0
