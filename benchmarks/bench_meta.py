"""Benchmark the meta-gradient estimators: memory and time against K, CG accuracy, batching.

1. Peak memory and wall time of one meta-gradient for K in {5, 10, 20, 50, 100, 200} for MAML,
   FOMAML, iMAML and iBaML on the same field and batch. Memory: on CUDA
   ``torch.cuda.max_memory_allocated``; on CPU a *saved-tensor account*: a
   ``torch.autograd.graph.saved_tensors_hooks`` pair adds the bytes of every tensor autograd saves
   for backward and subtracts them when the graph releases it; the live maximum is the peak (this
   is the memory that backprop-through-K accumulates; parameters and transient activations that
   are not saved are not counted). The ratio peak(K=200) / peak(K=5) is reported per estimator.
2. Relative error of the iMAML / iBaML meta-gradients against CG iterations (reference: 200
   iterations), Gauss-Newton curvature so the systems are positive definite.
3. One FOMAML / iMAML meta-gradient of 16 signals: the batched (vmapped) learner against a Python
   loop over the signals.

Run ``python -m benchmarks.bench_meta [--quick]``; writes ``benchmarks/results/bench_meta.json`` and
``bench_meta.png``.
"""

from __future__ import annotations

import argparse
import time
import warnings

import matplotlib
import torch

from benchmarks._machine import RESULTS, save_results
from genfield.datasets.builtin import builtin_faces
from genfield.datasets.images import ImageSplit
from genfield.fields import build_field
from genfield.meta import MetaStepSkipped, build_meta_learner
from genfield.profiling import measure

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ESTIMATORS = ("maml", "fomaml", "imaml", "ibaml")
KS = (5, 10, 20, 50, 100, 200)
OPTIONS = {
    "maml": {"inner_lr": 0.3},
    "fomaml": {"inner_lr": 0.3},
    "imaml": {"inner_lr": 0.3, "lam": 2.0, "curvature": "gauss_newton"},
    "ibaml": {"inner_lr": 0.02, "prior_std": 0.02, "curvature": "gauss_newton", "noise_seed": 0},
}


def measure_gradient(learner, batch, device: str) -> tuple[float, float]:
    """(peak bytes, seconds) of one meta-gradient (:func:`genfield.profiling.measure`)."""
    with measure(device) as cost, warnings.catch_warnings():
        warnings.simplefilter("ignore", MetaStepSkipped)
        learner.meta_gradient(batch)
    return cost.peak_bytes, cost.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small field and batch")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: robust to load)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    size, hidden, signals = (16, 32, 4) if args.quick else (32, 64, 8)
    field = build_field("siren", head="grey", hidden=hidden, n_layers=3).to(device)
    faces = list(builtin_faces("train", size=size))
    split = ImageSplit(context_fraction=0.25)
    batch = split(faces[:signals], torch.Generator().manual_seed(0)).to(device)
    results: dict = {
        "setup": {"image": size, "hidden": hidden, "signals": signals, "device": device},
        "memory_method": "torch.cuda.max_memory_allocated"
        if device.startswith("cuda")
        else "saved_tensors_hooks live maximum of bytes saved for backward",
        "by_k": {},
    }

    # 1. memory and time against K
    for name in ESTIMATORS:
        rows = []
        for k in KS:
            learner = build_meta_learner(name, field, inner_steps=k, **OPTIONS[name]).to(device)
            measure_gradient(learner, batch, device)  # warm-up
            peak, seconds = measure_gradient(learner, batch, device)
            rows.append({"K": k, "peak_bytes": peak, "seconds": seconds})
            print(f"{name:7s} K={k:4d} peak {peak / 2**20:9.2f} MiB  {seconds:7.3f} s", flush=True)
        ratio = rows[-1]["peak_bytes"] / rows[0]["peak_bytes"]
        results["by_k"][name] = {"rows": rows, "peak_ratio_K200_vs_K5": ratio}
        print(f"{name}: peak(K=200)/peak(K=5) = {ratio:.2f}")

    # 2. meta-gradient error against CG iterations (reference: 200 iterations)
    results["cg"] = {}
    for name in ("imaml", "ibaml"):
        options = {**OPTIONS[name], "inner_steps": 20, "cg_tol": 1e-12}
        reference = build_meta_learner(name, field, cg_iterations=200, **options).to(device)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetaStepSkipped)
            ref_grads, _ = reference._outer_and_gradient(batch)  # unchecked: tol is unreachable
            ref = torch.cat([g.flatten() for g in ref_grads.values()])
            rows = []
            for iterations in (1, 2, 5, 10, 20, 50, 100):
                learner = build_meta_learner(name, field, cg_iterations=iterations, **options)
                grads, _ = learner.to(device)._outer_and_gradient(batch)
                approx = torch.cat([g.flatten() for g in grads.values()])
                error = ((approx - ref).norm() / ref.norm()).item()
                rows.append({"cg_iterations": iterations, "relative_error": error})
                print(f"{name} CG {iterations:3d}: relative error {error:.2e}")
        results["cg"][name] = rows

    # 3. batched meta-batch against a Python loop over 16 signals
    many = split((faces * 2)[:16], torch.Generator().manual_seed(1)).to(device)
    results["batching"] = {}
    for name in ("fomaml", "imaml"):
        learner = build_meta_learner(name, field, inner_steps=10, **OPTIONS[name]).to(device)

        def batched(learner=learner):
            learner.meta_gradient(many)

        def looped(learner=learner):
            for s in range(16):
                learner.meta_gradient(many.select(slice(s, s + 1)))

        timings = {}
        for label, fn in (("batched", batched), ("loop", looped)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MetaStepSkipped)
                fn()
                start = time.perf_counter()
                fn()
                timings[label] = time.perf_counter() - start
        timings["speedup"] = timings["loop"] / timings["batched"]
        results["batching"][name] = timings
        print(f"{name}: batched {timings['batched']:.3f} s, loop {timings['loop']:.3f} s, "
              f"speed-up {timings['speedup']:.1f}x")

    save_results("bench_meta", results, device)
    plot(results)


def plot(results: dict) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for name, entry in results["by_k"].items():
        ks = [r["K"] for r in entry["rows"]]
        axes[0].plot(ks, [r["peak_bytes"] / 2**20 for r in entry["rows"]], "o-", label=name)
        axes[1].plot(ks, [r["seconds"] for r in entry["rows"]], "o-", label=name)
    for ax, label in zip(axes[:2], ("peak memory (MiB)", "seconds per meta-gradient")):
        ax.set(xscale="log", yscale="log", xlabel="inner steps K", ylabel=label)
        ax.legend()
    for name, rows in results["cg"].items():
        axes[2].plot([r["cg_iterations"] for r in rows], [r["relative_error"] for r in rows],
                     "o-", label=name)
    axes[2].set(xscale="log", yscale="log", xlabel="CG iterations", ylabel="relative error")
    axes[2].legend()
    fig.suptitle(f"meta-gradients ({results['memory_method']})", fontsize=9)
    fig.tight_layout()
    path = RESULTS / "bench_meta.png"
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
