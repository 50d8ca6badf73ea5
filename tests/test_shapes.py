"""Shapes: mesh folders, labels against analytic SDFs and independent references, cache, split."""

from __future__ import annotations

import math
import os
import warnings

import numpy as np
import pytest
import torch
import trimesh

from genfield.datasets.builtin.shapes import ProceduralShapes
from genfield.datasets.sampling import iterate_batches
from genfield.datasets.shapes import (
    MeshFolder,
    NonWatertightMeshWarning,
    ShapeSplit,
    UnreadableMeshWarning,
    inside,
    load_mesh,
    normalize_mesh,
    occupancy_grid,
    signed_distance,
    unsigned_distance,
    winding_number,
    winding_number_exact,
)
from genfield.errors import InputError
from genfield.fields.coords import grid_coords
from genfield.forward import PointMap

SMALL = {"n_uniform": 600, "n_near": 600, "n_surface": 200}
#: Half extents of a (2, 1, 0.5) box after normalisation (longest side 1.8).
BOX_HALF = torch.tensor([0.9, 0.45, 0.225])


def box_sdf(points: torch.Tensor, half: torch.Tensor = BOX_HALF) -> torch.Tensor:
    """Analytic signed distance of an axis-aligned box centred at the origin."""
    q = points.abs() - half
    return q.clamp_min(0).norm(dim=-1) + q.amax(-1).clamp_max(0)


def offset_box() -> trimesh.Trimesh:
    """A (2, 1, 0.5) box away from the origin, so that normalisation has to centre it."""
    return trimesh.creation.box((2.0, 1.0, 0.5)).apply_translation([3.0, -1.0, 0.5])


