"""Tests of the forward-map protocol: every registered map has its members, the adjoints are the
transposes of dense matrices built from the maps, variance propagation matches Monte Carlo, and the
query checks, deterministic variants and channel counts say what the maps do."""

import inspect
import math

import pytest
import torch

from genfield.errors import InputError
from genfield.fields.coords import grid_coords
from genfield.forward import FORWARD_MAPS, ForwardMap, ParallelBeamProjection, PointMap, VolumeRenderer
from genfield.forward.ct import ct_queries, fbp
from genfield.forward.grid import grid_field
from genfield.forward.volume import camera_rays, ray_queries

DTYPE = torch.float64

#: The protocol's members, as its users call them.
METHODS = {
    "__call__": ["field_fn", "queries"],
    "out_channels": ["field_channels"],
    "validate_queries": ["queries", "role"],
    "deterministic": [],
    "same_measurement": ["other"],
    "observe_carrying": ["paired_fn", "queries", "power"],
    "propagate_variance": ["field_fn", "variance_fn", "queries"],
    "adjoint": ["values", "queries", "grid_shape"],
}


def smooth_field(channels: int):
    """A smooth field on [-1, 1]^d with ``channels`` channels (density >= 0 in channel 0)."""

    def field_fn(points: torch.Tensor) -> torch.Tensor:
        k = torch.arange(1, channels + 1, dtype=points.dtype)
        phase = (points * torch.linspace(0.7, 1.3, points.shape[-1], dtype=points.dtype)).sum(
            -1, keepdim=True
        )
        return 1.5 + torch.sin(k * phase + k)

    return field_fn


def rays(n_side: int = 3) -> torch.Tensor:
    """Camera rays ``(N, 8)`` from a camera at distance 3 looking at the origin."""
    c2w = torch.eye(4, dtype=DTYPE)
    c2w[2, 3] = 3.0
    origins, directions = camera_rays(c2w, focal=2.0 * n_side, height=n_side, width=n_side)
    return ray_queries(origins, directions, 0.5, 5.0)


def example_queries(forward_map) -> torch.Tensor:
    """Valid queries ``(N, q)`` for each registered map."""
    if forward_map.name == "point":
        return torch.rand(7, 2, dtype=DTYPE, generator=torch.Generator().manual_seed(0)) * 2 - 1
    if forward_map.name == "ct":
        return ct_queries(torch.tensor([0.3, 1.9], dtype=DTYPE), 5)
    return rays()


def example_field_channels(forward_map) -> int:
    return 4 if forward_map.name == "volume" else 2


# -- the protocol's members ------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FORWARD_MAPS))
def test_every_registered_map_has_the_protocol_members(name):
    forward_map = FORWARD_MAPS[name]()
    assert forward_map.name == name
    assert isinstance(forward_map.linear, bool) and isinstance(forward_map.measurement, str)
    for method, parameters in METHODS.items():
        member = getattr(forward_map, method)
        assert callable(member), method
        assert list(inspect.signature(member).parameters) == parameters, method
        protocol = list(inspect.signature(getattr(ForwardMap, method)).parameters)[1:]
        assert protocol == parameters, method  # the list above is the protocol's
    # and the members do what they say on a real call
    queries = example_queries(forward_map)
    forward_map.validate_queries(queries)
    c = example_field_channels(forward_map)
    observed = forward_map.deterministic()(smooth_field(c), queries)
    assert observed.shape == (queries.shape[0], forward_map.out_channels(c))


