"""Tests of the figure half of genfield.viz: images, CT panels, meshes, previews, videos, curves.

Every picture is written to a real file under ``tmp_path`` and read back with imageio (or trimesh);
the geometry is checked against analytic shapes.
"""

from __future__ import annotations

import math

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh
from skimage.metrics import peak_signal_noise_ratio

from genfield.errors import InputError
from genfield.fields.field import build_field
from genfield.forward.volume import VolumeRenderer, camera_rays
from genfield.interface import Prediction
from genfield.viz.figures import PANEL, STD_CMAP, ct_figure, grid_figure, image_grid, psnr, save_image
from genfield.viz.meshes import evaluate_grid, extract_mesh, render_mesh_preview, save_mesh
from genfield.viz.plots import (
    plot_cost_vs_steps,
    plot_curves,
    plot_psnr_vs_steps,
    plot_training_losses,
    smooth,
)
from genfield.viz.video import look_at, orbit_poses, render_view, save_video, turntable


def sphere_sdf(radius: float, centre=(0.0, 0.0, 0.0)):
    centre = torch.tensor(centre)
    return lambda p: (p - centre).norm(dim=-1, keepdim=True) - radius


# -- images ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("channels", [1, 3])
def test_save_image_round_trip(tmp_path, channels):
    image = torch.rand(9, 13, channels, generator=torch.Generator().manual_seed(0))
    path = save_image(tmp_path / "sub" / "x.png", image)
    back = iio.imread(path)
    assert back.shape == ((9, 13) if channels == 1 else (9, 13, 3))
    assert back.dtype == np.uint8
    np.testing.assert_allclose(back.reshape(9, 13, channels) / 255.0, image.numpy(), atol=0.5 / 255)


def test_save_image_rejects_bad_shapes(tmp_path):
    with pytest.raises(InputError, match="x.png"):
        save_image(tmp_path / "x.png", torch.zeros(4, 4, 2))


def test_psnr_matches_skimage():
    rng = np.random.default_rng(0)
    a, b = rng.random((8, 8, 3)), rng.random((8, 8, 3))
    expected = peak_signal_noise_ratio(a, b, data_range=1.0)
    assert psnr(torch.tensor(a), b) == pytest.approx(expected, rel=1e-5)
    assert psnr(a, a) == math.inf


def _image_batch(channels: int, signals: int = 3, size: int = 12):
    g = torch.Generator().manual_seed(1)
    truth = torch.rand(signals, size, size, channels, generator=g)
    mask = torch.rand(signals, size, size, generator=g) < 0.3
    noisy = (truth + 0.1 * torch.randn(truth.shape, generator=g)).clamp(0, 1)
    return truth, mask, noisy


@pytest.mark.parametrize("channels", [1, 3])
def test_image_grid_writes_expected_figure(tmp_path, channels):
    truth, mask, noisy = _image_batch(channels)
    flat_mean = noisy.reshape(3, -1, channels)  # a Prediction's (S, M, c) layout
    predictions = {
        "ibaml": Prediction(flat_mean, variance=torch.full_like(flat_mean, 0.01)),
        "maml": noisy.flip(1),
    }
    path = image_grid(tmp_path / "grid.png", truth, mask, predictions, max_signals=2)
    image = iio.imread(path)
    # 2 rows; columns: truth, context, ibaml (3 panels: with std), maml (2 panels)
    columns, rows = 2 + 3 + 2, 2
    assert image.shape[:2] == (
        round((PANEL * rows + 0.4) * 100),
        round((PANEL * columns + 1) * 100),
    )
    assert image.shape[2] in (3, 4)

    # one method fewer -> narrower; no context column -> narrower still
    narrower = iio.imread(image_grid(tmp_path / "g2.png", truth, mask, {"m": noisy}))
    assert narrower.shape[:2] == (round((PANEL * 3 + 0.4) * 100), round((PANEL * 4 + 1) * 100))
    no_context = iio.imread(image_grid(tmp_path / "g3.png", truth, None, {"m": noisy}))
    assert no_context.shape[1] == round((PANEL * 3 + 1) * 100)


def test_image_grid_explicit_std_and_bad_shapes(tmp_path):
    truth, mask, noisy = _image_batch(3)
    std = {"np": torch.rand_like(noisy)}
    path = image_grid(tmp_path / "g.pdf", truth, mask, {"np": noisy}, std=std)
    assert path.read_bytes()[:4] == b"%PDF"
    with pytest.raises(InputError, match="prediction 'bad'"):
        image_grid(tmp_path / "g.png", truth, mask, {"bad": noisy[:, :5]})


