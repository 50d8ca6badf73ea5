"""Seconds per meta-step of the demo's methods against torch's intra-op thread count.

The CLI picks its thread count with :func:`genfield.cli.choose_threads`; this measures what the
choice costs or saves: one meta-step (gradients and the Adam step) of iBaML and PONP on the demo's
data (built-in faces, 32 px, 4 signals per meta-batch) at 1, 2, ... threads up to the CPUs this
process may use. The 1-minute load average before and after each count is recorded with it: on a
shared machine the numbers say as much about the other jobs as about genfield.

Run ``python -m benchmarks.bench_threads [--reps N]``; writes ``benchmarks/results/bench_threads.json``.
"""

from __future__ import annotations

import argparse
import os

import torch

from benchmarks._machine import median_seconds, save_results
from genfield.builders import build_data, build_field_for, build_method
from genfield.comparison import load_group
from genfield.datasets.sampling import StepBatches

METHODS = ("ibaml", "ponp")


def step_function(name: str):
    """One meta-step of ``name`` at the demo's sizes (a fresh batch index each call)."""
    data_cfg = load_group("data", "faces", {"batch_size": 4, "eval_signals": 4})
    bundle = build_data(data_cfg)
    torch.manual_seed(0)
    method_cfg = load_group("method", name)
    method = build_method(method_cfg, build_field_for(load_group("field", "siren"), bundle), bundle)
    optimizer = torch.optim.Adam(method.optimizer_groups(method_cfg["lr"]), lr=method_cfg["lr"])
    batches = StepBatches(bundle.train, bundle.train_split, bundle.batch_size, 0)
    count = iter(range(10**9))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        method.compute_gradients(batches[next(count)])
        optimizer.step()

    return step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    usable = len(os.sched_getaffinity(0))
    results = []
    for name in METHODS:
        step = step_function(name)
        for threads in range(1, usable + 1):
            torch.set_num_threads(threads)
            load_before = os.getloadavg()[0]
            seconds = median_seconds(step, args.reps)
            row = {
                "method": name,
                "threads": threads,
                "seconds_per_step": round(seconds, 4),
                "load_1min_before": load_before,
                "load_1min_after": os.getloadavg()[0],
            }
            print(row)
            results.append(row)
    save_results("bench_threads", {"usable_cpus": usable, "reps": args.reps, "rows": results})


if __name__ == "__main__":
    main()
