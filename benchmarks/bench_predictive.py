"""Benchmark iBaML's two predictives: linearized Laplace against mean-field samples.

For the demo's field (SIREN 64 x 3, omega_0 = 10) on built-in faces at 32 and 64 px with 10 % of the
pixels as context, after a short meta-training: wall time per signal of ``predict`` (after the same
adapted state), and the mean predictive std on observed and on unobserved pixels with each
predictive (the gap the Laplace predictive exists for). Both predictives include the learned noise.

Run ``python -m benchmarks.bench_predictive [--quick]``; writes
``benchmarks/results/bench_predictive.json``.
"""

from __future__ import annotations

import argparse

import torch

from benchmarks._machine import median_seconds, save_results
from genfield.datasets.builtin import builtin_faces
from genfield.datasets.images import ImageSplit
from genfield.fields import build_field
from genfield.meta import build_meta_learner
from genfield.metrics import psnr


def trained_learner(size: int, steps: int):
    torch.manual_seed(0)
    field = build_field("siren", head="grey", hidden=64, n_layers=3, omega0=10.0)
    learner = build_meta_learner("ibaml", field, inner_steps=5)
    train = list(builtin_faces("train", size=size))
    split, g = ImageSplit(context_fraction=0.1), torch.Generator().manual_seed(0)
    optimizer = torch.optim.Adam(learner.optimizer_groups(3e-3), lr=3e-3)
    for _ in range(steps):
        index = torch.randperm(len(train), generator=g)[:4].tolist()
        optimizer.zero_grad()
        learner.compute_gradients(split([train[i] for i in index], g))
        optimizer.step()
    return learner


def compare(size: int, signals: int, steps: int, reps: int) -> dict:
    learner = trained_learner(size, steps)
    batch = ImageSplit(context_fraction=0.1)(
        list(builtin_faces("test", size=size))[:signals], torch.Generator().manual_seed(1)
    )
    state = learner.adapt(batch.context, batch.forward_map)
    observed = torch.zeros(batch.target.values.shape[:2], dtype=torch.bool)
    observed.scatter_(1, batch.extras["context_index"], True)
    row: dict = {"size": size, "signals": signals, "meta_steps": steps}
    for predictive in ("laplace", "mean_field"):
        learner.predictive = predictive

        def run():
            return learner.predict(state, batch.target.queries, batch.forward_map, 16)

        seconds = median_seconds(run, reps)
        pred = run()
        std = pred.std[..., 0]
        row[predictive] = {
            "seconds_per_signal": seconds / signals,
            "psnr": psnr(pred.mean, batch.target.values).mean().item(),
            "std_observed": std[observed].mean().item(),
            "std_unobserved": std[~observed].mean().item(),
        }
        print(size, predictive, row[predictive])
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 px only, fewer meta-steps")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads (1: robust to load)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [32] if args.quick else [32, 64]
    steps = 20 if args.quick else 200
    results = [compare(size, signals=4, steps=steps, reps=3) for size in sizes]
    save_results("bench_predictive", results)


if __name__ == "__main__":
    main()
