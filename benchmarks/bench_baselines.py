"""Held-out quality of the classical baselines on the built-in data: the numbers learned priors must beat.

* faces (``configs/data/faces.yaml``: 32 px, 10 % of the pixels as context), every test face:
  biharmonic inpainting, the linear Gaussian prior, the mean training face;
* glyphs (``configs/data/glyphs.yaml``: 32 px, 10 % of the pixels as context), the first 64
  validation glyphs (the split to tune on) and the first 64 test glyphs (the split to report), both
  in typefaces never seen in training: the same three baselines;
* photo crops (grey 32 px crops of scikit-image's photographs, 2048 for training, val and test crops
  from photographs never cropped for training, see ``natural_photos``), 64 per held-out split: the
  same three baselines, the evidence that crops of photographs are not a collection a linear prior
  learns more from than a smoothness prior assumes;
* CT phantoms (``configs/data/ct_phantoms.yaml``: 32 px, even context views) at 2 and 8 views,
  16 test phantoms: SART-5, FBP, the linear Gaussian prior, the mean training slice.

Each baseline is fitted on the bundle's training collection and scored with
:func:`genfield.evaluation.evaluate`'s metric (PSNR of the clamped image). For the Gaussian prior
the table adds the coverage of its central 90 % interval (``mean +- 1.645 std``): over the
unobserved pixels for faces, over the pixels inside the reconstruction disc for CT (outside it every
phantom is 0 and so is the prior's variance), and the shrinkage coefficient and noise it chose.

    python -m benchmarks.bench_baselines [--kinds faces,glyphs,photos,ct] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
import yaml

from benchmarks._machine import save_results
from genfield.builders import DataBundle, build_data
from genfield.classical import build_baseline
from genfield.datasets.builtin import builtin_natural, natural_photos
from genfield.datasets.images import ImageList, ImageSplit
from genfield.evaluation import as_images
from genfield.metrics import psnr
from genfield.reports import context_mask

DATA = Path(__file__).resolve().parents[1] / "genfield" / "configs" / "data"
Z90 = 1.6448536269514722  # the 95th percentile of the standard normal
DEFAULT_KINDS = "faces,glyphs,photos,ct"


def data_config(name: str, **overrides: Any) -> dict[str, Any]:
    return {**yaml.safe_load((DATA / f"{name}.yaml").read_text()), **overrides}


def coverage(prediction, batch) -> float:
    """Share of the scored pixels whose truth lies in the central 90 % interval."""
    truth = batch.ground_truth.reshape(batch.num_signals, -1, batch.ground_truth.shape[-1])
    inside = (prediction.mean - truth).abs() <= Z90 * prediction.std
    if batch.kind == "image":
        scored = ~context_mask(batch).reshape(batch.num_signals, -1, 1).expand_as(inside)
    else:
        scored = prediction.variance > 1e-8
    return inside[scored].float().mean().item()


def score(bundle, batch, names: list[str], setting: str) -> list[dict[str, Any]]:
    rows = []
    for name in names:
        start = time.perf_counter()
        baseline = build_baseline(name).fit(bundle.train)
        fitted = time.perf_counter()
        prediction = baseline.reconstruct(batch)
        done = time.perf_counter()
        image = as_images(prediction.mean, batch.ground_truth).clamp(0, 1)
        row = {
            "data": bundle.name,
            "setting": setting,
            "baseline": baseline.name,
            "psnr": psnr(image, batch.ground_truth).mean().item(),
            "signals": batch.num_signals,
            "fit_seconds": fitted - start,
            "seconds_per_signal": (done - fitted) / batch.num_signals,
        }
        if prediction.variance is not None:
            row["coverage90"] = coverage(prediction, batch)
            row["shrinkage"] = getattr(baseline, "coefficient", None)
        rows.append(row)
        print(
            f"{bundle.name:12s} {setting:20s} {baseline.name:15s} {row['psnr']:6.2f} dB"
            + (f"  coverage90 {row['coverage90']:.3f}" if "coverage90" in row else "")
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = ["| data | setting | baseline | PSNR (dB) | 90 % coverage |", "|---|---|---|---|---|"]
    for r in rows:
        cov = f"{r['coverage90']:.3f}" if "coverage90" in r else ""
        lines.append(f"| {r['data']} | {r['setting']} | {r['baseline']} | {r['psnr']:.2f} | {cov} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=DEFAULT_KINDS, help="comma-separated: faces, glyphs, photos, ct")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rows: list[dict[str, Any]] = []
    kinds = args.kinds.split(",")
    if "faces" in kinds:
        bundle = build_data(data_config("faces", eval_signals=10), seed=args.seed)
        batch = bundle.eval_batch("test", seed=args.seed)
        rows += score(bundle, batch, ["biharmonic", "gaussian-prior", "mean"], "10% context")
    if "glyphs" in kinds:
        bundle = build_data(data_config("glyphs", eval_signals=64), seed=args.seed)
        for split in ("val", "test"):
            batch = bundle.eval_batch(split, seed=args.seed)
            rows += score(bundle, batch, ["biharmonic", "gaussian-prior", "mean"], f"10% context, {split}")
    if "photos" in kinds:
        crops = {
            split: ImageList(list(builtin_natural(n, 32, args.seed + i, True, natural_photos(split, True))))
            for i, (split, n) in enumerate({"train": 2048, "val": 64, "test": 64}.items())
        }
        split = ImageSplit(context_fraction=0.1)
        bundle = DataBundle("photo crops", "image", *crops.values(), split, split, "grey", 8, 64)
        for which in ("val", "test"):
            batch = bundle.eval_batch(which, seed=args.seed)
            rows += score(bundle, batch, ["biharmonic", "gaussian-prior", "mean"], f"10% context, {which}")
    if "ct" in kinds:
        for views in (2, 8):
            bundle = build_data(
                data_config("ct_phantoms", eval_signals=16, eval_context_angles=views), args.seed
            )
            batch = bundle.eval_batch("test", seed=args.seed)
            rows += score(bundle, batch, ["sart", "fbp", "gaussian-prior", "mean"], f"{views} even views")
    table = markdown(rows)
    print(table)
    # A subset of kinds goes to its own file so it does not overwrite the full table.
    suffix = "" if args.kinds == DEFAULT_KINDS else "_" + "_".join(kinds)
    save_results(f"bench_baselines{suffix}", {"rows": rows, "markdown": table})


if __name__ == "__main__":
    main()
