"""``torch.compile`` of random-init fitting (``genfield.fitting``): before/after ratios in one run.

Per cell (image side, SIREN width x hidden layers, 4 signals, every pixel, Adam on MSE), the same
fitting step (forward through the point map, loss, backward, Adam) eager and through
:func:`genfield.compiling.compiled_loss`:

* the gradients of both are compared first (max relative difference, printed and saved);
* the compilation's seconds (the first compiled call, minus an eager step);
* the median seconds per step, timed interleaved (eager, compiled, eager, ...) so that the ratio
  shares the machine's load;
* the break-even step count (compilation / saving per step), against which
  ``compiling.COMPILE_WORTH_SECONDS`` (the ``compile="auto"`` rule) is set.

The first-order inner loops of the meta-learners (``compile=True`` against ``compile=False``,
:attr:`genfield.meta.MetaLearner.compiled_inner`): one training step (``compute_gradients``) of
FOMAML, Reptile, iMAML and iBaML as ``genfield compare`` builds them (``configs/method``; iBaML's
noise seeded), on faces at 32^2 (SIREN 64 x 3, 8 signals) and 64^2 (SIREN 256 x 5, 4 signals),
10 % context; the parameters after one inner step on the context (the compiled part) are
compared first, then the configured training steps are timed interleaved. Second-order MAML and the
implicit methods' Hessian-vector products differentiate the inner steps twice; Inductor's graphs
do not support double backward, so those parts stay eager (recorded under ``notes``).

    OMP_NUM_THREADS=1 python -m benchmarks.bench_compile [--quick] [--reps N] [--part fit|meta]

Writes ``benchmarks/results/bench_compile[_quick].json``.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._machine import interleaved_seconds, save_results
from genfield.builders import build_data, build_field_for, build_method
from genfield.comparison import load_group
from genfield.compiling import compiled_loss
from genfield.datasets.sampling import seeded_generator
from genfield.fields import build_field, grid_coords
from genfield.fitting import fitting_loss
from genfield.forward import PointMap

SIGNALS = 4
CELLS = {"32px_64x3": (32, 64, 3), "64px_256x5": (64, 256, 5), "178px_256x5": (178, 256, 5)}
#: Meta-learner cells: (image side, SIREN width, hidden layers, signals).
META_CELLS = {"32px_64x3": (32, 64, 3, 8), "64px_256x5": (64, 256, 5, 4)}
META_METHODS = ("fomaml", "reptile", "imaml", "ibaml")


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


def build_learner(side: int, width: int, layers: int, signals: int, method: str, compile: bool):
    """``method`` as ``compare`` builds it (iBaML with seeded noise, so that two learners draw the
    same), with ``compile`` among its options; a batch of ``signals`` faces."""
    bundle = build_data({**load_group("data", "faces"), "size": side})
    field = build_field_for({"preset": "siren", "options": {"hidden": width, "n_layers": layers}}, bundle)
    cfg = load_group("method", method)
    seeded = {"noise_seed": 0} if method == "ibaml" else {}
    cfg = {**cfg, "options": {**cfg["options"], **seeded, "compile": compile}}
    model = build_method(cfg, field, bundle)
    batch = bundle.train_split([bundle.train[i] for i in range(signals)], seeded_generator(0, 1))
    return model, batch


def run_meta_cell(side: int, width: int, layers: int, signals: int, reps: int) -> dict:
    """One training step of each first-order learner, eager and compiled (see the module docs)."""
    out: dict = {"side": side, "width": width, "layers": layers, "signals": signals, "methods": {}}
    for method in META_METHODS:
        eager, batch = build_learner(side, width, layers, signals, method, False)
        compiled, _ = build_learner(side, width, layers, signals, method, True)
        compiled.load_state_dict(eager.state_dict())

        def step(model, batch=batch):
            def run():
                grads = model.meta_gradient(batch)
                for p in model.parameters():
                    p.grad = None
                return grads

            return run

        began = time.perf_counter()
        step(eager)()
        eager_once = time.perf_counter() - began
        began = time.perf_counter()
        step(compiled)()
        compile_seconds = time.perf_counter() - began - eager_once
        # the numbers of the compiled part: one inner step on the context (K steps at a SIREN
        # 256 x 5's rates amplify rounding differences, and a skipped meta-step is all zeros)
        adapted = [m.adapt(batch.context, batch.forward_map, 1).params for m in (eager, compiled)]
        difference = max(
            float((adapted[1][k] - t).norm() / t.norm().clamp_min(1e-30)) for k, t in adapted[0].items()
        )
        times = interleaved_seconds({"eager": step(eager), "compiled": step(compiled)}, reps)
        out["methods"][method] = {
            "one_inner_step_relative_difference": difference,
            "compile_seconds": compile_seconds,
            "seconds_per_step": times,
            "compiled_over_eager": times["compiled"] / times["eager"],
        }
        print(
            f"  {method}: compiled / eager {times['compiled'] / times['eager']:.3f} "
            f"({times['eager']:.3f} s eager), compile {compile_seconds:.1f} s, "
            f"one inner step differs by {difference:.1e}",
            flush=True,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the 32 px and 64 px cells only")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--part", choices=("fit", "meta", "both"), default="both")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [n for n in CELLS if not (args.quick and n.startswith("178"))]
    if args.part == "meta":
        names = []
    results = {
        "notes": "first-order losses only (random-init fitting, the meta-learners' inner steps): "
        "Inductor graphs do not support double backward (MAML's meta-gradient, HVPs)",
        "cells": {},
        "meta_cells": {},
    }
    part = "" if args.part == "both" else f"_{args.part}"
    out = "bench_compile" + ("_quick" if args.quick else "") + part
    for cell in META_CELLS if args.part != "fit" else ():
        print(f"meta {cell} ...", flush=True)
        results["meta_cells"][cell] = run_meta_cell(*META_CELLS[cell], reps=args.reps)
        save_results(out, results)
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
        save_results(out, results)


if __name__ == "__main__":
    main()
