"""Local features of the neural processes: the set convolution's evidence grid and the U-Net trunk."""

from __future__ import annotations

import pytest
import torch

from genfield.datasets.batch import Observations
from genfield.errors import InputError
from genfield.fields.coords import grid_coords
from genfield.fields.field import field_config
from genfield.forward import PointMap
from genfield.processes import build_process
from genfield.processes.local import SetConvFeatures, gaussian_blur
from genfield.processes.unet import UNet


def test_unet_keeps_any_grid_side_and_mixes_neighbourhoods():
    torch.manual_seed(0)
    net = UNet(3, 5, (4, 8, 8))
    for side in (7, 8, 13):
        grid = torch.randn(2, 3, side, side)
        out = net(grid)
        assert out.shape == (2, 5, side, side) and torch.isfinite(out).all()
    # a change at one cell reaches cells beyond a 3x3 neighbourhood (receptive field of the levels)
    grid = torch.zeros(1, 3, 16, 16)
    bumped = grid.clone()
    bumped[0, :, 8, 8] = 1.0
    moved = (net(bumped) - net(grid)).abs().sum(1)[0]
    assert moved[8, 14] > 0 and moved[2, 8] > 0


def test_set_convolution_evidence_is_the_context_on_its_pixels():
    """At the image side, each pixel centre owns one cell: values and density by index, not by splat."""
    torch.manual_seed(0)
    side, n = 6, 10
    coords = grid_coords((side, side))
    index = torch.stack([torch.randperm(side * side)[:n] for _ in range(2)])
    values = torch.rand(2, n, 1)
    context = Observations(coords[index], values)
    evidence = SetConvFeatures(1, 8, resolution=side, scales=()).evidence(context, PointMap())
    expected_values = torch.zeros(2, side * side, 1)
    expected_density = torch.zeros(2, side * side, 1)
    for s in range(2):
        expected_values[s, index[s]] = values[s]
        expected_density[s, index[s]] = 1.0
    flat = evidence.reshape(2, side * side, -1)
    torch.testing.assert_close(flat[..., :1], expected_values, atol=1e-5, rtol=0)
    torch.testing.assert_close(flat[..., 1:2], expected_density, atol=1e-5, rtol=0)
    torch.testing.assert_close(flat[0, :, 2:], coords)


def test_set_convolution_evidence_off_the_grid_is_a_weighted_mean_of_nearby_values():
    torch.manual_seed(0)
    points = torch.rand(1, 50, 2) * 1.6 - 0.8  # inside the outer cell centres
    values = torch.rand(1, 50, 3)
    evidence = SetConvFeatures(3, 8, resolution=5, coordinates=False, scales=()).evidence(
        Observations(points, values), PointMap()
    )
    mean, density = evidence[..., :3], evidence[..., 3]
    covered = density >= 0.01
    assert covered.any()
    # a convex combination of the context values, cell by cell
    assert (mean[covered] >= values.amin() - 1e-6).all() and (mean[covered] <= values.amax() + 1e-6).all()
    assert (mean[~covered].abs() <= values.amax()).all()
    torch.testing.assert_close(density.sum(), torch.tensor(50.0))  # bilinear weights of inner points sum to 1


@pytest.mark.parametrize("shape", [(11, 9), (7, 5, 6)])
@pytest.mark.parametrize("scale", [0.7, 1.0, 2.5])
def test_gaussian_blur_matches_scipy_with_zero_padding(scale, shape):
    ndimage = pytest.importorskip("scipy.ndimage")
    torch.manual_seed(0)
    grid = torch.rand(2, *shape, 3, dtype=torch.float64)
    ours = gaussian_blur(grid, scale)
    for s in range(2):
        for c in range(3):
            reference = ndimage.gaussian_filter(grid[s, ..., c].numpy(), scale, mode="constant", truncate=3.0)
            torch.testing.assert_close(ours[s, ..., c], torch.from_numpy(reference), atol=1e-10, rtol=0)


def test_unet_in_3d_keeps_any_grid_side_and_rejects_the_wrong_dimension():
    torch.manual_seed(0)
    net = UNet(2, 3, (4, 8), dims=3)
    for shape in ((5, 6, 7), (8, 8, 8)):
        out = net(torch.randn(2, 2, *shape))
        assert out.shape == (2, 3, *shape) and torch.isfinite(out).all()
    grid = torch.zeros(1, 2, 8, 8, 8)
    bumped = grid.clone()
    bumped[0, :, 4, 4, 4] = 1.0
    moved = (net(bumped) - net(grid)).abs().sum(1)[0]
    assert moved[4, 4, 7] > 0 and moved[1, 4, 4] > 0  # beyond one 3x3x3 neighbourhood
    with pytest.raises(InputError, match="3-D grids"):
        net(torch.randn(1, 2, 8, 8))
    with pytest.raises(InputError, match="dims=4"):
        UNet(2, 3, (4,), dims=4)