def test_each_method_std_has_its_own_colour_scale(tmp_path):
    """A small std (iBaML's) beside a large one (an NP's) is not drawn flat on the large one's scale."""
    truth, mask, noisy = _image_batch(3)
    small, large = 1e-3 * torch.rand_like(noisy), torch.rand_like(noisy)
    figure = grid_figure(truth, mask, {"ibaml": noisy, "np": noisy}, std={"ibaml": small, "np": large})
    limits = {
        ax.get_title().split()[0]: image.get_clim()
        for ax in figure.axes
        if ax.get_title().endswith(" std")  # the first row's std panels
        for image in ax.get_images()
        if image.get_cmap().name == STD_CMAP
    }
    assert limits["ibaml"][1] == pytest.approx(float(small.mean(-1)[:3].max()), rel=1e-5)
    assert limits["np"][1] == pytest.approx(float(large.mean(-1)[:3].max()), rel=1e-5)
    bars = [ax for ax in figure.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 3  # the errors' shared bar and one per method's std


def test_ct_figure(tmp_path):
    g = torch.Generator().manual_seed(2)
    truth = torch.rand(16, 16, generator=g)
    sinogram = torch.rand(5, 16, generator=g)
    recon = truth + 0.05 * torch.randn(16, 16, generator=g)
    angles = torch.linspace(0, math.pi, 6)[:-1]
    plain = iio.imread(ct_figure(tmp_path / "ct.png", sinogram, truth.flip(0), recon, truth))
    with_std = iio.imread(
        ct_figure(
            tmp_path / "ct_std.png",
            sinogram,
            truth.flip(0),
            recon[..., None],
            truth[..., None],
            std=torch.rand(16, 16, generator=g),
            angles=angles,
        )
    )
    assert plain.shape[:2] == (round(PANEL * 1.5 * 100), round(PANEL * 1.3 * 5 * 100))
    assert with_std.shape[:2] == (round(PANEL * 1.5 * 100), round(PANEL * 1.3 * 6 * 100))
    assert plain.shape[2] in (3, 4)
    with pytest.raises(InputError, match="FBP"):
        ct_figure(tmp_path / "bad.png", sinogram, truth[:8], recon, truth)


# -- meshes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kind, field_fn",
    [
        ("sdf", sphere_sdf(0.6)),
        ("occupancy", lambda p: 10.0 * (0.6 - p.norm(dim=-1, keepdim=True))),  # logits
    ],
)
def test_sphere_mesh_is_watertight_with_the_right_volume(kind, field_fn):
    resolution = 64
    mesh = extract_mesh(field_fn, resolution=resolution, kind=kind, chunk=20_000)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * 0.6**3, rel=0.02)
    spacing = 2 / (resolution - 1)
    np.testing.assert_allclose(np.linalg.norm(mesh.vertices, axis=1), 0.6, atol=spacing)
    # outward normals: each face's normal points away from the centre
    assert (np.einsum("fd,fd->f", mesh.face_normals, mesh.triangles_center) > 0).all()


def test_level_and_offset_centre():
    mesh = extract_mesh(sphere_sdf(0.3, (0.2, -0.1, 0.4)), resolution=64, level=0.1)
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * 0.4**3, rel=0.02)
    np.testing.assert_allclose(mesh.bounding_box.centroid, (0.2, -0.1, 0.4), atol=0.02)


def test_chunked_grid_equals_unchunked_and_respects_the_chunk():
    seen = []

    def field_fn(points):
        seen.append(points.shape[0])
        return torch.sin(3 * points).sum(-1, keepdim=True)

    resolution = 20
    whole = evaluate_grid(field_fn, resolution, chunk=resolution**3)
    seen.clear()
    chunked = evaluate_grid(field_fn, resolution, chunk=777)
    assert max(seen) == 777 and sum(seen) == resolution**3
    np.testing.assert_array_equal(whole, chunked)
    # volume[i, j, k] is the field at (x_i, y_j, z_k) on linspace(-1, 1) nodes
    axis = np.linspace(-1, 1, resolution)
    i, j, k = 3, 11, 17
    expected = np.sin(3 * axis[i]) + np.sin(3 * axis[j]) + np.sin(3 * axis[k])
    assert chunked[i, j, k] == pytest.approx(expected, abs=1e-5)


