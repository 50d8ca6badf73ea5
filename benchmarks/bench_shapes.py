"""Shape loading: samples/s with a cold cache (labelling) and a warm one (reading .npz files).

Also times the labelling queries on one 20k-triangle sphere against trimesh's own (ray-based
``contains``, ``proximity.closest_point``), which is why the triangle hierarchy exists.

    python -m benchmarks.bench_shapes [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch
import trimesh

from benchmarks._machine import save_results
from genfield.datasets.procedural_shapes import ProceduralShapes
from genfield.datasets.shapes import (
    ShapeSplit,
    TriangleTree,
    normalize_mesh,
    unsigned_distance,
)


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def loading(n_shapes: int, n_points: int) -> dict:
    """Cold pass (label + write cache) and warm pass (new dataset object, same cache)."""
    with tempfile.TemporaryDirectory() as cache:
        options = dict(n_uniform=n_points // 2, n_near=n_points // 2, cache_dir=cache)
        cold = ProceduralShapes(n_shapes, seed=0, **options)
        signals, cold_s = _timed(lambda: list(cold))
        warm = ProceduralShapes(n_shapes, seed=0, **options)
        _, warm_s = _timed(lambda: list(warm))
        assert warm.stats == {"computed": 0, "cache_hits": n_shapes}
        faces = [len(s.mesh.faces) for s in signals]
        split = ShapeSplit(n_context=300, n_target=2048)
        gen = torch.Generator().manual_seed(0)
        reps = 20
        _, split_s = _timed(lambda: [split(signals[:8], gen) for _ in range(reps)])
    samples = n_shapes * n_points
    return {
        "shapes": n_shapes,
        "samples_per_shape": n_points,
        "faces_median": int(np.median(faces)),
        "cold_s": cold_s,
        "warm_s": warm_s,
        "cold_samples_per_s": samples / cold_s,
        "warm_samples_per_s": samples / warm_s,
        "warm_speedup": cold_s / warm_s,
        "split_batches_per_s": reps / split_s,
        "split_batch": {"signals": min(8, n_shapes), "n_context": 300, "n_target": 2048},
    }


def queries(n_points: int, subdivisions: int) -> dict:
    """Inside test and distance on a sphere mesh: the hierarchy against trimesh."""
    mesh = normalize_mesh(trimesh.creation.icosphere(subdivisions))
    rng = np.random.default_rng(0)
    half = n_points // 2
    points = np.concatenate(
        [
            rng.uniform(-1, 1, (half, 3)),
            mesh.sample(n_points - half, seed=1) + rng.normal(0, 0.02, (n_points - half, 3)),
        ]
    ).astype(np.float32)
    query = torch.from_numpy(points)
    tree, build_s = _timed(lambda: TriangleTree(mesh))
    winding, wn_s = _timed(lambda: tree.winding_number(query))
    dist, dist_s = _timed(lambda: unsigned_distance(mesh, query, tree))
    subset = slice(None, None, max(1, n_points // 4096))  # trimesh's contains is slow: <= 4096 points
    ref = points[subset]
    contains, contains_s = _timed(lambda: mesh.contains(ref))
    (_, reference, _), closest_s = _timed(lambda: trimesh.proximity.closest_point(mesh, ref))
    return {
        "faces": len(mesh.faces),
        "points": n_points,
        "tree_build_s": build_s,
        "tree_inside_points_per_s": n_points / wn_s,
        "trimesh_contains_points_per_s": len(ref) / contains_s,
        "tree_distance_points_per_s": n_points / dist_s,
        "trimesh_closest_point_points_per_s": len(ref) / closest_s,
        "inside_agreement": float(((winding[subset] >= 0.5).numpy() == contains).mean()),
        "distance_max_abs_diff": float(np.abs(dist[subset].numpy() - reference).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (about a minute)")
    args = parser.parse_args()
    if args.quick:
        results = {
            "loading": loading(n_shapes=6, n_points=8192),
            "queries": queries(n_points=4096, subdivisions=5),
        }
    else:
        results = {
            "loading": loading(n_shapes=24, n_points=32768),
            "queries": queries(n_points=32768, subdivisions=5),
        }
    results["quick"] = args.quick
    results["note"] = "labelling runs single-threaded by design (see shapes._one_thread)"
    for section in ("loading", "queries"):
        print(
            section,
            {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in results[section].items()},
        )
    save_results("bench_shapes", results)


if __name__ == "__main__":
    main()
