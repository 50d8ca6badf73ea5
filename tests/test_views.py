"""Multi-view loaders (real files written here), the built-in views, and the view split."""

from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import trimesh

from genfield.datasets.views import (
    NERF_SYNTHETIC_SCALE,
    NerfSyntheticFolder,
    NerfSyntheticScene,
    SRNFolder,
    SRNScene,
    ViewSignal,
    ViewSplit,
    builtin_views,
    look_at,
    raycast_rgba,
)
from genfield.errors import InputError
from genfield.forward.volume import VolumeRenderer, camera_rays, ray_queries

ANGLE = 0.69


def write_nerf_scene(
    root: Path,
    n_frames: int = 3,
    size=(4, 6),
    split: str = "train",
    seed: int = 0,
    transforms_name: str | None = None,
    extension: bool = False,
):
    """A NeRF-synthetic scene of random RGBA PNGs; returns the images and poses written."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    images, poses, frames = [], [], []
    for k in range(n_frames):
        rgba = rng.integers(0, 256, size=(*size, 4), dtype=np.uint8)
        folder = root / split
        folder.mkdir(exist_ok=True)
        iio.imwrite(folder / f"r_{k}.png", rgba)
        c2w = look_at(rng.normal(size=3) * 2 + np.array([0.0, 0.0, 4.0])).numpy()
        frames.append(
            {
                "file_path": f"./{split}/r_{k}" + (".png" if extension and k == 0 else ""),
                "transform_matrix": c2w.tolist(),
            }
        )
        images.append(rgba)
        poses.append(c2w)
    name = transforms_name or f"transforms_{split}.json"
    (root / name).write_text(json.dumps({"camera_angle_x": ANGLE, "frames": frames}))
    return np.stack(images), np.stack(poses)


def composite(rgba: np.ndarray) -> np.ndarray:
    rgba = rgba.astype(np.float64) / 255
    return rgba[..., :3] * rgba[..., 3:] + 1 - rgba[..., 3:]


# ---------------------------------------------------------------------------------------------
# NeRF-synthetic


def test_nerf_synthetic_scene_reads_images_poses_and_intrinsics(tmp_path):
    rgba, poses = write_nerf_scene(tmp_path / "lego", extension=True)
    signal = NerfSyntheticScene(tmp_path / "lego", split="train").load()
    assert isinstance(signal, ViewSignal) and signal.name == "lego"
    assert signal.images.shape == (3, 4, 6, 3) and signal.images.dtype == torch.float32
    assert np.allclose(signal.images.numpy(), composite(rgba), atol=1e-6)
    assert math.isclose(signal.focal, 0.5 * 6 / math.tan(0.5 * ANGLE), rel_tol=1e-9)
    assert (signal.cx, signal.cy) == (3.0, 2.0)
    expected = poses.copy()
    expected[:, :3, 3] *= NERF_SYNTHETIC_SCALE
    assert np.allclose(signal.c2w.numpy(), expected, atol=1e-6)
    assert math.isclose(signal.near, 2 * NERF_SYNTHETIC_SCALE) and math.isclose(signal.far, 4.0)


def test_downscale_area_averages_and_scales_intrinsics(tmp_path):
    rgba, _ = write_nerf_scene(tmp_path / "s", size=(4, 6))
    full = NerfSyntheticScene(tmp_path / "s").load()
    half = NerfSyntheticScene(tmp_path / "s", downscale=2).load()
    assert half.images.shape == (3, 2, 3, 3)
    manual = composite(rgba).reshape(3, 2, 2, 3, 2, 3).mean(axis=(2, 4))
    assert np.allclose(half.images.numpy(), manual, atol=1e-6)
    assert math.isclose(half.focal, full.focal / 2) and (half.cx, half.cy) == (1.5, 1.0)


def test_missing_frame_file_is_named(tmp_path):
    write_nerf_scene(tmp_path / "s")
    (tmp_path / "s" / "train" / "r_1.png").unlink()
    with pytest.raises(InputError, match=r"missing frame file .*r_1\.png"):
        NerfSyntheticScene(tmp_path / "s").load()


def test_non_finite_pose_and_angle_are_named(tmp_path):
    write_nerf_scene(tmp_path / "s")
    path = tmp_path / "s" / "transforms_train.json"
    meta = json.loads(path.read_text())
    meta["frames"][2]["transform_matrix"][0][3] = float("nan")
    path.write_text(json.dumps(meta))  # json writes NaN, and reads it back
    with pytest.raises(InputError, match=r"frame 2 transform_matrix holds NaN or inf"):
        NerfSyntheticScene(tmp_path / "s").load()
    meta["frames"][2]["transform_matrix"][0][3] = 0.0
    meta["camera_angle_x"] = float("inf")
    path.write_text(json.dumps(meta))
    with pytest.raises(InputError, match="camera_angle_x"):
        NerfSyntheticScene(tmp_path / "s").load()


def edit_transforms(root: Path, edit) -> None:
    path = root / "transforms_train.json"
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def test_file_path_outside_the_scene_folder_is_refused(tmp_path):
    write_nerf_scene(tmp_path / "s")
    outside = tmp_path / "secret.png"
    iio.imwrite(outside, np.zeros((4, 6, 4), dtype=np.uint8))  # exists: only the check refuses it
    for escape in ("../secret.png", "./train/../../secret", str(outside)):
        edit_transforms(tmp_path / "s", lambda m, e=escape: m["frames"][1].update(file_path=e))
        with pytest.raises(InputError, match=r"frame 1 file_path .* leaves the scene folder"):
            NerfSyntheticScene(tmp_path / "s").load()
    # `..` that stays inside the folder is fine
    edit_transforms(tmp_path / "s", lambda m: m["frames"][1].update(file_path="./train/../train/r_1"))
    assert NerfSyntheticScene(tmp_path / "s").load().num_views == 3


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(camera_angle_x="0.69"), r"key 'camera_angle_x' must be a number, got '0\.69'"),
        (lambda m: m.update(camera_angle_x=True), r"key 'camera_angle_x' must be a number"),
        (lambda m: m.update(camera_angle_x=-0.5), r"'camera_angle_x' = -0\.5 is not in \(0, pi\)"),
        (lambda m: m.update(fl_x=-100.0), r"key 'fl_x': focal length -100\.0 must be positive"),
        (lambda m: m.update(fl_x=0), r"focal length 0\.0 must be positive"),
        (lambda m: m.update(cx="middle"), r"key 'cx' must be a number"),
        (lambda m: m["frames"][0].update(file_path=7), r"frame 0 key 'file_path' must be a non-empty string"),
        (
            lambda m: m["frames"][2].update(
                transform_matrix=[[1, 0, 0, 0], [1, 0, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]]
            ),
            r"frame 2 transform_matrix is not invertible",
        ),
        (lambda m: m["frames"][0].update(transform_matrix=np.zeros((4, 4)).tolist()), "not invertible"),
    ],
)
def test_bad_intrinsics_and_poses_are_one_line_errors(tmp_path, edit, message):
    write_nerf_scene(tmp_path / "s")
    edit_transforms(tmp_path / "s", edit)
    with pytest.raises(InputError, match=message) as caught:
        NerfSyntheticScene(tmp_path / "s").load()
    assert "transforms_train.json" in str(caught.value) and "\n" not in str(caught.value)


def test_downscale_larger_than_the_images_is_refused(tmp_path):
    write_nerf_scene(tmp_path / "s", size=(4, 6))
    with pytest.raises(InputError, match=r"downscale=8 is larger than the 4 x 6 images .* valid: 1 to 4"):
        NerfSyntheticScene(tmp_path / "s", downscale=8).load()
    assert NerfSyntheticScene(tmp_path / "s", downscale=4).load().images.shape == (3, 1, 1, 3)


def test_bad_scene_inputs(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        NerfSyntheticScene(tmp_path / "nowhere")
    write_nerf_scene(tmp_path / "s")
    with pytest.raises(InputError, match="transforms_test.json"):
        NerfSyntheticScene(tmp_path / "s", split="test")
    with pytest.raises(InputError, match="unknown split"):
        NerfSyntheticScene(tmp_path / "s", split="holdout")
    (tmp_path / "s" / "transforms_train.json").write_text("{not json")
    with pytest.raises(InputError, match="transforms_train.json"):
        NerfSyntheticScene(tmp_path / "s")


def test_folder_of_scenes_including_the_learnit_layout(tmp_path):
    write_nerf_scene(tmp_path / "b_scene", seed=1)
    # Learned Initializations ShapeNet: one transforms.json, images beside it
    rgba, _ = write_nerf_scene(
        tmp_path / "a_object",
        n_frames=2,
        split="renders",
        transforms_name="transforms.json",
        seed=2,
    )
    for png in (tmp_path / "a_object" / "renders").glob("*.png"):
        png.rename(tmp_path / "a_object" / png.name)
    (tmp_path / "not_a_scene").mkdir()
    folder = NerfSyntheticFolder(tmp_path)
    assert len(folder) == 2
    first = folder[0]
    assert first.name == "a_object" and first.num_views == 2
    assert np.allclose(first.images.numpy(), composite(rgba), atol=1e-6)
    assert folder[1].name == "b_scene"
    with pytest.raises(InputError, match="no scene folders"):
        NerfSyntheticFolder(tmp_path / "not_a_scene")
    with pytest.raises(InputError, match="downscale must be a positive integer, got 0"):
        NerfSyntheticFolder(tmp_path, downscale=0)  # at construction, before any scene is read


# ---------------------------------------------------------------------------------------------
# SRN


def write_srn_object(root: Path, n_views: int = 3, size: int = 8, seed: int = 0):
    """An SRN object folder; intrinsics written for an image twice the stored size."""
    rng = np.random.default_rng(seed)
    (root / "rgb").mkdir(parents=True)
    (root / "pose").mkdir()
    opengl = []
    for k in range(n_views):
        iio.imwrite(root / "rgb" / f"{k:06d}.png", rng.integers(0, 256, (size, size, 3), np.uint8))
        c2w = look_at(rng.normal(size=3) + np.array([0.0, -1.5, 0.5])).numpy()
        opencv = c2w @ np.diag([1.0, -1.0, -1.0, 1.0])
        (root / "pose" / f"{k:06d}.txt").write_text(" ".join(f"{v:.10f}" for v in opencv.ravel()))
        opengl.append(c2w)
    f, c = 1.5 * size * 2, size  # for a (2 size) x (2 size) image: principal point at its centre
    (root / "intrinsics.txt").write_text(f"{f} {c} {c} 0.\n0. 0. 0.\n1.\n{2 * size} {2 * size}\n")
    return np.stack(opengl)


def test_srn_scene_rescales_intrinsics_and_converts_opencv_poses(tmp_path):
    opengl = write_srn_object(tmp_path / "car1", size=8)
    signal = SRNScene(tmp_path / "car1").load()
    assert signal.images.shape == (3, 8, 8, 3)
    assert math.isclose(signal.focal, 12.0) and (signal.cx, signal.cy) == (4.0, 4.0)
    assert np.allclose(signal.c2w.numpy(), opengl, atol=1e-6)
    # independent check: back-project pixel (i, j) in the OpenCV model (y down, z forward)
    opencv = opengl[1] @ np.diag([1.0, -1.0, -1.0, 1.0])
    i, j = 2, 5
    camera = np.array([(j + 0.5 - 4.0) / 12.0, (i + 0.5 - 4.0) / 12.0, 1.0]) * 1.7
    point = opencv[:3, :3] @ camera + opencv[:3, 3]
    origins, directions = signal.rays(torch.tensor([1]))
    o, d = origins[0, i * 8 + j].double().numpy(), directions[0, i * 8 + j].double().numpy()
    along = (point - o) @ d
    assert np.linalg.norm(o + along * d - point) < 1e-5
    distance = np.linalg.norm(opengl[:, :3, 3], axis=-1)
    assert math.isclose(signal.far, distance.max() + math.sqrt(3), rel_tol=1e-5)


def test_srn_folder_and_errors(tmp_path):
    write_srn_object(tmp_path / "cars" / "b", seed=1)
    write_srn_object(tmp_path / "cars" / "a", seed=2)
    folder = SRNFolder(tmp_path / "cars", near=0.8, far=1.8)
    assert len(folder) == 2 and folder[0].name == "a"
    assert (folder[1].near, folder[1].far) == (0.8, 1.8)
    (tmp_path / "cars" / "a" / "pose" / "000001.txt").unlink()
    with pytest.raises(InputError, match="3 rgb/\\*.png images but 2 pose"):
        folder[0]
    (tmp_path / "cars" / "b" / "intrinsics.txt").write_text("garbage\n")
    with pytest.raises(InputError, match="intrinsics.txt is not an SRN intrinsics file"):
        folder[1]
    with pytest.raises(InputError, match="no SRN object folders"):
        SRNFolder(tmp_path / "cars" / "a" / "rgb")


# ---------------------------------------------------------------------------------------------
# built-in views


def test_builtin_views_writes_files_the_loader_reads_deterministically(tmp_path):
    kwargs = {"n_scenes": 2, "n_views": 3, "size": 12, "seed": 5, "n_test_views": 1}
    folder = builtin_views(tmp_path / "a", **kwargs)
    assert isinstance(folder, NerfSyntheticFolder) and len(folder) == 2
    scene = tmp_path / "a" / "scene_0000"
    assert (scene / "transforms_train.json").is_file() and (scene / "transforms_test.json").is_file()
    rgba = iio.imread(scene / "train" / "r_0.png")
    assert rgba.shape == (12, 12, 4) and set(np.unique(rgba[..., 3])) <= {0, 255}
    signal = folder[0]
    assert signal.images.shape == (3, 12, 12, 3)
    assert np.allclose(signal.images[0].numpy(), composite(rgba), atol=1e-6)
    assert 0.05 < float((signal.images < 0.99).any(-1).float().mean()) < 0.9  # an object, on white
    radius = signal.c2w[:, :3, 3].norm(dim=-1)
    assert torch.allclose(radius, torch.full_like(radius, 4.0 * NERF_SYNTHETIC_SCALE), atol=1e-5)
    test = NerfSyntheticFolder(tmp_path / "a", split="test")[1]
    assert test.num_views == 1
    again = builtin_views(tmp_path / "b", **kwargs)
    for k in range(2):
        assert torch.equal(again[k].images, folder[k].images)
        assert torch.equal(again[k].c2w, folder[k].c2w)


def test_builtin_views_cache_and_rerender(tmp_path):
    kwargs = {"n_scenes": 2, "n_views": 2, "size": 8, "seed": 0, "n_test_views": 1}
    builtin_views(tmp_path, **kwargs)
    png = tmp_path / "scene_0001" / "train" / "r_0.png"
    stamp = png.stat().st_mtime_ns
    builtin_views(tmp_path, **kwargs)
    assert png.stat().st_mtime_ns == stamp  # cached: nothing rendered again
    folder = builtin_views(tmp_path, **{**kwargs, "n_scenes": 1, "seed": 1})
    assert len(folder) == 1 and not (tmp_path / "scene_0001").exists()
    with pytest.raises(InputError, match="n_views"):
        builtin_views(tmp_path, n_views=0)


def test_loaded_cameras_render_the_ray_cast_silhouette(tmp_path):
    """Files written by the ray caster, read by the loader and volume-rendered agree."""
    centre, radius, size = np.array([0.3, -0.2, 0.1]), 0.45, 24  # normalised world units
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=radius / NERF_SYNTHETIC_SCALE)
    mesh.apply_translation(centre / NERF_SYNTHETIC_SCALE)
    colours = np.tile([0.9, 0.2, 0.1], (len(mesh.faces), 1))
    focal = 0.5 * size / math.tan(0.5 * ANGLE)
    frames = []
    (tmp_path / "train").mkdir()
    for k, position in enumerate([[4.0, 0.5, 1.0], [-1.0, 3.5, 2.0]]):
        c2w = look_at(np.array(position)).numpy()
        iio.imwrite(tmp_path / "train" / f"r_{k}.png", raycast_rgba(mesh, colours, c2w, focal, size))
        frames.append({"file_path": f"train/r_{k}.png", "transform_matrix": c2w.tolist()})
    (tmp_path / "transforms_train.json").write_text(json.dumps({"camera_angle_x": ANGLE, "frames": frames}))
    signal = NerfSyntheticScene(tmp_path).load()
    origins, directions = signal.rays()
    queries = ray_queries(origins, directions, signal.near, signal.far)
    sphere_centre = torch.tensor(centre, dtype=torch.float32)

    def field_fn(points):
        inside = ((points - sphere_centre).norm(dim=-1, keepdim=True) < radius).float()
        return torch.cat([200 * inside, 0.5 * torch.ones_like(points)], dim=-1)

    opacity = VolumeRenderer(n_samples=256, stratified=False).render(field_fn, queries)["opacity"]
    silhouette = (signal.images < 0.99).any(-1).reshape(2, -1)
    agree = ((opacity > 0.5) == silhouette).float().mean()
    assert silhouette.float().mean() > 0.1 and agree > 0.98


# ---------------------------------------------------------------------------------------------
# the split


def toy_signals(n: int = 3, views: int = 5, size=(4, 5)) -> list[ViewSignal]:
    generator = torch.Generator().manual_seed(0)
    signals = []
    for s in range(n):
        c2w = torch.stack(
            [
                look_at(np.array([2.5 * math.cos(a), 2.5 * math.sin(a), 1.0])).float()
                for a in torch.linspace(0, 6, views).tolist()
            ]
        )
        images = torch.rand(views, *size, 3, generator=generator)
        signals.append(ViewSignal(images, c2w, 6.0, size[1] / 2, size[0] / 2, 1.0, 4.5, f"s{s}"))
    return signals


def test_view_split_layout_and_view_major_context():
    signals = toy_signals()
    split = ViewSplit(n_context_views=2, n_target_views=2, rays_per_signal=7, n_samples=8)
    batch = split(signals, torch.Generator().manual_seed(3))
    H, W = 4, 5
    assert batch.kind == "views" and isinstance(batch.forward_map, VolumeRenderer)
    assert batch.forward_map.n_samples == 8
    assert batch.context.queries.shape == (3, 2 * H * W, 8)
    assert batch.context.values.shape == (3, 2 * H * W, 3)
    assert batch.target.queries.shape == (3, 7, 8) and batch.ground_truth.shape == (3, 2, H, W, 3)
    ex = batch.extras
    assert batch.context.layout.image_size == (H, W) and "image_size" not in ex  # the layout's
    assert ex["focal"].shape == (3,)
    assert ex["context_images"].shape == (3, 2, H, W, 3) and ex["context_c2w"].shape == (3, 2, 4, 4)
    for s, signal in enumerate(signals):
        ctx, tgt = ex["context_views"][s], ex["target_views"][s]
        assert not set(ctx.tolist()) & set(tgt.tolist())
        # view v's H*W rays are contiguous and row-major
        origins, directions = camera_rays(signal.c2w[ctx], signal.focal, H, W)
        queries = batch.context.queries[s].reshape(2, H * W, 8)
        assert torch.allclose(queries[..., :3], origins) and torch.allclose(queries[..., 3:6], directions)
        assert torch.equal(batch.context.values[s].reshape(2, H, W, 3), signal.images[ctx])
        assert torch.equal(ex["context_images"][s], signal.images[ctx])
        flat_targets = batch.ground_truth[s].reshape(-1, 3)
        assert torch.equal(batch.target.values[s], flat_targets[ex["target_index"][s]])
    near, far = batch.context.queries[..., 6], batch.context.queries[..., 7]
    assert torch.all(near <= far) and torch.all(near >= 1.0) and torch.all(far <= 4.5)


def test_views_figures_take_the_view_size_from_the_target_layout(tmp_path):
    from genfield.interface import Prediction
    from genfield.kinds import get_kind

    spec, signals = get_kind("views"), toy_signals()
    whole = ViewSplit(n_context_views=1, n_target_views=2, rays_per_signal=None)(signals, torch.Generator())
    oracle = {"oracle": Prediction(whole.target.values)}
    assert [p.name for p in spec.write_figures(tmp_path, whole, oracle)] == ["novel_views.png"]
    rays = ViewSplit(n_context_views=1, n_target_views=2, rays_per_signal=7)(signals, torch.Generator())
    with pytest.raises(InputError, match="ViewLayout"):  # 7 random rays are no whole views
        spec.write_figures(tmp_path, rays, {"oracle": Prediction(rays.target.values)})


def test_view_split_is_deterministic_per_seed_and_subsamples_context():
    signals = toy_signals()
    split = ViewSplit(n_context_views=1, n_target_views=3, rays_per_signal=None, context_rays=6)
    a = split(signals, torch.Generator().manual_seed(11))
    b = split(signals, torch.Generator().manual_seed(11))
    c = split(signals, torch.Generator().manual_seed(12))
    assert torch.equal(a.context.queries, b.context.queries)
    assert torch.equal(a.target.values, b.target.values)
    assert not torch.equal(a.extras["context_views"], c.extras["context_views"]) or not torch.equal(
        a.extras["context_index"], c.extras["context_index"]
    )
    assert a.context.queries.shape == (3, 6, 8) and a.target.queries.shape == (3, 3 * 20, 8)
    index = a.extras["context_index"]
    assert torch.all(index.diff(dim=-1) > 0)  # sorted: still view-major


def test_view_split_errors():
    signals = toy_signals(views=3)
    with pytest.raises(InputError, match="has 3 views"):
        ViewSplit(n_context_views=2, n_target_views=2)(signals, torch.Generator())
    odd = toy_signals(n=1, size=(6, 5))
    with pytest.raises(InputError, match="images of size"):
        ViewSplit()(signals + odd, torch.Generator())
    with pytest.raises(InputError):
        ViewSplit(n_context_views=0)