# -- adjoints against dense matrices -----------------------------------------------------------------
def dense_matrix(forward_map, queries: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``A (N, P)`` of ``g -> forward_map(grid_field(g), queries)``: one basis grid per column."""
    p = math.prod(shape)
    basis = torch.eye(p, dtype=DTYPE).reshape(p, *shape, 1)
    columns = forward_map(grid_field(basis), queries.expand(p, *queries.shape))  # (P, N, 1)
    return columns[..., 0].T


ADJOINT_CASES = {
    "point 2-d": (PointMap(), lambda g: torch.rand(40, 2, dtype=DTYPE, generator=g) * 2.2 - 1.1, (5, 6)),
    "point 3-d": (PointMap(), lambda g: torch.rand(30, 3, dtype=DTYPE, generator=g) * 2 - 1, (3, 4, 5)),
    "ct disc": (
        ParallelBeamProjection(n_samples=11),
        lambda g: ct_queries(torch.rand(3, dtype=DTYPE, generator=g) * math.pi, 7),
        (6, 6),
    ),
    "ct square": (
        ParallelBeamProjection(n_samples=9, support="square"),
        lambda g: torch.stack(
            [torch.rand(20, generator=g) * 3, torch.rand(20, generator=g) * 2.8 - 1.4], -1
        ).to(DTYPE),
        (5, 7),
    ),
}


@pytest.mark.parametrize("case", sorted(ADJOINT_CASES))
def test_adjoint_is_the_transpose_of_the_dense_matrix_of_the_map(case):
    forward_map, make_queries, shape = ADJOINT_CASES[case]
    g = torch.Generator().manual_seed(1)
    queries = make_queries(g)
    matrix = dense_matrix(forward_map, queries, shape)
    assert forward_map.linear and matrix.abs().sum() > 0
    y = torch.randn(queries.shape[0], 1, dtype=DTYPE, generator=g)
    adjoint = forward_map.adjoint(y, queries, shape)
    assert adjoint.shape == (*shape, 1)
    torch.testing.assert_close(adjoint.reshape(-1), matrix.T @ y[:, 0])
    # <A x, y> = <x, A^T y> with a random grid x observed through the map itself
    x = torch.randn(1, *shape, 1, dtype=DTYPE, generator=g)
    ax = forward_map(grid_field(x), queries[None])[0]
    torch.testing.assert_close((ax * y).sum(), (x[0] * adjoint).sum())


def test_adjoint_runs_over_leading_dimensions_and_under_vmap():
    forward_map = ParallelBeamProjection(n_samples=8)
    g = torch.Generator().manual_seed(2)
    queries = ct_queries(torch.rand(2, 3, 2, dtype=DTYPE, generator=g) * math.pi, 5)  # (2, 3, 10, 2)
    values = torch.randn(2, 3, 10, 2, dtype=DTYPE, generator=g)
    batched = forward_map.adjoint(values, queries, (4, 4))
    assert batched.shape == (2, 3, 4, 4, 2)
    torch.testing.assert_close(batched[1, 2], forward_map.adjoint(values[1, 2], queries[1, 2], (4, 4)))
    mapped = torch.func.vmap(lambda y, q: forward_map.adjoint(y, q, (4, 4)))(values[0], queries[0])
    torch.testing.assert_close(mapped, batched[0])


def test_ct_adjoint_approximates_the_back_projection_scaled_by_cell_area_over_detector_spacing():
    d, r, a = 48, 48, 5
    angles = torch.linspace(0, math.pi, a + 1, dtype=DTYPE)[:-1]
    queries = ct_queries(angles, d)
    t = queries[:, 1:]
    profile = torch.exp(-4 * (t - 0.2 * torch.cos(queries[:, :1])) ** 2)  # smooth, per view
    adjoint = ParallelBeamProjection(n_samples=2 * d).adjoint(profile, queries, (r, r))[..., 0]
    # the plain back-projection sum_a q_a(t_a(x)) is (A / pi) times unfiltered FBP
    reference = fbp(profile.reshape(a, d), angles, r, filter_name=None, circle=False) * (a / math.pi)
    scale = (2 / d) / (2 / r) ** 2
    inside = grid_coords((r, r), dtype=DTYPE).square().sum(-1).reshape(r, r) < 0.8
    error = (adjoint * scale - reference)[inside].norm() / reference[inside].norm()
    assert error < 0.05, error


def test_a_nonlinear_map_has_no_adjoint():
    renderer = VolumeRenderer()
    assert not renderer.linear
    with pytest.raises(InputError, match="volume forward map is not linear"):
        renderer.adjoint(torch.zeros(3, 3), rays(), (4, 4, 4))


# -- variance propagation -------------------------------------------------------------------------
def noisy(field_fn, variance_fn, draws: int):
    """``draws`` fields ``f + sqrt(v) eps`` with independent noise at every point they are read at."""

    def sample(points: torch.Tensor) -> torch.Tensor:
        return field_fn(points) + variance_fn(points).sqrt() * torch.randn_like(field_fn(points))

    return sample


def variance_field(points: torch.Tensor) -> torch.Tensor:
    return 0.02 + 0.1 * points[..., :1].square()


def test_ct_variance_propagation_matches_monte_carlo_with_independent_noise():
    torch.manual_seed(0)
    forward_map = ParallelBeamProjection(n_samples=12)
    queries = ct_queries(torch.tensor([0.4, 2.0], dtype=DTYPE), 4)  # (8, 2)
    field = smooth_field(1)
    predicted = forward_map.propagate_variance(field, variance_field, queries)
    draws = 20000
    samples = forward_map(noisy(field, variance_field, draws), queries.expand(draws, -1, -1))
    estimate = samples.var(0)
    torch.testing.assert_close(estimate, predicted, rtol=0.06, atol=0)
    # fully correlated errors along a ray (power 1 on the std) would be far larger: the test tells
    _, correlated_std = forward_map.observe_carrying(lambda p: (field(p), variance_field(p).sqrt()), queries)
    assert (correlated_std.square() > 3 * predicted).all()
    # the mean is the noiseless projection
    torch.testing.assert_close(samples.mean(0), forward_map(field, queries), atol=0.02, rtol=0)


def test_point_variance_is_the_variance_field_at_the_points():
    points = example_queries(PointMap())
    torch.testing.assert_close(
        PointMap().propagate_variance(smooth_field(1), variance_field, points), variance_field(points)
    )


def test_volume_variance_through_fixed_rendering_weights_matches_monte_carlo_on_the_colour():
    """The stated approximation: exact when the density is known and only the colour is noisy."""
    torch.manual_seed(0)
    renderer = VolumeRenderer(n_samples=16).deterministic()
    queries = rays(2)
    field = smooth_field(4)

    def colour_variance(points):
        return variance_field(points).expand(*points.shape[:-1], 3)

    def noisy_colour(points):
        values = field(points)
        noise = colour_variance(points).sqrt() * torch.randn_like(values[..., 1:])
        return torch.cat([values[..., :1], values[..., 1:] + noise], dim=-1)

    predicted = renderer.propagate_variance(field, colour_variance, queries)
    draws = 20000
    estimate = renderer(noisy_colour, queries.expand(draws, -1, -1)).var(0)
    torch.testing.assert_close(estimate, predicted, rtol=0.06, atol=0)


def test_observe_carrying_with_power_one_is_the_map_of_the_carried_channels():
    queries = example_queries(ParallelBeamProjection())
    field = smooth_field(3)
    ct = ParallelBeamProjection(n_samples=10)
    observed, carried = ct.observe_carrying(lambda p: (field(p)[..., :1], field(p)[..., 1:]), queries)
    torch.testing.assert_close(torch.cat([observed, carried], -1), ct(field, queries))
    # volume: the colour carried with the rendering weights is the rendered colour less the background
    renderer = VolumeRenderer(n_samples=12).deterministic()
    field = smooth_field(4)
    rendered = renderer.render(field, rays())
    rgb, carried = renderer.observe_carrying(lambda p: (field(p), field(p)[..., 1:]), rays())
    torch.testing.assert_close(rgb, rendered["rgb"])
    torch.testing.assert_close(carried, rendered["rgb"] - (1 - rendered["opacity"][..., None]))


# -- queries, deterministic variants, channels, measurements --------------------------------------
@pytest.mark.parametrize(
    "forward_map, width, shape",
    [(ParallelBeamProjection(), 3, r"\(\.\.\., N, 2\)"), (VolumeRenderer(), 6, r"\(\.\.\., N, 8\)")],
)
def test_validate_queries_names_the_map_and_the_expected_shape(forward_map, width, shape):
    with pytest.raises(InputError, match=rf"{forward_map.name} forward map: context queries must be {shape}"):
        forward_map.validate_queries(torch.zeros(4, width), "context")
    with pytest.raises(InputError, match=forward_map.name):
        forward_map.validate_queries(torch.zeros(8))
    forward_map.validate_queries(example_queries(forward_map))


def test_point_queries_outside_the_domain_are_rejected():
    with pytest.raises(InputError, match=r"point forward map: query queries must be \(\.\.\., N, d\).*1.5"):
        PointMap().validate_queries(torch.tensor([[0.0, 1.5]]), "query")
    with pytest.raises(InputError, match=r"point forward map.*\(\.\.\., N, d\)"):
        PointMap().validate_queries(torch.zeros(3))
    PointMap().validate_queries(torch.tensor([[1.0, -1.0]]))


def test_deterministic_variant_gives_the_same_output_on_two_calls():
    torch.manual_seed(0)
    renderer = VolumeRenderer(n_samples=8, n_importance=8)
    field = smooth_field(4)
    assert not torch.equal(renderer(field, rays()), renderer(field, rays()))  # stratified: it varies
    fixed = renderer.deterministic()
    torch.testing.assert_close(fixed(field, rays()), fixed(field, rays()), rtol=0, atol=0)
    for forward_map in (PointMap(), ParallelBeamProjection(n_samples=8)):
        queries = example_queries(forward_map)
        once = forward_map.deterministic()(smooth_field(2), queries)
        torch.testing.assert_close(
            once, forward_map.deterministic()(smooth_field(2), queries), rtol=0, atol=0
        )


@pytest.mark.parametrize("channels", [1, 3])
def test_out_channels_matches_the_output(channels):
    for forward_map in (PointMap(), ParallelBeamProjection(n_samples=6)):
        out = forward_map(smooth_field(channels), example_queries(forward_map))
        assert out.shape[-1] == forward_map.out_channels(channels)
    assert VolumeRenderer(n_samples=4)(smooth_field(4), rays()).shape[-1] == VolumeRenderer().out_channels(4)
    with pytest.raises(InputError, match="volume forward map needs"):
        VolumeRenderer().out_channels(channels)


def test_same_measurement_compares_what_is_observed_not_the_settings():
    assert ParallelBeamProjection(n_samples=8).same_measurement(ParallelBeamProjection(n_samples=64))
    assert VolumeRenderer().same_measurement(VolumeRenderer().deterministic())
    assert not ParallelBeamProjection().same_measurement(PointMap())
    assert not PointMap().same_measurement(VolumeRenderer())
    assert not PointMap().same_measurement(object())
