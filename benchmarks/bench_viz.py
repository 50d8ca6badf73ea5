"""Mesh extraction and turntable rendering cost (CPU).

Measures :func:`genfield.viz.meshes.extract_mesh` on a SIREN SDF field (grid points per second,
marching-cubes time, the peak resident memory of the process) at grid resolutions up to 256^3, and
:func:`genfield.viz.video.turntable` frames per second through the volume renderer. The chunked grid
evaluation keeps the network's activations to ``chunk`` points at a time, so the memory a 256^3
grid adds is its float32 volume (64 MiB) plus marching cubes' own.

    python -m benchmarks.bench_viz [--quick]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks._machine import save_results
from genfield.fields.field import build_field
from genfield.forward.volume import VolumeRenderer
from genfield.viz.meshes import evaluate_grid, mesh_from_volume
from genfield.viz.video import turntable


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def bench_mesh(resolution: int, chunk: int) -> dict:
    field = build_field("siren", in_dim=3, head="sdf", hidden=64, n_layers=3, omega0=5.0)
    field_fn = field.bind(field.init(seed=0))
    level = float(np.median(evaluate_grid(field_fn, 16)))
    start = time.perf_counter()
    volume = evaluate_grid(field_fn, resolution, chunk=chunk)
    grid_s = time.perf_counter() - start
    start = time.perf_counter()
    mesh = mesh_from_volume(volume, level)
    mc_s = time.perf_counter() - start
    return {
        "resolution": resolution,
        "chunk": chunk,
        "grid_seconds": round(grid_s, 3),
        "grid_points_per_s": round(resolution**3 / grid_s),
        "marching_cubes_seconds": round(mc_s, 3),
        "faces": len(mesh.faces),
        "watertight": bool(mesh.is_watertight),
        "peak_rss_mib_after": round(peak_rss_mib(), 1),
    }


def bench_turntable(size: int, n_frames: int, n_samples: int) -> dict:
    field = build_field("siren", in_dim=3, head="radiance", hidden=64, n_layers=3, omega0=5.0)
    field_fn = field.bind(field.init(seed=0))
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        turntable(
            Path(folder) / "t.gif",
            field_fn,
            VolumeRenderer(n_samples=n_samples),
            n_frames=n_frames,
            size=size,
        )
        seconds = time.perf_counter() - start
    return {
        "size": size,
        "n_frames": n_frames,
        "n_samples": n_samples,
        "seconds": round(seconds, 3),
        "frames_per_s": round(n_frames / seconds, 3),
        "rays_per_s": round(n_frames * size * size / seconds),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (CI smoke run)")
    args = parser.parse_args()
    torch.manual_seed(0)
    resolutions = (32, 64) if args.quick else (64, 128, 256)
    results = {
        "threads": torch.get_num_threads(),
        "quick": args.quick,
        "mesh": [bench_mesh(r, chunk=65536) for r in resolutions],
        "turntable": [
            bench_turntable(
                size=24 if args.quick else 64,
                n_frames=6 if args.quick else 36,
                n_samples=32 if args.quick else 64,
            )
        ],
    }
    for row in results["mesh"] + results["turntable"]:
        print(row)
    save_results("bench_viz", results)


if __name__ == "__main__":
    main()
