"""Benchmark the neural processes' predictive intervals on held-out faces, before and after TTO.

Built-in faces at 32 px, 10 % of the pixels as context, each method config trained for ``--steps``
meta-steps (the comparison's trainer and the siren field), then evaluated on 10 held-out test faces:
the fraction of the *unobserved* pixels inside the central 90 % Gaussian interval (target 0.8-0.98),
the same on the context pixels, the mean predicted std and the RMSE on the unobserved pixels, and
PSNR, after one pass and after test-time optimisation, for each ``tto_scale`` asked for.

Run ``python -m benchmarks.bench_coverage [--steps 300] [--methods ponp,cnp] [--scales nuisance,adapted]``;
writes ``benchmarks/results/bench_coverage.json``.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

from benchmarks._machine import save_results
from genfield.builders import build_data, build_field_for, build_method
from genfield.comparison import load_group
from genfield.datasets.sampling import StepBatches
from genfield.evaluation import dense_queries
from genfield.metrics import interval_coverage, psnr
from genfield.training import TrainConfig, train


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--methods", default="ponp,cnp")
    parser.add_argument("--scales", default="nuisance,adapted")
    parser.add_argument("--tto", default="0,10,100")
    args = parser.parse_args()
    bundle = build_data(load_group("data", "faces", {"eval_signals": 10}), seed=0)
    test = bundle.eval_batch("test", seed=0)
    queries, query_map = dense_queries(test)
    truth = test.ground_truth.flatten(1, 2)
    unobserved = torch.cdist(queries, test.context.queries).min(-1).values > 1e-6
    field_cfg = load_group("field", "siren")
    results = {"steps": args.steps, "signals": test.num_signals, "rows": []}
    for name in args.methods.split(","):
        cfg = load_group("method", name)
        torch.manual_seed(0)
        method = build_method(cfg, build_field_for(field_cfg, bundle), bundle)
        with tempfile.TemporaryDirectory() as out:
            batches = StepBatches(bundle.train, bundle.train_split, bundle.batch_size, 0)
            config = TrainConfig(
                steps=args.steps,
                lr=float(cfg["lr"]),
                val_every=10**9,
                checkpoint_every=args.steps,
                progress=False,
            )
            train(method, batches, config, out, device=torch.device("cpu"), label=name)
        method.eval()
        for scale in args.scales.split(","):
            method.config.tto_scale = scale
            for steps in (int(s) for s in args.tto.split(",")):
                torch.manual_seed(0)
                p = method.reconstruct(test.context, test.forward_map, queries, query_map, steps=steps)
                mask = unobserved[..., None]  # same count per signal: the mean is the pooled fraction
                row = {
                    "method": name,
                    "tto_scale": scale,
                    "tto_steps": steps,
                    "coverage90_unobserved": float(interval_coverage(p.mean, p.std, truth, 0.9, mask).mean()),
                    "coverage90_context": float(interval_coverage(p.mean, p.std, truth, 0.9, ~mask).mean()),
                    "mean_std_unobserved": float(p.std[unobserved].mean()),
                    "rmse_unobserved": float((p.mean - truth)[unobserved].square().mean().sqrt()),
                    "psnr": float(psnr(p.mean.clamp(0, 1), truth).mean()),
                }
                results["rows"].append(row)
                print(row, flush=True)
    save_results("bench_coverage", results)


if __name__ == "__main__":
    main()
