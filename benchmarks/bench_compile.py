"""``torch.compile`` of random-init fitting (``genfield.fitting``): before/after ratios in one run.

Per cell (image side, SIREN width x hidden layers, 4 signals, every pixel, Adam on MSE), the same
fitting step (forward through the point map, loss, backward, Adam) eager and through
:func:`genfield.fitting.compiled_loss`:

* the gradients of both are compared first (max relative difference, printed and saved);
* the compilation's seconds (the first compiled call, minus an eager step);
* the median seconds per step, timed interleaved (eager, compiled, eager, ...) so that the ratio
  shares the machine's load;
* the break-even step count (compilation / saving per step), against which
  ``fitting.COMPILE_WORTH_SECONDS`` (the ``compile="auto"`` rule) is set.

Second-order MAML and the implicit methods differentiate the inner steps twice; Inductor's graphs
do not support double backward, so only first-order fitting is compiled (recorded under ``notes``).

    OMP_NUM_THREADS=1 python -m benchmarks.bench_compile [--quick] [--reps N]

Writes ``benchmarks/results/bench_compile[_quick].json``.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._machine import interleaved_seconds, save_results
from genfield.fields import build_field, grid_coords
from genfield.fitting import compiled_loss, fitting_loss
from genfield.forward import PointMap

SIGNALS = 4
CELLS = {"32px_64x3": (32, 64, 3), "64px_256x5": (64, 256, 5), "178px_256x5": (178, 256, 5)}


def run_cell(side: int, width: int, layers: int, reps: int) -> dict:
    field = build_field("siren", head="rgb", hidden=width, n_layers=layers)
    params = {k: v.requires_grad_(True) for k, v in field.init_batch(SIGNALS, seed=0).items()}
    queries = grid_coords((side, side))[None].expand(SIGNALS, -1, -1)
    values = torch.rand(SIGNALS, side * side, 3, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(params.values(), lr=1e-4)
    compiled = compiled_loss(fitting_loss)

    def gradients(loss) -> list[torch.Tensor]:
        per_signal = loss(field, PointMap(), params, queries, values)
        return list(torch.autograd.grad(per_signal.sum(), list(params.values())))

    def step(loss):
        def run() -> None:
            per_signal = loss(field, PointMap(), params, queries, values)
            optimizer.zero_grad(set_to_none=True)
            per_signal.sum().backward()
            optimizer.step()

        return run

    began = time.perf_counter()
    eager_grads = gradients(fitting_loss)
    eager_once = time.perf_counter() - began
    began = time.perf_counter()
    compiled_grads = gradients(compiled)
    compile_seconds = time.perf_counter() - began - eager_once
    difference = max(
        float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in zip(compiled_grads, eager_grads)
    )
    times = interleaved_seconds({"eager": step(fitting_loss), "compiled": step(compiled)}, reps)
    saving = times["eager"] - times["compiled"]
    return {
        "side": side,
        "width": width,
        "layers": layers,
        "signals": SIGNALS,
        "gradient_relative_difference": difference,
        "compile_seconds": compile_seconds,
        "seconds_per_step": times,
        "compiled_over_eager": times["compiled"] / times["eager"],
        "break_even_steps": compile_seconds / saving if saving > 0 else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 32 px and 64 px cells only")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in CELLS if not (args.quick and n.startswith("178"))]
    results = {
        "notes": "first-order fitting only: Inductor graphs do not support double backward "
        "(MAML, iMAML, iBaML)",
        "cells": {},
    }
    for name in names:
        print(f"{name} ...", flush=True)
        results["cells"][name] = run_cell(*CELLS[name], reps=args.reps if name[:3] != "178" else 3)
        cell = results["cells"][name]
        print(
            f"  compiled / eager {cell['compiled_over_eager']:.3f}, compile "
            f"{cell['compile_seconds']:.1f} s, break-even {cell['break_even_steps']} steps, "
            f"gradients differ by {cell['gradient_relative_difference']:.1e}",
            flush=True,
        )
        save_results("bench_compile_quick" if args.quick else "bench_compile", results)


if __name__ == "__main__":
    main()
