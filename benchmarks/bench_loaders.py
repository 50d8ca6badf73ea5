"""Loader throughput: samples per second of each dataset's ``__getitem__``, and of whole meta-batches.

Folder loaders read CelebA-shaped (218 x 178) files written to a temporary folder; one full pass runs
first so the OS page cache is warm, then the timed passes measure decode + crop + resize. Built-in sets
are timed the same way. ``LOADERS`` maps a loader name to a callable ``(workdir, quick) -> dataset``;
other kinds (CT, shapes, views) can add their entries.

    python -m benchmarks.bench_loaders [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import torch
import torch.nn.functional as F

from benchmarks._machine import save_results
from genfield.datasets.builtin import builtin_faces, builtin_natural
from genfield.datasets.images import ImageFolder, ImageSplit
from genfield.datasets.sampling import iterate_batches

CELEBA_SHAPE = (218, 178)


def write_folder(root: Path, count: int, extension: str, seed: int = 0) -> Path:
    """``count`` smooth random RGB images of CelebA's shape (photograph-like, so JPEG compresses
    as it would on faces rather than on white noise)."""
    folder = root / extension.lstrip(".")
    if folder.is_dir() and len(list(folder.iterdir())) == count:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for i in range(count):
        coarse = torch.rand(1, 3, 14, 12, generator=gen)
        image = F.interpolate(coarse, size=CELEBA_SHAPE, mode="bicubic", align_corners=False)
        image = image + 0.03 * torch.randn(image.shape, generator=gen)
        array = (image[0].permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        iio.imwrite(folder / f"{i:06d}{extension}", array)
    return folder


def _count(quick: bool) -> int:
    return 64 if quick else 1000


LOADERS: dict[str, Callable[[Path, bool], Any]] = {
    "folder_jpeg_178": lambda root, quick: ImageFolder(write_folder(root, _count(quick), ".jpg")),
    "folder_jpeg_64": lambda root, quick: ImageFolder(write_folder(root, _count(quick), ".jpg"), size=64),
    "folder_png_178": lambda root, quick: ImageFolder(write_folder(root, _count(quick), ".png")),
    "builtin_faces_32": lambda root, quick: builtin_faces("train", size=32),
    "builtin_natural_32": lambda root, quick: builtin_natural(n=_count(quick), size=32),
    "builtin_natural_128": lambda root, quick: builtin_natural(n=_count(quick), size=128),
}


def time_items(dataset: Any, repeats: int) -> dict[str, float]:
    """Samples/s of ``dataset[i]`` over the whole dataset (after one warm-up pass)."""
    n = len(dataset)
    for i in range(n):  # warm: OS page cache, decoded photographs, allocator
        dataset[i]
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(n):
            dataset[i]
        best = min(best, time.perf_counter() - start)
    return {"items": n, "seconds": best, "samples_per_s": n / best}


def time_batches(dataset: Any, batch_size: int, steps: int, num_workers: int) -> dict[str, float]:
    """Samples/s of :func:`iterate_batches` with an :class:`ImageSplit` (10% context)."""
    batches = iterate_batches(
        dataset, ImageSplit(context_fraction=0.1), batch_size, seed=0, num_workers=num_workers
    )
    next(batches)  # worker start-up is not throughput
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    seconds = time.perf_counter() - start
    del batches
    return {
        "batch_size": batch_size,
        "steps": steps,
        "num_workers": num_workers,
        "samples_per_s": batch_size * steps / seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 files, one timed pass")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (DataLoader workers use 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else 3
    results: dict[str, Any] = {
        "quick": args.quick,
        "threads": args.threads,
        "load_average_before": os.getloadavg(),
        "items": {},
        "batches": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for name, build in LOADERS.items():
            build(root, args.quick)  # write the files once, outside the timing
            start = time.perf_counter()
            dataset = build(root, args.quick)
            construct = time.perf_counter() - start
            results["items"][name] = row = time_items(dataset, repeats)
            row["construct_seconds"] = construct
            print(
                f"{name:>22}: {row['samples_per_s']:11.1f} samples/s ({row['items']} items, "
                f"built in {construct * 1e3:.1f} ms)"
            )
        folder = LOADERS["folder_jpeg_178"](root, args.quick)
        steps = 4 if args.quick else 30
        for workers in (0, 2):
            row = time_batches(folder, batch_size=16, steps=steps, num_workers=workers)
            results["batches"][f"folder_jpeg_178_workers{workers}"] = row
            print(f"  batches, {workers} workers: {row['samples_per_s']:9.1f} samples/s")
    results["load_average_after"] = os.getloadavg()
    results["note"] = (
        "folder files are 218x178 (CelebA shape), centre-cropped and resized, warm OS cache; "
        "builtin_faces resizes at construction, so its items are list look-ups"
    )
    save_results("bench_loaders", results)


if __name__ == "__main__":
    main()
