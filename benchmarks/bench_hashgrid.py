"""Hash-grid encoding throughput: forward + backward points per second, torch backend (and tcnn).

For 2-D and 3-D inputs and several table sizes (``log2_hashmap_size``), times one forward pass and
one backward pass of ``encoding(x).square().sum()`` (gradients for the table and the inputs), and
reports the median over repetitions as points per second. The other config keys are the defaults
(16 levels, 2 features per level, base resolution 16, per-level scale 1.5). On a CUDA machine the
torch backend runs on the GPU, and tiny-cuda-nn runs beside it when it is importable. The load
average is recorded because a shared CPU makes the numbers noisy.

    python -m benchmarks.bench_hashgrid [--quick] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from typing import Any

import torch

from benchmarks._machine import save_results
from genfield.fields.hashgrid import HashGridEncoding, resolve_backend


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_encoding(enc: HashGridEncoding, n_points: int, reps: int, device: str) -> dict[str, float]:
    """Median seconds of a forward and of a forward + backward pass over ``n_points`` points."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n_points, enc.in_dim, generator=gen).to(device).requires_grad_()
    forward, total = [], []
    for rep in range(reps + 1):  # the first repetition warms up and is dropped
        _sync(device)
        start = time.perf_counter()
        y = enc(x)
        _sync(device)
        mid = time.perf_counter()
        y.float().square().sum().backward()
        _sync(device)
        end = time.perf_counter()
        if rep:
            forward.append(mid - start)
            total.append(end - start)
        enc.zero_grad(set_to_none=True)
        x.grad = None
    fwd, fb = statistics.median(forward), statistics.median(total)
    return {
        "forward_s": fwd,
        "forward_backward_s": fb,
        "forward_points_per_s": n_points / fwd,
        "forward_backward_points_per_s": n_points / fb,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer points, sizes and repetitions")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    n_points = 2**14 if args.quick else 2**18
    reps = 3 if args.quick else 10
    log2_sizes = (14, 19) if args.quick else (12, 14, 17, 19, 22)
    backends = ["torch"]
    if args.device.startswith("cuda") and resolve_backend("auto") == "tcnn":
        backends.append("tcnn")

    rows: list[dict[str, Any]] = []
    for in_dim in (2, 3):
        for log2_size in log2_sizes:
            for backend in backends:
                enc = HashGridEncoding(in_dim, {"log2_hashmap_size": log2_size}, backend=backend, seed=0).to(
                    args.device
                )
                row = {
                    "backend": backend,
                    "in_dim": in_dim,
                    "log2_hashmap_size": log2_size,
                    "n_params": enc.n_entries * enc.n_features_per_level,
                    "n_points": n_points,
                    **time_encoding(enc, n_points, reps, args.device),
                }
                rows.append(row)
                print(
                    f"{backend:5s} d={in_dim} log2_T={log2_size:2d}: "
                    f"fwd {row['forward_points_per_s'] / 1e6:7.3f} M pts/s, "
                    f"fwd+bwd {row['forward_backward_points_per_s'] / 1e6:7.3f} M pts/s"
                )
    results = {
        "quick": args.quick,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "config": "HASHGRID_DEFAULTS with log2_hashmap_size varied",
        "rows": rows,
    }
    save_results("bench_hashgrid", results, device=args.device)


if __name__ == "__main__":
    main()
