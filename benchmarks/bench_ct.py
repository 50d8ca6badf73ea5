"""Parallel-beam CT throughput: projections (rays) per second of the projector, and FBP time.

Three workloads on the same rays (``angles x detectors`` rays, ``n_samples`` points per ray):

* ``siren_field``: :class:`~genfield.forward.ct.ParallelBeamProjection` over a small SIREN-like field
  (3 hidden sine layers of width 128, ``omega0 = 30``), forward and forward + backward (gradients
  of the squared projections with respect to the field's weights: one inner-loop step's worth);
* ``pixel_image``: :func:`~genfield.forward.ct.project_image` of a ``detectors``-square image (how
  :class:`~genfield.datasets.ct.CTSplit` makes its data);
* ``fbp``: :func:`~genfield.forward.ct.fbp` of the pixel sinogram back to a ``detectors``-square image.

Each time is the median over repetitions after one warm-up. The load average is recorded because a
shared CPU makes the numbers noisy (an oversubscribed CPU slows OpenMP's threads by orders of
magnitude; ``--threads 1`` is steadier there).

    python -m benchmarks.bench_ct [--quick] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

import torch

from benchmarks._machine import median_seconds, save_results
from genfield.fields import build_field
from genfield.forward.ct import ParallelBeamProjection, as_sinogram, ct_queries, fbp, project_image


def run(angles: int, detectors: int, samples: int, reps: int, device: str) -> dict[str, Any]:
    torch.manual_seed(0)
    theta = torch.arange(angles, device=device) * (math.pi / angles)
    queries = ct_queries(theta, detectors)
    n_rays = queries.shape[0]
    projector = ParallelBeamProjection(n_samples=samples)
    siren = build_field("siren", head="grey", hidden=128, n_layers=3).to(device)
    params = {k: v.requires_grad_() for k, v in siren.init(0, device=device).items()}
    field = siren.bind(params)

    def field_forward() -> None:
        with torch.no_grad():
            projector(field, queries)

    def field_backward() -> None:
        projector(field, queries).square().mean().backward()
        for p in params.values():
            p.grad = None

    axis = torch.linspace(-1, 1, detectors, device=device)
    image = torch.exp(-8 * (axis[:, None] ** 2 + 0.5 * axis[None, :] ** 2))[None]
    sinogram = as_sinogram(project_image(image, queries, samples), detectors)[:, 0]

    row: dict[str, Any] = {
        "device": device,
        "angles": angles,
        "detectors": detectors,
        "n_samples": samples,
        "rays": n_rays,
        "points": n_rays * samples,
    }
    for name, fn in (
        ("siren_field_forward", field_forward),
        ("siren_field_forward_backward", field_backward),
        ("pixel_image_forward", lambda: project_image(image, queries, samples)),
    ):
        seconds = median_seconds(fn, reps, device)
        row[f"{name}_s"] = seconds
        row[f"{name}_rays_per_s"] = n_rays / seconds
    row["fbp_s"] = median_seconds(lambda: fbp(sinogram, theta), reps, device)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer rays and repetitions")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    shape = (16, 64, 64) if args.quick else (64, 128, 128)
    reps = 2 if args.quick else 5
    row = run(*shape, reps=reps, device=args.device)
    row["load_average_1min"] = os.getloadavg()[0]
    for key, value in row.items():
        print(f"{key:>40}: {value:.4g}" if isinstance(value, float) else f"{key:>40}: {value}")
    save_results("bench_ct", {"quick": args.quick, "runs": [row]}, device=args.device)


if __name__ == "__main__":
    main()