def occupancy_std(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


# --------------------------------------------------------------------------------------------------
# Folders and formats
# --------------------------------------------------------------------------------------------------


def test_folder_lists_formats_and_shapenet_layout(tmp_path):
    (tmp_path / "a").mkdir()
    offset_box().export(tmp_path / "a" / "box.obj")
    trimesh.creation.icosphere(2).export(tmp_path / "a" / "sphere.ply")
    trimesh.creation.cylinder(0.5, 1.0, sections=16).export(tmp_path / "cyl.off")
    trimesh.creation.cone(0.5, 1.0, sections=16).export(tmp_path / "cone.stl")
    scene = trimesh.Scene(
        [trimesh.creation.box((1, 1, 1)), trimesh.creation.box((1, 1, 1)).apply_translation([2, 0, 0])]
    )
    scene.export(tmp_path / "pair.glb")
    (tmp_path / "g").mkdir()
    for file_name, data in trimesh.creation.box().export(file_type="gltf").items():
        (tmp_path / "g" / file_name).write_bytes(data)  # model.gltf + external .bin buffers
    model = tmp_path / "02691156" / "1a2b3c" / "models"
    model.mkdir(parents=True)
    trimesh.creation.capsule(1.0, 0.3).export(model / "model_normalized.obj")
    (model / "model_normalized.json").write_text("{}")  # ShapeNet side files are not listed
    (tmp_path / ".hidden").mkdir()
    trimesh.creation.box().export(tmp_path / ".hidden" / "skip.obj")

    ds = MeshFolder(tmp_path, **SMALL)
    assert ds.names == ["02691156/1a2b3c", "a/box", "a/sphere", "cone", "cyl", "g/model", "pair"]
    for signal in ds:
        assert signal.points.shape == (1200, 3) and signal.points.dtype == torch.float32
        assert signal.sdf.shape == (1200, 1) and signal.occupancy.shape == (1200, 1)
        assert signal.occupancy.dtype == torch.bool
        assert signal.surface_points.shape == (200, 3)
        assert signal.points.abs().max() <= 1.0
        lo, hi = signal.mesh.bounds
        np.testing.assert_allclose((hi - lo).max(), 1.8, atol=1e-6)  # padding 0.1 on each side
        np.testing.assert_allclose((lo + hi) / 2, 0.0, atol=1e-6)
    assert len(ds[ds.names.index("pair")].mesh.faces) == 24  # scene meshes concatenated


def test_empty_and_missing_folders_are_errors(tmp_path):
    (tmp_path / "notes.txt").write_text("not a mesh")
    with pytest.raises(InputError, match=rf"{tmp_path}.*\.obj, \.ply, \.off, \.stl, \.glb, \.gltf"):
        MeshFolder(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        MeshFolder(tmp_path / "nowhere")


def test_degenerate_ground_truth_is_refused_not_scored(tmp_path):
    """A flat mesh has no inside: labels would be all-outside and IoU empty-vs-empty, so refuse it."""
    tilted = np.array([[0.0, 0.0, 0.0], [1.0, 0.5, 0.2], [0.3, 1.0, 0.7]])
    trimesh.Trimesh(tilted, [[0, 1, 2]], process=False).export(tmp_path / "triangle.obj")
    # a planar sheet of two triangles, rotated off the axes (non-zero extent on every axis)
    square = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=float)
    rotation = trimesh.transformations.rotation_matrix(0.7, [1, 1, 0])[:3, :3]
    trimesh.Trimesh(square @ rotation.T, [[0, 1, 2], [0, 2, 3]], process=False).export(tmp_path / "sheet.ply")
    # a triangle whose corners merge on load: nothing is left
    (tmp_path / "collapsed.obj").write_text("v 0 0 0\nv 0 0 0\nv 0 0 0\nf 1 2 3\n")
    for name in ("triangle.obj", "sheet.ply"):
        with pytest.raises(InputError, match=rf"{name}.*flat"):
            load_mesh(tmp_path / name)
    with pytest.raises(InputError, match=r"collapsed\.obj"):
        load_mesh(tmp_path / "collapsed.obj")
    # a thin but solid box is not flat
    assert len(load_mesh_of(trimesh.creation.box([1.0, 1.0, 1e-3]), tmp_path / "thin.ply").faces) == 12


def load_mesh_of(mesh: trimesh.Trimesh, path) -> trimesh.Trimesh:
    mesh.export(path)
    return load_mesh(path)


def test_corrupt_meshes_warn_and_are_skipped_or_raise_when_strict(tmp_path):
    trimesh.creation.box().export(tmp_path / "b_good.ply")
    (tmp_path / "a_garbage.ply").write_text("this is not a ply file\n")
    (tmp_path / "c_empty.obj").write_text("# no faces\n")
    (tmp_path / "d_nan.obj").write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\n")
    trimesh.PointCloud(np.eye(3)).export(tmp_path / "e_points.ply")  # vertices, no faces

    with pytest.raises(InputError, match=r"d_nan\.obj.*non-finite"):
        load_mesh(tmp_path / "d_nan.obj")

    ds = MeshFolder(tmp_path, **SMALL)
    with pytest.warns(UnreadableMeshWarning, match="a_garbage.ply"):
        assert ds[0].name == "b_good"  # the next readable mesh stands in
    with pytest.warns(UnreadableMeshWarning) as caught:
        assert ds[2].name == "b_good" and ds[3].name == "b_good"  # wraps round
        assert ds[4].name == "b_good"
    messages = [str(w.message) for w in caught if w.category is UnreadableMeshWarning]
    assert len(messages) == 3
    assert "c_empty.obj" in messages[0] and "d_nan.obj" in messages[1]
    assert "e_points.ply" in messages[2] and "no triangles" in messages[2]

    strict = MeshFolder(tmp_path, strict=True, **SMALL)
    for index, name in [(0, "a_garbage.ply"), (2, "c_empty.obj"), (3, "d_nan.obj"), (4, "e_points")]:
        with pytest.raises(InputError, match=name):
            strict[index]

    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "x.stl").write_bytes(b"\x00" * 10)
    with pytest.warns(UnreadableMeshWarning), pytest.raises(InputError, match="none of the 1"):
        MeshFolder(only_bad)[0]


# --------------------------------------------------------------------------------------------------
# Labels against analytic shapes and independent references
# --------------------------------------------------------------------------------------------------


