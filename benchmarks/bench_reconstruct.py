"""Adapt once, predict many times: the cost of reconstructing a signal at several query sets.

``genfield reconstruct`` renders several views (and marching-cubes chunks) of one signal. Before
:meth:`~genfield.interface.Reconstructor.condition_on`, every view re-ran the adaptation; now the
method adapts once and each view is only a prediction. This measures both on the same method:

* ``readapt``: the interface's fallback (:class:`~genfield.interface.Deferred`), which calls
  ``reconstruct`` -- inner loop included -- for every query set (the old behaviour);
* ``once``: FOMAML's own ``condition_on`` (one inner loop), then one prediction per query set.

Workload: FOMAML over a SIREN field (3 layers of 64), one grey signal, 512 context pixels,
``--steps`` inner steps (default 40, as in the issue's report), ``V`` query sets of 32 x 32
pixels. Times are medians after one warm-up.

    python -m benchmarks.bench_reconstruct [--quick] [--steps 40] [--threads N]
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch

from benchmarks._machine import median_seconds, save_results
from genfield.datasets.batch import Observations
from genfield.fields import build_field, grid_coords
from genfield.forward import PointMap
from genfield.interface import Reconstructor
from genfield.meta.explicit import MAML


def bench(views: list[int], steps: int, reps: int) -> list[dict[str, Any]]:
    torch.manual_seed(0)
    learner = MAML(build_field("siren", head="grey"), first_order=True, inner_steps=steps)
    coords = grid_coords((64, 64))
    image = torch.sin(3 * coords[..., :1]) * torch.cos(2 * coords[..., 1:])
    pick = torch.randperm(len(coords))[:512]
    context = Observations(coords[pick][None], image[pick][None])
    query_set = grid_coords((32, 32))[None]
    rows = []
    for v in views:

        def readapt(v: int = v) -> None:
            adapted = Reconstructor.condition_on(learner, context, PointMap(), steps=steps)
            for _ in range(v):
                adapted.predict(query_set, PointMap())

        def once(v: int = v) -> None:
            adapted = learner.condition_on(context, PointMap(), steps=steps)
            for _ in range(v):
                adapted.predict(query_set, PointMap())

        row = {"views": v, "inner_steps": steps}
        row["readapt_s"] = round(median_seconds(readapt, reps), 4)
        row["once_s"] = round(median_seconds(once, reps), 4)
        row["speedup"] = round(row["readapt_s"] / row["once_s"], 2)
        print(row)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    views = [1, 4] if args.quick else [1, 4, 8]
    rows = bench(views, args.steps, reps=1 if args.quick else 3)
    results = {"rows": rows, "load_average": os.getloadavg()}
    save_results("bench_reconstruct_quick" if args.quick else "bench_reconstruct", results)


if __name__ == "__main__":
    main()
