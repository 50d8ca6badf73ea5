"""Volume-rendering throughput: rays per second of the renderer, and of the built-in ray caster.

Workloads:

* ``renderer``: :class:`~genfield.forward.volume.VolumeRenderer` over a genfield ``relu_pe`` field
  (positional encoding, 3 ReLU layers of width 128, radiance head) for several
  ``(n_samples, n_importance)`` settings, forward only (evaluation, no graph) and forward + backward
  (gradients of a photometric loss with respect to the field's weights: one inner-loop step's
  worth). Rays come from :func:`~genfield.forward.volume.camera_rays` and are clipped to the cube.
* ``raycast`` (CPU only): rays per second of the trimesh ray caster that makes
  :func:`~genfield.datasets.views.builtin_views` (rtree, no embree), one scene at 32 x 32.

Each time is the median over repetitions after one warm-up. The load average is recorded because a
shared CPU makes the numbers noisy.

    python -m benchmarks.bench_volume [--quick] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from typing import Any

import numpy as np
import torch

from benchmarks._machine import median_seconds, save_results
from genfield.datasets.builtin.views import random_primitives, raycast_rgba
from genfield.fields import build_field
from genfield.forward.volume import VolumeRenderer, camera_rays, look_at, ray_queries


def rays_of_views(n_rays: int, device: str) -> torch.Tensor:
    """``n_rays`` queries from cameras at radius 2.7 looking at the origin (64 x 64 views)."""
    size = 64
    n_views = math.ceil(n_rays / size**2)
    positions = [
        2.7 * np.array([math.cos(a), math.sin(a), 0.5]) / math.hypot(1, 0.5)
        for a in np.linspace(0, 2 * math.pi, n_views, endpoint=False)
    ]
    c2w = look_at(torch.as_tensor(np.stack(positions))).float()
    origins, directions = camera_rays(c2w, 0.5 * size / math.tan(0.35), size, size)
    queries = ray_queries(origins, directions, 4 / 3, 4.0).reshape(-1, 8)[:n_rays]
    return queries.to(device)


def bench_renderer(n_rays: int, settings, reps: int, device: str) -> list[dict[str, Any]]:
    field = build_field("relu_pe", in_dim=3, head="radiance").to(device)
    params = {k: v.requires_grad_() for k, v in field.init(seed=0, device=device).items()}
    queries = rays_of_views(n_rays, device)
    target = torch.full((n_rays, 3), 0.5, device=device)
    field_fn = field.bind(params)
    rows = []
    for n_samples, n_importance in settings:
        renderer = VolumeRenderer(n_samples=n_samples, n_importance=n_importance)

        def forward(renderer: VolumeRenderer = renderer) -> None:
            with torch.no_grad():
                renderer.deterministic()(field_fn, queries)

        def forward_backward(renderer: VolumeRenderer = renderer) -> None:
            loss = (renderer(field_fn, queries) - target).square().mean()
            torch.autograd.grad(loss, list(params.values()))

        fwd = median_seconds(forward, reps, device)
        both = median_seconds(forward_backward, reps, device)
        row = {
            "n_rays": n_rays,
            "n_samples": n_samples,
            "n_importance": n_importance,
            "forward_s": fwd,
            "forward_rays_per_s": n_rays / fwd,
            "forward_backward_s": both,
            "forward_backward_rays_per_s": n_rays / both,
        }
        print(
            f"renderer {n_samples:4d}+{n_importance:<3d} samples, {n_rays} rays: "
            f"forward {row['forward_rays_per_s']:,.0f} rays/s, "
            f"forward+backward {row['forward_backward_rays_per_s']:,.0f} rays/s"
        )
        rows.append(row)
    return rows


def bench_raycast(size: int, n_views: int) -> dict[str, Any]:
    mesh, colours = random_primitives(np.random.default_rng([0, 0]))
    mesh.apply_scale(1.5)
    focal = 0.5 * size / math.tan(0.35)
    cameras = [look_at(4 * np.array([math.cos(a), math.sin(a), 0.6])).numpy() for a in range(n_views)]
    start = time.perf_counter()
    for c2w in cameras:
        raycast_rgba(mesh, colours, c2w, focal, size)
    seconds = time.perf_counter() - start
    rays = n_views * size * size
    print(f"raycast {rays} rays in {seconds:.2f} s: {rays / seconds:,.0f} rays/s")
    return {
        "size": size,
        "n_views": n_views,
        "faces": len(mesh.faces),
        "seconds": seconds,
        "rays_per_s": rays / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        n_rays, reps, settings = 1024, 3, [(32, 0), (64, 0), (32, 32)]
    else:
        n_rays, reps, settings = 4096, 5, [(32, 0), (64, 0), (128, 0), (32, 32), (64, 64)]
    if args.device.startswith("cuda"):
        n_rays *= 16
    results: dict[str, Any] = {
        "quick": args.quick,
        "loadavg": os.getloadavg(),
        "renderer": bench_renderer(n_rays, settings, reps, args.device),
    }
    if args.device == "cpu":
        results["raycast"] = bench_raycast(32, 2 if args.quick else 8)
    name = "bench_volume" if args.device == "cpu" else f"bench_volume_{args.device.split(':')[0]}"
    save_results(name, results, device=args.device)


if __name__ == "__main__":
    main()