def test_mesh_of_a_real_field_is_chunk_independent():
    field = build_field("relu_pe", in_dim=3, head="sdf", hidden=16, n_layers=2)
    params = field.init(seed=0)
    field_fn = field.bind(params)
    whole = evaluate_grid(field_fn, 16, chunk=16**3)
    chunked = evaluate_grid(field_fn, 16, chunk=100)
    np.testing.assert_allclose(whole, chunked, atol=1e-6)
    level = float(np.median(whole))  # a level the random field certainly crosses
    mesh = extract_mesh(field_fn, resolution=16, level=level, chunk=100)
    assert len(mesh.faces) > 0 and mesh.is_watertight


def test_no_surface_is_a_clear_error():
    with pytest.raises(ValueError, match=r"level 0.0 is not crossed.*min 0.5, max 1\)"):
        extract_mesh(lambda p: 0.25 * p[:, :1] + 0.75, resolution=8)
    with pytest.raises(InputError, match="mesh kind"):
        extract_mesh(sphere_sdf(0.5), resolution=8, kind="density")


def test_surface_cut_by_the_cube_is_capped():
    box = lambda p: (p - torch.tensor([0.5, 0.0, 0.0])).abs().amax(-1, keepdim=True) - 0.8  # noqa: E731
    closed = extract_mesh(box, resolution=33)
    half_cell = 1 / 32
    assert closed.is_watertight
    assert closed.bounds[1, 0] == pytest.approx(1.0 + half_cell)  # a flat cap beyond x = 1
    assert closed.volume == pytest.approx((1.3 + half_cell) * 1.6 * 1.6, rel=0.01)
    assert not extract_mesh(box, resolution=33, close_boundary=False).is_watertight


@pytest.mark.parametrize("suffix", [".ply", ".obj", ".glb"])
def test_save_mesh_round_trip(tmp_path, suffix):
    mesh = extract_mesh(sphere_sdf(0.5), resolution=24)
    path = save_mesh(mesh, tmp_path / f"sphere{suffix}")
    back = trimesh.load(path, force="mesh")
    assert len(back.vertices) == len(mesh.vertices)
    assert len(back.faces) == len(mesh.faces)
    assert back.volume == pytest.approx(mesh.volume, rel=1e-4)


def test_save_mesh_unknown_format(tmp_path):
    with pytest.raises(InputError, match="x.abc"):
        save_mesh(trimesh.creation.box(), tmp_path / "x.abc")


def test_mesh_preview_size_and_orientation(tmp_path):
    # a big sphere at +x and a small one at -x; seen from +z with y up, +x is on the right
    big, small = trimesh.creation.icosphere(3, 0.5), trimesh.creation.icosphere(3, 0.2)
    big.apply_translation((0.5, 0, 0))
    small.apply_translation((-0.6, 0, 0))
    mesh = trimesh.util.concatenate([big, small])
    image = iio.imread(render_mesh_preview(mesh, tmp_path / "p.png", size=64, views=((0, 0),)))
    assert image.shape[:2] == (64, 64) and image.shape[2] == 3
    covered = image.min(axis=-1) < 250
    assert covered[:, 32:].sum() > 2 * covered[:, :32].sum() > 0
    assert image[covered].std() > 5  # shaded, not flat
    three = iio.imread(render_mesh_preview(mesh, tmp_path / "p3.png", size=40))
    assert three.shape == (40, 120, 3)


# -- cameras and videos ----------------------------------------------------------------------------
def test_look_at_and_orbit():
    poses = orbit_poses(8, radius=3.0, elevation=20.0, up="z")
    rotation = poses[:, :3, :3]
    torch.testing.assert_close(rotation.transpose(1, 2) @ rotation, torch.eye(3).expand(8, 3, 3))
    torch.testing.assert_close(poses[:, :3, 3].norm(dim=-1), torch.full((8,), 3.0))
    torch.testing.assert_close(poses[:, 2, 3], torch.full((8,), 3.0 * math.sin(math.radians(20))))
    # the centre ray of each camera passes through the origin
    origins, directions = camera_rays(poses, 10.0, 2, 2)
    centre = directions.mean(dim=-2)
    centre = centre / centre.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(centre, -origins[:, 0] / 3.0, atol=1e-6, rtol=0)
    assert (poses[:, 2, 1] > 0).all()  # the camera's y axis leans toward world up (+z)
    eye = torch.tensor([0.0, 2.0, 0.0])
    torch.testing.assert_close(look_at(eye, up="z")[:3, 2], torch.tensor([0.0, 1.0, 0.0]))