def test_set_convolution_in_3d_is_the_context_on_its_cells():
    """Points at the centres of a 4^3 grid: values and density by index; a 2-d context is refused."""
    torch.manual_seed(0)
    side = 4
    coords = grid_coords((side,) * 3)
    index = torch.randperm(side**3)[:9]
    values = torch.rand(1, 9, 1)
    features = SetConvFeatures(1, 5, resolution=side, channels=(4, 8), scales=(1.0,), dims=3)
    evidence = features.evidence(Observations(coords[index][None], values), PointMap())
    assert evidence.shape == (1, side, side, side, 2 * 2 + 3)
    flat = evidence.reshape(side**3, -1)
    expected = torch.zeros(side**3, 2)
    expected[index, 0], expected[index, 1] = values[0, :, 0], 1.0
    torch.testing.assert_close(flat[:, :2], expected, atol=1e-5, rtol=0)
    torch.testing.assert_close(flat[:, -3:], coords)
    indicator = expected[:, 1].reshape(1, side, side, side, 1)
    torch.testing.assert_close(evidence[..., 3], gaussian_blur(indicator, 1.0)[..., 0])
    assert features(Observations(coords[index][None], values), PointMap()).shape == (1, 5, side, side, side)
    with pytest.raises(InputError, match="3-d point queries"):
        features.evidence(Observations(torch.rand(1, 9, 2), values), PointMap())


def test_sample_grid_in_3d_reads_the_cell_centres():
    from genfield.processes.local import sample_grid

    torch.manual_seed(0)
    grid = torch.randn(2, 3, 4, 5, 6)
    centres = grid_coords((4, 5, 6))
    read = sample_grid(grid, centres[None].expand(2, -1, -1))
    torch.testing.assert_close(read, grid.reshape(2, 3, -1).transpose(1, 2), atol=1e-5, rtol=0)


def test_multiscale_evidence_is_a_normalised_convolution_of_the_context():
    """Each scale's values are the Gaussian-weighted mean of the context (constant in, constant out)."""
    torch.manual_seed(0)
    side = 12
    coords = grid_coords((side, side))
    index = torch.randperm(side * side)[:15]
    values = torch.full((1, 15, 2), 0.3)
    features = SetConvFeatures(2, 8, resolution=side, coordinates=False, scales=(1.0, 3.0))
    evidence = features.evidence(Observations(coords[index][None], values), PointMap())
    assert evidence.shape == (1, side, side, 3 * 3)
    for start in (3, 6):  # (values, density) of each scale
        smooth, density = evidence[..., start : start + 2], evidence[..., start + 2]
        reached = density > 1e-3
        torch.testing.assert_close(smooth[reached], torch.full_like(smooth[reached], 0.3))
        # the density is the blurred indicator of the context pixels
        indicator = torch.zeros(1, side, side, 1)
        indicator.view(1, -1, 1)[0, index] = 1.0
        scale = 1.0 if start == 3 else 3.0
        torch.testing.assert_close(density, gaussian_blur(indicator, scale)[..., 0])
    # the wider Gaussian reaches cells the narrow one does not
    assert (evidence[..., 8] > 1e-3).sum() > (evidence[..., 5] > 1e-3).sum()
    with pytest.raises(InputError, match="scales"):
        SetConvFeatures(1, 8, scales=(0.0,))


def test_image_ponp_reads_local_features_and_rejects_non_linear_maps():
    torch.manual_seed(0)
    fc = field_config("siren", in_dim=2, head="grey", hidden=16, n_layers=2)
    model = build_process(
        "ponp",
        fc,
        "image",
        width=16,
        depth=1,
        latent_dim=0,
        local_options={"resolution": 8, "channels": [4, 8]},
    )
    assert model.config.local_features  # the image kind's default
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    coords = grid_coords((8, 8))
    context = Observations(coords[None, :12].expand(2, -1, -1), torch.rand(2, 12, 1))
    points = coords[None].expand(2, -1, -1)
    first = model.reconstruct(context, PointMap(), points, PointMap()).mean
    other = Observations(context.queries, context.values.flip(0))
    second = model.reconstruct(other, PointMap(), points, PointMap()).mean
    torch.testing.assert_close(first.flip(0), second, atol=1e-5, rtol=1e-5)  # per signal
    assert (first[0] - first[1]).abs().max() > 1e-4  # the prediction depends on the context values
    with pytest.raises(InputError, match="not linear"):
        model.local(context, _NonLinearPoints())
    # a comparison budget without test-time steps has one setting, not a duplicate "TTO 0"
    assert model.settings({"tto_steps": 0}) == [("one pass", 0)]
    assert model.settings({"tto_steps": 3}) == [("one pass", 0), ("TTO 3", 3)]


class _NonLinearPoints(PointMap):
    linear = False


def test_shape_ponp_reads_a_3d_feature_grid_by_default():
    """The shape kind's PONP default: set-convolution features over a volume, read per point."""
    torch.manual_seed(0)
    fc = field_config("siren", in_dim=3, head="occupancy", hidden=16, n_layers=2)
    model = build_process(
        "ponp",
        fc,
        "shape",
        width=16,
        depth=1,
        latent_dim=0,
        local_options={"resolution": 6, "channels": [4, 8]},
    )
    assert model.config.local_features and model.local.dims == 3
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    points = torch.rand(2, 40, 3) * 1.8 - 0.9
    context = Observations(points[:, :20], (points[:, :20, :1] > 0).float())
    first = model.reconstruct(context, PointMap(), points, PointMap()).mean
    flipped = Observations(context.queries, 1.0 - context.values)
    second = model.reconstruct(flipped, PointMap(), points, PointMap()).mean
    assert first.shape == (2, 40, 1) and (first - second).abs().max() > 1e-4  # the labels are read
    # each signal's prediction depends on its own context only
    swapped = Observations(context.queries.flip(0), context.values.flip(0))
    torch.testing.assert_close(
        model.reconstruct(swapped, PointMap(), points.flip(0), PointMap()).mean, first.flip(0)
    )