def test_box_samples_match_the_analytic_sdf(tmp_path):
    offset_box().export(tmp_path / "box.obj")
    signal = MeshFolder(tmp_path, **SMALL)[0]
    exact = box_sdf(signal.points)[:, None]
    torch.testing.assert_close(signal.sdf, exact, atol=1e-4, rtol=0)
    clear = exact.abs() > 1e-4
    assert torch.equal(signal.occupancy[clear], (exact < 0)[clear])
    assert box_sdf(signal.surface_points).abs().max() < 1e-5

    fraction = BOX_HALF.prod().item()  # volume / 8
    uniform = signal.occupancy[: signal.n_uniform].float().mean().item()
    assert abs(uniform - fraction) < 4 * occupancy_std(fraction, signal.n_uniform)
    near = signal.points[signal.n_uniform :]
    assert box_sdf(near).abs().median() < 0.05  # near-surface points are near the surface

    # The split observed through the point map reproduces the analytic field at its queries.
    batch = ShapeSplit(target="sdf", n_context=50, n_target=200)([signal])
    predicted = batch.forward_map(lambda x: box_sdf(x)[..., None], batch.target.queries)
    torch.testing.assert_close(predicted, batch.target.values, atol=1e-4, rtol=0)


def test_sphere_samples_match_the_analytic_sdf(tmp_path):
    trimesh.creation.icosphere(4).export(tmp_path / "sphere.ply")
    signal = MeshFolder(tmp_path, **SMALL)[0]
    mesh = signal.mesh
    radius = np.linalg.norm(mesh.vertices, axis=1).mean()
    # The polyhedron lies between its inscribed and circumscribed spheres: that gap is the tolerance.
    inscribed = np.abs((mesh.triangles_center * mesh.face_normals).sum(1)).min()
    tol = radius - inscribed + 1e-4
    exact = signal.points.norm(dim=-1, keepdim=True) - radius
    assert (signal.sdf - exact).abs().max() <= tol
    clear = exact.abs() > tol
    assert torch.equal(signal.occupancy[clear], (exact < 0)[clear])

    fraction = 4 / 3 * math.pi * radius**3 / 8
    uniform = signal.occupancy[: signal.n_uniform].float().mean().item()
    assert abs(uniform - fraction) < 4 * occupancy_std(fraction, signal.n_uniform)


