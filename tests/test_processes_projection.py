"""The views kind's local features: projections recovered from rays, and cells that read the pixels
they project into (:mod:`genfield.processes.projection`)."""

from __future__ import annotations

import pytest
import torch
from einops import rearrange

from genfield.datasets.batch import Observations, ViewLayout
from genfield.errors import InputError
from genfield.fields.coords import grid_coords
from genfield.forward.volume import VolumeRenderer, camera_rays, look_at, ray_queries
from genfield.processes.local import sample_grid
from genfield.processes.projection import ProjectionFeatures, pixel_projections, pixel_uv


def _camera(position, height=6, width=9, focal=7.0, cx=None, cy=None):
    c2w = look_at(torch.tensor(position, dtype=torch.float32))[None]
    origins, directions = camera_rays(c2w, focal, height, width, cx, cy)
    return c2w[0], origins, directions


@pytest.mark.parametrize("cx, cy", [(None, None), (3.2, 2.6)])
def test_pixel_projections_send_points_on_each_ray_back_to_its_pixel(cx, cy):
    """The DLT projection of any point on a pixel's ray is that pixel, and its third row is the
    camera's optical axis (OpenGL: -z of the camera-to-world matrix), also off-centre."""
    c2w, origins, directions = _camera([2.0, -1.5, 1.2], cx=cx, cy=cy)
    projection = pixel_projections(directions, 6, 9)[0]
    for t in (0.5, 1.7, 4.0):
        q = (origins[0] + t * directions[0] - origins[0]) @ projection.T
        torch.testing.assert_close(q[:, :2] / q[:, 2:], pixel_uv(6, 9), atol=1e-5, rtol=0)
        assert (q[:, 2] > 0).all()
    torch.testing.assert_close(projection[2], -c2w[:3, 2], atol=1e-5, rtol=0)


def _context(position=(0.0, -2.6, 0.4), size=8, signals=1):
    _, origins, directions = _camera(list(position), size, size, focal=10.0)
    queries = ray_queries(origins, directions, 0.5, 5.0)
    values = torch.rand(signals, size * size, 3)
    layout = ViewLayout(1, size, size)
    return Observations(queries.expand(signals, -1, -1), values, layout)


def test_cells_read_the_pixel_they_project_into_and_nothing_behind_the_camera():
    torch.manual_seed(0)
    features = ProjectionFeatures(3, 8, resolution=6, image_channels=(4, 8), channels=(4, 8))
    context = _context()
    inputs = features.view_inputs(context)[0, 0]  # (P, 3 + 4 + 4)
    cells = grid_coords((6, 6, 6))
    assert inputs.shape == (216, 11)
    # the camera looks at the origin from -y: the whole cube is in front, most of it in view
    inside = inputs[:, 7]
    assert 0 < inside.sum() < 216
    # change one pixel: only the raw reads of cells that project within a pixel of it change
    changed = Observations(context.queries, context.values.clone(), context.layout)
    changed.values[0, 3 * 8 + 5] += 1.0
    delta = (features.view_inputs(changed)[0, 0, :, :3] - inputs[:, :3]).abs().amax(dim=-1)
    uv = inputs[:, 9:11]
    near = (uv - pixel_uv(8, 8)[3 * 8 + 5]).abs().amax(dim=-1) < 2 / 8
    assert (delta > 0).any() and not (delta[~near] > 0).any()
    # a camera inside the cube looking away from half of it: cells behind it read nothing
    behind = ProjectionFeatures(3, 8, resolution=6, image_channels=(4, 8), channels=(4, 8))
    inner = behind.view_inputs(_context(position=(0.0, -0.3, 0.0)))[0, 0]
    assert (inner[cells[:, 1] < -0.35, 7] == 0).all()  # y < camera's y: behind it
    assert (inner[cells[:, 1] < -0.35, :7] == 0).all()


def test_grid_cells_line_up_with_sample_grid():
    """The grid is laid out C order over grid_coords, the order sample_grid reads."""
    r = 5
    cells = grid_coords((r, r, r))
    grid = rearrange(cells[None], "s (a b c) f -> s f a b c", a=r, b=r)
    torch.testing.assert_close(sample_grid(grid, cells[None]), cells[None])


def test_views_ponp_reads_projected_features_per_signal():
    from genfield.fields.field import field_config
    from genfield.processes import build_process

    torch.manual_seed(0)
    fc = field_config("siren", in_dim=3, head="radiance", hidden=16, n_layers=2)
    model = build_process(
        "ponp",
        fc,
        "views",
        width=16,
        depth=1,
        latent_dim=0,
        local_features=True,
        local_options={"resolution": 6, "image_channels": [4, 8], "channels": [4, 8]},
    )
    assert type(model.local).__name__ == "ProjectionFeatures"
    for p in model.parameters():  # off the zero-initialised modulation, so the features reach the field
        p.data.add_(0.05 * torch.randn_like(p))
    context = _context(signals=2)
    renderer = VolumeRenderer(n_samples=6, stratified=False)
    targets = context.queries[:, :10]
    first = model.reconstruct(context, renderer, targets, renderer).mean
    swapped = Observations(context.queries, context.values.flip(0), context.layout)
    second = model.reconstruct(swapped, renderer, targets, renderer).mean
    torch.testing.assert_close(second.flip(0), first, atol=1e-5, rtol=1e-5)
    assert (first[0] - first[1]).abs().max() > 1e-5  # the prediction depends on the pixels
    with pytest.raises(InputError, match="whole context views"):
        model.local(Observations(context.queries[:, :20], context.values[:, :20]), renderer)