def coloured_sphere(centre, radius=0.45, density=40.0, colour=(0.9, 0.2, 0.1)):
    centre, colour = torch.tensor(centre), torch.tensor(colour)

    def field_fn(points):
        inside = ((points - centre).norm(dim=-1, keepdim=True) < radius).to(points.dtype)
        return torch.cat([density * inside, colour.expand(*points.shape[:-1], 3)], dim=-1)

    return field_fn


def test_render_view_places_the_scene_as_expected():
    renderer = VolumeRenderer(n_samples=48, stratified=False)
    field_fn = coloured_sphere((0.0, 0.0, 0.0))
    pose = orbit_poses(1, radius=4.0, elevation=0.0, up="z")[0]  # at +x, looking at the origin
    image = render_view(
        lambda rays: renderer(field_fn, rays), pose, focal=24.0, height=16, chunk=50
    )
    assert image.shape == (16, 16, 3)
    # a chord of >= 0.4 through density 40 is opaque: the centre shows the sphere's colour
    torch.testing.assert_close(image[7:9, 7:9], torch.tensor([0.9, 0.2, 0.1]).expand(2, 2, 3))
    torch.testing.assert_close(image[0, 0], torch.ones(3))  # white background at the corner


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_turntable_frames(tmp_path, suffix):
    # off the axis, so consecutive frames differ (a GIF stores identical frames once)
    field_fn = coloured_sphere((0.0, 0.6, 0.0))
    renderer = VolumeRenderer(n_samples=24, stratified=True)  # made deterministic by turntable
    path = turntable(
        tmp_path / f"t{suffix}", field_fn, renderer, n_frames=8, size=20, radius=4.0, elevation=0.0
    )
    frames = iio.imread(path, index=None, **({"plugin": "FFMPEG"} if suffix == ".mp4" else {}))
    assert frames.shape[:3] == (8, 20, 20) and frames.shape[-1] in (3, 4)
    # frame 0: camera at +x with z up, so the image's right is world +y: the sphere is on the right
    dark = frames[0, ..., :3].min(axis=-1) < 200
    assert dark[:, 10:].sum() > 0 and dark[:, :10].sum() == 0


def test_turntable_with_a_ray_function(tmp_path):
    def sky(rays):  # colour = the ray direction, mapped to [0, 1]
        return 0.5 + 0.5 * rays[..., 3:6]

    path = turntable(tmp_path / "sky.gif", None, sky, n_frames=5, size=8, elevation=10.0)
    assert iio.imread(path, index=None).shape[:3] == (5, 8, 8)
    with pytest.raises(InputError, match="mov"):
        save_video(tmp_path / "x.mov", torch.zeros(2, 4, 4, 3))
    with pytest.raises(InputError, match="field_fn"):
        turntable(tmp_path / "y.gif", None, None)


# -- curves ----------------------------------------------------------------------------------------
def test_plot_curves_and_wrappers(tmp_path):
    steps = np.arange(1, 11)
    curve = plot_curves(
        tmp_path / "c.png",
        {"a": (steps, 1 / steps), "b": (torch.tensor(steps), torch.tensor(2 / steps), 0.1 / steps)},
        "step",
        "value",
        "title",
        logy=True,
    )
    assert iio.imread(curve).shape[:2] == (350, 500)
    losses = plot_training_losses(tmp_path / "l.png", {"maml": np.exp(-steps / 3)}, smoothing=0.6)
    psnrs = plot_psnr_vs_steps(tmp_path / "p.png", {"maml": ([0, 1, 5], [15, 20, 24])})
    cost = plot_cost_vs_steps(
        tmp_path / "m.png",
        memory={"maml": ([1, 2, 4], [10, 20, 40]), "ibaml": ([1, 2, 4], [10, 10, 10])},
        time={"maml": ([1, 2, 4], [0.1, 0.2, 0.4])},
    )
    assert iio.imread(losses).shape[:2] == iio.imread(psnrs).shape[:2] == (350, 500)
    assert iio.imread(cost).shape[:2] == (350, 900)
    with pytest.raises(InputError, match="'bad'"):
        plot_curves(tmp_path / "x.png", {"bad": ([1, 2], [1, 2, 3])}, "x", "y")


def test_smooth_is_a_debiased_moving_average():
    values = np.array([4.0, 2.0, 6.0])
    w = 0.5
    ema = [(1 - w) * 4.0]
    ema.append(w * ema[0] + (1 - w) * 2.0)
    ema.append(w * ema[1] + (1 - w) * 6.0)
    expected = [e / (1 - w ** (t + 1)) for t, e in enumerate(ema)]
    np.testing.assert_allclose(smooth(values, w), expected)
    np.testing.assert_allclose(smooth(values, 0.0), values)