def solid_angle_winding_number(mesh: trimesh.Trimesh, points: np.ndarray) -> np.ndarray:
    """Brute-force generalized winding number: the Van Oosterom-Strackee solid angle of every
    triangle, summed (an independent reference for libigl's), 64 points at a time."""

    def dot(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return np.einsum("pfi,pfi->pf", u, v)

    parts = []
    for chunk in np.array_split(points, max(1, len(points) // 64)):
        rel = np.asarray(mesh.triangles)[None] - chunk[:, None, None]  # (P, F, 3 corners, 3)
        a, b, c = rel[:, :, 0], rel[:, :, 1], rel[:, :, 2]
        la, lb, lc = (np.linalg.norm(v, axis=-1) for v in (a, b, c))
        den = la * lb * lc + dot(a, b) * lc + dot(b, c) * la + dot(c, a) * lb
        parts.append((2 * np.arctan2(dot(a, np.cross(b, c)), den)).sum(-1) / (4 * np.pi))
    return np.concatenate(parts)


def near_and_uniform_points(mesh: trimesh.Trimesh, n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    surface = torch.as_tensor(mesh.sample(n, seed=seed), dtype=torch.float32)
    return torch.cat(
        [torch.rand(n, 3, generator=gen) * 2 - 1, surface + 0.02 * torch.randn(n, 3, generator=gen)]
    )


def test_queries_match_brute_force_and_trimesh():
    mesh = ProceduralShapes(1, seed=5, max_primitives=3).load_normalized(0)
    assert mesh.is_watertight
    points = near_and_uniform_points(mesh, 300, seed=0)
    reference = solid_angle_winding_number(mesh, points.numpy().astype(np.float64))
    assert reference.min() > -1e-6 and reference.max() < 1 + 1e-6  # closed mesh: 0 or 1
    np.testing.assert_allclose(winding_number_exact(mesh, points).numpy(), reference, atol=1e-5)
    assert np.abs(winding_number(mesh, points).numpy() - reference).max() < 0.01

    _, distance, _ = trimesh.proximity.closest_point(mesh, points.numpy())
    sdf = signed_distance(mesh, points)
    assert sdf.dtype == torch.float32 and sdf.shape == (600,)
    np.testing.assert_allclose(sdf.abs().numpy(), distance, atol=1e-5)
    np.testing.assert_array_equal((sdf < 0).numpy(), mesh.contains(points.numpy()))
    np.testing.assert_array_equal(inside(mesh, points).numpy(), reference > 0.5)


def test_winding_number_of_an_open_mesh_matches_brute_force():
    box = trimesh.creation.box((1.8, 1.8, 1.8))
    open_box = trimesh.Trimesh(
        box.vertices, np.delete(box.faces, np.flatnonzero(box.face_normals[:, 2] > 0.5), 0)
    )
    assert not open_box.is_watertight
    points = near_and_uniform_points(open_box, 200, seed=1)
    reference = solid_angle_winding_number(open_box, points.numpy().astype(np.float64))
    fractional = (reference > 0.05) & (reference < 0.95)
    assert fractional.sum() > 20  # the hole makes the winding number fractional above the box
    assert np.abs(winding_number(open_box, points).numpy() - reference).max() < 0.01
    np.testing.assert_allclose(winding_number_exact(open_box, points).numpy(), reference, atol=1e-5)


def test_queries_take_any_layout_and_reject_bad_input():
    mesh = normalize_mesh(trimesh.creation.icosphere(3))
    points = np.random.default_rng(0).uniform(-1, 1, (400, 6))[:, ::2]  # float64, not contiguous
    expected = signed_distance(mesh, np.ascontiguousarray(points))
    for variant in (points, torch.from_numpy(points.T.copy()).T, torch.from_numpy(points).float()):
        torch.testing.assert_close(signed_distance(mesh, variant), expected, atol=1e-6, rtol=0)
    assert inside(mesh, np.zeros((0, 3))).shape == (0,)
    assert unsigned_distance(mesh, torch.zeros(0, 3)).shape == (0,)
    with pytest.raises(InputError, match=r"shape \(P, 3\)"):
        inside(mesh, np.zeros((4, 2)))
    with pytest.raises(InputError, match="triangles"):
        signed_distance(trimesh.Trimesh(mesh.vertices, np.zeros((0, 3), dtype=np.int64)), points)
    with pytest.raises(InputError, match="face indices"):
        inside(trimesh.Trimesh(mesh.vertices[:3], [[0, 1, 5]], process=False), points)


def test_non_watertight_mesh_warns_and_is_labelled_away_from_the_hole(tmp_path):
    box = trimesh.creation.box((2.0, 2.0, 2.0))
    top = np.flatnonzero(box.face_normals[:, 2] > 0.5)
    open_box = trimesh.Trimesh(box.vertices, np.delete(box.faces, top, axis=0))
    open_box.export(tmp_path / "open_box.obj")
    ds = MeshFolder(tmp_path, **SMALL)
    with pytest.warns(NonWatertightMeshWarning, match="open_box"):
        signal = ds[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per dataset, not on every access
        ds[0]

    probes = torch.tensor(
        [[0.0, 0.0, 0.0], [0.5, -0.5, -0.6], [0.0, 0.0, -0.85], [0.95, 0.0, -0.5], [0.0, 0.0, -0.98]]
    )
    assert inside(signal.mesh, probes).tolist() == [True, True, True, False, False]
    half = torch.tensor([0.9, 0.9, 0.9])
    exact = box_sdf(signal.points, half)
    # below the hole, and nearer a present face than the missing top (at least 0.6 away)
    away = (signal.points[:, 2] < 0.3) & (exact.abs() > 0.02) & (exact.abs() < 0.5)
    assert torch.equal(signal.occupancy[away, 0], exact[away] < 0)
    torch.testing.assert_close(signal.sdf[away, 0].abs(), exact[away].abs(), atol=1e-4, rtol=0)


def test_occupancy_grid_matches_the_analytic_box():
    mesh = normalize_mesh(offset_box())
    grid = occupancy_grid(mesh, 16)
    assert grid.shape == (16, 16, 16) and grid.dtype == torch.bool
    expected = (box_sdf(grid_coords((16, 16, 16))) < 0).reshape(16, 16, 16)
    assert torch.equal(grid, expected)
    assert grid[8, 8, 8] and not grid[8, 8, 15]  # index order is (x, y, z): z is thin


# --------------------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------------------


def test_cache_is_hit_and_invalidated_by_parameters_and_edits(tmp_path):
    data, cache = tmp_path / "data", tmp_path / "cache"
    data.mkdir()
    offset_box().export(data / "box.obj")
    trimesh.creation.icosphere(2).export(data / "ball.ply")

    first = MeshFolder(data, cache_dir=cache, **SMALL)
    signals = list(first)
    assert first.stats == {"computed": 2, "cache_hits": 0}
    assert len(list(cache.glob("*.npz"))) == 2 and not list(cache.glob(".*"))  # no temp files left

    second = MeshFolder(data, cache_dir=cache, **SMALL)  # a new epoch, a new process
    for old, new in zip(signals, second, strict=True):
        assert torch.equal(old.points, new.points) and torch.equal(old.sdf, new.sdf)
        assert torch.equal(old.occupancy, new.occupancy) and old.name == new.name
        np.testing.assert_array_equal(old.mesh.faces, new.mesh.faces)
    assert second.stats == {"computed": 0, "cache_hits": 2}

    changed = MeshFolder(data, cache_dir=cache, **{**SMALL, "n_near": 400})
    assert len(changed[0].points) == 1000 and changed.stats["computed"] == 1
    reseeded = MeshFolder(data, cache_dir=cache, seed=1, **SMALL)
    assert not torch.equal(reseeded[0].points, signals[0].points)
    assert reseeded.stats["computed"] == 1

    stat = (data / "box.obj").stat()
    os.utime(data / "box.obj", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # edited in place
    edited = MeshFolder(data, cache_dir=cache, **SMALL)
    list(edited)
    assert edited.stats == {"computed": 1, "cache_hits": 1}

    path = edited.cache_path(0)
    path.write_bytes(path.read_bytes()[:100])  # a truncated entry is recomputed, not trusted
    with pytest.warns(UserWarning, match="unreadable cache file"):
        assert torch.equal(MeshFolder(data, cache_dir=cache, **SMALL)[0].points, signals[0].points)


# --------------------------------------------------------------------------------------------------
# Procedural shapes
# --------------------------------------------------------------------------------------------------


def test_procedural_shapes_are_deterministic_watertight_and_exportable(tmp_path):
    a = ProceduralShapes(5, seed=3, **SMALL)
    b = ProceduralShapes(5, seed=3, **SMALL)
    c = ProceduralShapes(5, seed=4, **SMALL)
    for i in range(5):
        mesh, recipe = a.generate(i)
        assert mesh.is_watertight and mesh.volume > 0 and 1 <= len(recipe) <= 3
        np.testing.assert_allclose((mesh.bounds[1] - mesh.bounds[0]).max(), 1.8, atol=1e-6)
        np.testing.assert_array_equal(mesh.vertices, b.load_normalized(i).vertices)
    assert not all(
        np.array_equal(a.load_normalized(i).vertices, c.load_normalized(i).vertices) for i in range(5)
    )
    assert ProceduralShapes(2, seed=3).generate(1)[1] == a.generate(1)[1]  # independent of n

    paths = a.export(tmp_path / "export")
    assert [p.name for p in paths] == [f"shape_{i:05d}.ply" for i in range(5)]
    folder = MeshFolder(tmp_path / "export", seed=3, **SMALL)
    assert folder.names == a.names
    signal, reread = a[2], folder[2]
    np.testing.assert_allclose(reread.mesh.vertices, signal.mesh.vertices, atol=1e-6)
    torch.testing.assert_close(reread.points, signal.points, atol=1e-5, rtol=0)  # same sampler
    torch.testing.assert_close(reread.sdf, signal.sdf, atol=1e-4, rtol=0)
    volume = signal.mesh.volume / 8
    uniform = signal.occupancy[: signal.n_uniform].float().mean().item()
    assert abs(uniform - volume) < 4 * occupancy_std(volume, signal.n_uniform) + 1e-3


# --------------------------------------------------------------------------------------------------
# Split
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signals():
    return list(ProceduralShapes(3, seed=0, **SMALL))


def rows(points: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """Index of each query among ``points`` (exact match)."""
    match = (queries[:, None] == points[None]).all(-1)
    assert torch.equal(match.sum(1), torch.ones(len(queries), dtype=torch.long))
    return match.float().argmax(1)


def test_labelled_split_draws_consistent_observations(signals):
    split = ShapeSplit(target="sdf", context="labelled", n_context=40, n_target=100)
    batch = split(signals, torch.Generator().manual_seed(7))
    assert batch.kind == "shape" and isinstance(batch.forward_map, PointMap)
    assert batch.context.queries.shape == (3, 40, 3) and batch.context.values.shape == (3, 40, 1)
    assert batch.target.queries.shape == (3, 100, 3) and batch.target.values.shape == (3, 100, 1)
    assert batch.extras["target"] == "sdf"
    assert [m["name"] for m in batch.metadata] == [s.name for s in signals]
    assert all(m["mesh"] is s.mesh for m, s in zip(batch.metadata, signals, strict=True))
    torch.testing.assert_close(batch.target.queries[:, :40], batch.context.queries)  # prefix
    for s, sig in enumerate(signals):
        index = rows(sig.points, batch.target.queries[s])
        torch.testing.assert_close(batch.target.values[s], sig.sdf[index])
        assert (index < sig.n_uniform).sum() == 50  # uniform_fraction 0.5

    again = split(signals, torch.Generator().manual_seed(7))
    assert torch.equal(again.target.queries, batch.target.queries)
    other = split(signals, torch.Generator().manual_seed(8))
    assert not torch.equal(other.target.queries, batch.target.queries)

    disjoint = ShapeSplit(target="occupancy", n_context=40, n_target=100, disjoint=True)(signals)
    for s in range(3):
        overlap = disjoint.context.queries[s][:, None] == disjoint.target.queries[s][None]
        assert not overlap.all(-1).any()
    assert set(disjoint.target.values.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize(("target", "on_surface"), [("occupancy", 0.5), ("sdf", 0.0)])
def test_surface_context_is_a_point_cloud_on_the_surface(signals, target, on_surface):
    batch = ShapeSplit(target=target, context="surface", n_context=64, n_target=80)(
        signals, torch.Generator().manual_seed(0)
    )
    assert batch.context.queries.shape == (3, 64, 3)
    assert torch.all(batch.context.values == on_surface)
    for s, sig in enumerate(signals):
        assert signed_distance(sig.mesh, batch.context.queries[s]).abs().max() < 1e-4
    assert batch.extras == {"target": target, "context": "surface"}


def test_split_rejects_bad_settings(signals):
    with pytest.raises(InputError, match="target"):
        ShapeSplit(target="colour")
    with pytest.raises(InputError, match="context"):
        ShapeSplit(context="images")
    with pytest.raises(InputError, match="shape_00000"):
        ShapeSplit(n_target=5000)(signals)
    with pytest.raises(InputError, match="surface points"):
        ShapeSplit(context="surface", n_context=500)(signals)


def test_shapes_feed_the_batch_iterator():
    ds = ProceduralShapes(4, seed=1, **SMALL)
    split = ShapeSplit(n_context=20, n_target=30)
    first = next(iterate_batches(ds, split, batch_size=2, seed=0))
    again = next(iterate_batches(ds, split, batch_size=2, seed=0))
    assert first.target.values.shape == (2, 30, 1)
    assert torch.equal(first.target.queries, again.target.queries)
