"""Camera rays and the volume renderer, checked against hand computations and analytic densities."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from genfield.forward import build_forward_map
from genfield.forward.volume import VolumeRenderer, camera_rays, cube_interval, ray_queries, sample_pdf


def rotation_y(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]], dtype=torch.float64)


def pose(rotation: torch.Tensor, position) -> torch.Tensor:
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, :3] = rotation
    c2w[:3, 3] = torch.as_tensor(position, dtype=torch.float64)
    return c2w


def axis_rays(impacts, z0: float = 3.0, dtype=torch.float64) -> torch.Tensor:
    """Rays from (b, 0, z0) along -z, clipped to the cube: queries (len(impacts), 8)."""
    origins = torch.tensor([[b, 0.0, z0] for b in impacts], dtype=dtype)
    directions = torch.tensor([[0.0, 0.0, -1.0]] * len(impacts), dtype=dtype)
    return ray_queries(origins, directions, 0.5, 6.0)


def sphere_field(radius: float, sigma: float, colour=(0.2, 0.5, 0.8)):
    """A uniform sphere of density ``sigma`` at the origin, with a constant colour everywhere."""

    def field_fn(points: torch.Tensor) -> torch.Tensor:
        inside = (points.norm(dim=-1, keepdim=True) < radius).to(points.dtype)
        rgb = torch.tensor(colour, dtype=points.dtype).expand(*points.shape[:-1], 3)
        return torch.cat([sigma * inside, rgb], dim=-1)

    return field_fn


def blob_field(sigma: float = 8.0, width: float = 0.25, centre=(0.1, 0.0, 0.0)):
    """A smooth Gaussian blob of density with a smoothly varying colour."""
    centre = torch.tensor(centre)

    def field_fn(points: torch.Tensor) -> torch.Tensor:
        r2 = ((points - centre.to(points.dtype)) ** 2).sum(-1, keepdim=True)
        density = sigma * torch.exp(-r2 / (2 * width**2))
        rgb = torch.sigmoid(
            torch.cat([2 * points[..., :1], -points[..., 1:2], points[..., 2:]], -1)
        )
        return torch.cat([density, rgb], dim=-1)

    return field_fn


# ---------------------------------------------------------------------------------------------
# rays


def test_centre_pixel_looks_down_minus_z_of_the_camera():
    c2w = pose(rotation_y(0.7), [1.0, 2.0, 3.0])
    origins, directions = camera_rays(c2w, focal=10.0, height=5, width=7)
    centre = 2 * 7 + 3  # row 2, column 3 of a 5 x 7 image: the principal point
    assert torch.allclose(directions[centre], -c2w[:3, 2], atol=1e-12)
    assert torch.allclose(origins, c2w[:3, 3].expand(35, 3))
    assert torch.allclose(directions.norm(dim=-1), torch.ones(35, dtype=torch.float64))


def test_corner_pixel_direction_by_hand():
    c2w = pose(rotation_y(math.pi / 2), [0.0, 0.0, 0.0])  # camera -z now looks down world -x
    focal, height, width = 4.0, 4, 6
    _, directions = camera_rays(c2w, focal, height, width, normalize=False)
    # top-left pixel centre (0.5, 0.5): camera direction ((0.5 - 3) / 4, -(0.5 - 2) / 4, -1)
    camera = torch.tensor([-2.5 / 4, 1.5 / 4, -1.0], dtype=torch.float64)
    assert torch.allclose(directions[0], rotation_y(math.pi / 2) @ camera)
    # by hand: R_y(90) maps camera x -> world -z, camera y -> world y, camera z -> world x
    assert torch.allclose(
        directions[0], torch.tensor([-1.0, 1.5 / 4, 2.5 / 4], dtype=torch.float64)
    )


def test_rays_project_back_to_their_pixel_centres():
    """An independent pinhole projection of points on each ray lands on the pixel centre."""
    torch.manual_seed(0)
    rotation = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64)).Q
    rotation = rotation * torch.sign(torch.det(rotation))
    c2w = pose(rotation, [0.3, -1.0, 2.0])
    focal, height, width, cx, cy = 9.0, 5, 8, 4.3, 2.2
    origins, directions = camera_rays(c2w, focal, height, width, cx, cy)
    points = origins + 2.5 * directions
    camera = (points - c2w[:3, 3]) @ rotation  # world -> camera: R^T (x - t)
    u = focal * camera[:, 0] / -camera[:, 2] + cx
    v = -focal * camera[:, 1] / -camera[:, 2] + cy
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    assert torch.allclose(u, cols.flatten().double() + 0.5)
    assert torch.allclose(v, rows.flatten().double() + 0.5)


def test_camera_rays_batch_dims_and_per_camera_focal():
    c2w = torch.stack([pose(rotation_y(a), [0.0, 0.0, 2.0]) for a in (0.0, 0.5, 1.0)]).reshape(
        3, 1, 4, 4
    )
    focal = torch.tensor([[5.0], [6.0], [7.0]], dtype=torch.float64)
    origins, directions = camera_rays(c2w, focal, 3, 4)
    assert directions.shape == (3, 1, 12, 3) and origins.shape == (3, 1, 12, 3)
    for k in range(3):
        _, single = camera_rays(c2w[k, 0], float(focal[k, 0]), 3, 4)
        assert torch.allclose(directions[k, 0], single)


def test_ray_queries_clip_to_the_cube():
    queries = axis_rays([0.0, 0.5, 1.5])
    assert queries.shape == (3, 8)
    assert torch.allclose(queries[0, 6:], torch.tensor([2.0, 4.0], dtype=torch.float64))
    assert torch.allclose(queries[1, 6:], torch.tensor([2.0, 4.0], dtype=torch.float64))
    assert queries[2, 6] == queries[2, 7] == 6.0  # a miss: empty interval at far
    t0, t1 = cube_interval(torch.tensor([[0.0, 0.0, 0.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    assert torch.allclose(torch.stack([t0, t1]).flatten(), torch.tensor([-1.0, 1.0]))


# ---------------------------------------------------------------------------------------------
# the renderer


def test_the_built_renderer_observes_a_homogeneous_cube_as_the_beer_lambert_law_says():
    """Through the forward-map call ``map(field_fn, queries)``: a field of constant density ``sigma``
    and colour ``c`` seen through the cube (a chord of 2) composites to ``c (1 - T) + T`` on white,
    ``T = exp(-2 sigma)``, whatever the samples (piecewise-constant quadrature is exact here)."""
    renderer = build_forward_map("volume", n_samples=8)
    assert renderer.name == "volume" and renderer.measurement == "radiance" and not renderer.linear
    assert renderer.out_channels(4) == 3  # density + RGB in, RGB out
    sigma, colour = 0.7, torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)

    def field_fn(points: torch.Tensor) -> torch.Tensor:
        density = torch.full((*points.shape[:-1], 1), sigma, dtype=points.dtype)
        return torch.cat([density, colour.expand(*points.shape[:-1], 3)], dim=-1)

    queries = axis_rays([0.0, 0.3, 0.9])
    transmittance = math.exp(-2 * sigma)
    expected = (colour * (1 - transmittance) + transmittance).expand(3, 3)
    torch.testing.assert_close(renderer(field_fn, queries), expected)  # stratified samples
    deterministic = renderer.deterministic()
    assert not deterministic.stratified
    torch.testing.assert_close(deterministic(field_fn, queries), expected)


@pytest.mark.parametrize("n_importance", [0, 64])
def test_uniform_sphere_transmittance_is_exp_minus_sigma_chord(n_importance):
    radius, sigma = 0.5, 3.0
    impacts = [0.0, 0.2, 0.35, 0.45]
    renderer = VolumeRenderer(n_samples=512, n_importance=n_importance, stratified=False)
    out = renderer.render(sphere_field(radius, sigma), axis_rays(impacts))
    chord = 2 * torch.sqrt(radius**2 - torch.tensor(impacts, dtype=torch.float64) ** 2)
    expected = torch.exp(-sigma * chord)
    transmittance = 1 - out["opacity"]
    assert torch.all((transmittance - expected).abs() / expected < 0.01), (transmittance, expected)
    # unnormalised directions (t in units of |d|) give the same physics
    scaled = axis_rays(impacts)
    scaled[:, 3:6] *= 2.0
    scaled[:, 6:] /= 2.0
    again = renderer.render(sphere_field(radius, sigma), scaled)
    assert torch.allclose(again["opacity"], out["opacity"], atol=1e-3)


def test_constant_colour_where_opaque_and_background_elsewhere():
    colour = (0.2, 0.5, 0.8)
    field_fn = sphere_field(0.5, 50.0, colour)
    queries = axis_rays([0.0, 0.1, 0.8, 1.5])
    white = VolumeRenderer(n_samples=128, stratified=False)(field_fn, queries)
    black = VolumeRenderer(n_samples=128, stratified=False, white_background=False)(
        field_fn, queries
    )
    expected = torch.tensor(colour, dtype=torch.float64)
    assert torch.allclose(white[:2], expected.expand(2, 3), atol=1e-6)
    assert torch.allclose(white[2:], torch.ones(2, 3, dtype=torch.float64))
    assert torch.allclose(black[2:], torch.zeros(2, 3, dtype=torch.float64))
    depth = VolumeRenderer(n_samples=512, stratified=False).render(field_fn, queries)["depth"]
    # expected termination: the front surface (t = 2.5) plus the mean free path 1 / sigma
    assert abs(float(depth[0]) - (2.5 + 1 / 50.0)) < 2e-3
    assert float(depth[3]) == 6.0  # nothing hit: far


def test_gradients_reach_a_small_fields_parameters():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.Tanh(), nn.Linear(16, 4))
    params = dict(net.named_parameters())

    def field_fn(points):
        raw = functional_call(net, params, (points,))
        return torch.cat([nn.functional.softplus(raw[..., :1]), torch.sigmoid(raw[..., 1:])], -1)

    queries = axis_rays([0.0, 0.3, 0.6], dtype=torch.float32)
    for n_importance in (0, 8):
        net.zero_grad()
        rgb = VolumeRenderer(n_samples=16, n_importance=n_importance)(field_fn, queries)
        rgb.square().sum().backward()
        for name, p in params.items():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name


def test_gradient_matches_finite_differences():
    """The renderer's autograd gradient equals central differences (fixed samples, float64)."""

    def render(sigma_scale, colour_shift):
        def field_fn(points):
            r2 = (points**2).sum(-1, keepdim=True)
            density = sigma_scale * torch.exp(-r2 / 0.1)
            rgb = torch.sigmoid(points + colour_shift)
            return torch.cat([density, rgb], dim=-1)

        queries = axis_rays([0.0, 0.2, 0.4])
        return VolumeRenderer(n_samples=24, stratified=False)(field_fn, queries)

    inputs = (
        torch.tensor(4.0, dtype=torch.float64, requires_grad=True),
        torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(render, inputs)


def test_hierarchical_sampling_keeps_the_result_and_concentrates_samples():
    field_fn = blob_field(sigma=12.0, width=0.12)
    queries = axis_rays([0.0, 0.1, 0.2, 0.3], dtype=torch.float64)
    reference = VolumeRenderer(n_samples=2048, stratified=False)(field_fn, queries)
    coarse = VolumeRenderer(n_samples=16, stratified=False).render(field_fn, queries)
    fine = VolumeRenderer(n_samples=16, n_importance=48, stratified=False).render(field_fn, queries)
    assert fine["t"].shape[-1] == 64
    assert (fine["rgb"] - reference).abs().max() < 5e-3
    # where the weights are: within +-0.25 of the blob's depth (t = 3 along these rays)
    near_blob = lambda t: ((t - 3.0).abs() < 0.25).double().mean()  # noqa: E731
    assert near_blob(fine["t"]) > 2.5 * near_blob(coarse["t"])
    # in training (stratified), the resampled intervals cut the variance of the estimate
    torch.manual_seed(0)
    draws = {
        n_importance: torch.stack(
            [
                VolumeRenderer(n_samples=16, n_importance=n_importance)(field_fn, queries)
                for _ in range(40)
            ]
        )
        for n_importance in (0, 48)
    }
    assert draws[48].std(0).max() < 0.3 * draws[0].std(0).max()
    assert (draws[48].mean(0) - reference).abs().max() < 5e-3


def test_leading_dims_and_vmap():
    field_fn = blob_field()
    queries = axis_rays([0.0, 0.1, 0.2, 0.3, 0.4, 0.5], dtype=torch.float32).reshape(2, 3, 8)
    renderer = VolumeRenderer(n_samples=16, n_importance=8, stratified=False)
    batched = renderer(field_fn, queries)
    assert batched.shape == (2, 3, 3)
    flat = renderer(field_fn, queries.reshape(6, 8))
    assert torch.allclose(batched.reshape(6, 3), flat, atol=1e-6)
    assert torch.allclose(vmap(lambda q: renderer(field_fn, q))(queries), batched, atol=1e-6)


def test_stratified_samples_differ_under_vmap_randomness_different():
    field_fn = blob_field()
    one = axis_rays([0.0, 0.2], dtype=torch.float32)
    queries = one.expand(4, 2, 8)
    renderer = VolumeRenderer(n_samples=8, n_importance=4, stratified=True)
    t = vmap(lambda q: renderer.render(field_fn, q)["t"], randomness="different")(queries)
    assert t.shape == (4, 2, 12)
    assert not torch.allclose(t[0], t[1])
    lower, upper = one[:, 6:7], one[:, 7:8]
    assert torch.all((t >= lower - 1e-6) & (t <= upper + 1e-6))
    assert torch.all(t.diff(dim=-1) >= 0)  # sorted along the ray


def test_sample_pdf_inverts_the_cdf():
    edges = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    weights = torch.tensor([[0.0, 3.0, 1.0, 0.0]], dtype=torch.float64)
    fixed = sample_pdf(edges, weights, 4, stratified=False)
    # quantiles 1/8, 3/8, 5/8, 7/8 of a pdf with mass 3/4 on [1, 2] and 1/4 on [2, 3]
    assert torch.allclose(
        fixed, torch.tensor([[1 + 1 / 6, 1.5, 1 + 5 / 6, 2.5]], dtype=torch.float64), atol=1e-4
    )
    torch.manual_seed(0)
    jittered = sample_pdf(edges, weights, 4, stratified=True)
    assert not torch.allclose(jittered, fixed)
    assert torch.all((jittered > 1.0 - 1e-4) & (jittered < 3.0 + 1e-4))
