"""Shape loading: samples/s with a cold cache (labelling) and a warm one (reading .npz files).

Also times the labelling queries (libigl's fast winding number and bounding-box distance, through
``genfield.datasets.shapes``) on one 20k-triangle sphere, and checks them against trimesh's own
(ray-based ``contains``, ``proximity.closest_point``, timed on a subset because they are slow).

    python -m benchmarks.bench_shapes [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from importlib.metadata import version

import numpy as np
import torch
import trimesh

from benchmarks._machine import median_seconds, save_results
from genfield.datasets.builtin.shapes import ProceduralShapes
from genfield.datasets.shapes import ShapeSplit, inside, normalize_mesh, signed_distance


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


def queries(n_points: int, subdivisions: int, reps: int) -> dict:
    """Inside test and signed distance on a sphere mesh (libigl), checked against trimesh."""
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
    inside_s = median_seconds(lambda: inside(mesh, query), reps)
    sdf_s = median_seconds(lambda: signed_distance(mesh, query), reps)
    sdf = signed_distance(mesh, query).numpy()
    subset = slice(None, None, max(1, n_points // 4096))  # trimesh's contains is slow: <= 4096 points
    ref = points[subset]
    contains, contains_s = _timed(lambda: mesh.contains(ref))
    (_, reference, _), closest_s = _timed(lambda: trimesh.proximity.closest_point(mesh, ref))
    return {
        "faces": len(mesh.faces),
        "points": n_points,
        "reps": reps,
        "libigl": version("libigl"),
        "inside_points_per_s": n_points / inside_s,
        "signed_distance_points_per_s": n_points / sdf_s,
        "trimesh_contains_points_per_s": len(ref) / contains_s,
        "trimesh_closest_point_points_per_s": len(ref) / closest_s,
        "checked_points": len(ref),
        "inside_agreement": float(((sdf[subset] < 0) == contains).mean()),
        "distance_max_abs_diff": float(np.abs(np.abs(sdf[subset]) - reference).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small run (about a minute)")
    args = parser.parse_args()
    if args.quick:
        results = {
            "loading": loading(n_shapes=6, n_points=8192),
            "queries": queries(n_points=4096, subdivisions=5, reps=3),
        }
    else:
        results = {
            "loading": loading(n_shapes=24, n_points=32768),
            "queries": queries(n_points=50000, subdivisions=5, reps=5),
        }
    results["quick"] = args.quick
    results["load_average_1min"] = os.getloadavg()[0]  # the machine may be shared: read figures with it
    results["note"] = "libigl parallelises each query over its own threads (up to the core count)"
    for section in ("loading", "queries"):
        print(
            section,
            {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in results[section].items()},
        )
    save_results("bench_shapes", results)


if __name__ == "__main__":
    main()
