"""10x stability check: held-out quality after N and after 10 N meta-steps, per meta-learner.

Every method is built as ``genfield compare`` builds it (method and field configs, the data config
with the small budget's batch and evaluation sizes), trained by the shared trainer for N and, from
scratch, for 10 N meta-steps, and scored on the same held-out signals after its preset number of
adaptation steps. A method is stable when its score at 10 N is not below its score at N.

    OMP_NUM_THREADS=1 python -m benchmarks.bench_stability --steps 50 --methods maml fomaml reptile imaml
    python -m benchmarks.bench_stability --steps 50 --methods maml --set schedule=constant grad_clip=null \\
        --tag before    # the trainer without the stability defaults

Writes ``benchmarks/results/bench_stability[_<tag>].json`` and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from typing import Any

import torch
import yaml

from benchmarks._machine import save_results
from genfield.builders import build_data, build_field_for, build_method
from genfield.comparison import load_group
from genfield.datasets.sampling import StepBatches
from genfield.evaluation import evaluate
from genfield.training import TrainConfig, TrainingDiverged, train

DATA_OVERRIDES = {"ct_phantoms": {"resolution": 24, "n_context_angles": 12, "n_samples": 16}}


def run_one(
    data: str, method_name: str, steps: int, train_overrides: dict[str, Any], method_overrides: dict[str, Any]
) -> dict[str, Any]:
    """Train ``method_name`` for ``steps`` meta-steps on ``data``; its held-out metric after adapting."""
    budget = load_group("budget", "small")
    data_cfg = load_group("data", data, DATA_OVERRIDES.get(data))
    data_cfg["batch_size"], data_cfg["eval_signals"] = int(budget["batch_size"]), 10
    bundle = build_data(data_cfg, seed=0)
    test = bundle.eval_batch("test", seed=0)
    extra = {"options": method_overrides} if method_overrides else None
    method_cfg = load_group("method", method_name, extra)
    torch.manual_seed(0)
    method = build_method(method_cfg, build_field_for(load_group("field", "siren"), bundle), bundle)
    batches = StepBatches(bundle.train, bundle.train_split, bundle.batch_size, 0)
    config = TrainConfig(
        **{
            "steps": steps,
            "lr": float(method_cfg["lr"]),
            "val_every": 10**9,
            "checkpoint_every": 10**9,
            "progress": False,
            **train_overrides,
        }
    )
    began = time.perf_counter()
    metric, adapt = ("iou" if bundle.kind == "shape" else "psnr"), int(budget["tto_steps"])
    with tempfile.TemporaryDirectory() as out:
        try:
            result = train(method, batches, config, out)
        except TrainingDiverged as error:  # a row that says so, not a lost run
            return {"metric": metric, "adapt_steps": adapt, "score": None, "diverged": str(error)}
    seconds = time.perf_counter() - began
    scores = {k: evaluate(method, test, steps=k).summary()[metric] for k in (0, adapt)}
    losses = [row["loss"] for row in result.history if "loss" in row]
    return {
        "metric": metric,
        "adapt_steps": adapt,
        "score": scores[adapt],
        "score_no_adapt": scores[0],
        "train_seconds": round(seconds, 1),
        "final_loss": losses[-1] if losses else None,
        "min_loss": min(losses) if losses else None,
        "max_grad_norm": max((row.get("grad_norm", 0.0) for row in result.history), default=None),
        "skipped": sum(row.get("skipped", 0.0) for row in result.history),
        "loss_rising_at": next((row["step"] for row in result.history if row.get("loss_rising")), None),
        "trace": [  # every 50th step: loss and outer gradient norm before clipping
            {k: row.get(k) for k in ("step", "loss", "grad_norm", "lr")}
            for row in result.history
            if row["step"] % 50 == 0
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50, help="N: the short run; the long one is 10 N")
    parser.add_argument("--data", nargs="+", default=["faces"])
    parser.add_argument("--methods", nargs="+", default=["maml", "fomaml", "reptile", "imaml"])
    parser.add_argument("--set", nargs="*", default=[], help="train overrides key=value (yaml values)")
    parser.add_argument("--option", nargs="*", default=[], help="method option overrides key=value")
    parser.add_argument("--tag", default="", help="suffix of the results file")
    parser.add_argument("--long-only", action="store_true", help="only the 10 N run (ablations)")
    args = parser.parse_args()

    def score(run: dict[str, Any]) -> str:
        return "diverged" if run["score"] is None else f"{run['score']:.2f}"

    def parse(pairs: list[str]) -> dict[str, Any]:
        return {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in pairs)}

    overrides, options = parse(args.set), parse(args.option)
    rows = []
    for data in args.data:
        for name in args.methods:
            long = run_one(data, name, 10 * args.steps, overrides, options)
            short = long if args.long_only else run_one(data, name, args.steps, overrides, options)
            row = {"data": data, "method": name, "N": args.steps, "at_N": short, "at_10N": long}
            diverged = long["score"] is None or short["score"] is None
            row["stable"] = not diverged and long["score"] >= short["score"]
            rows.append(row)
            print(
                f"{data} {name}: {short['metric']} {score(short)} at N={args.steps}, "
                f"{score(long)} at 10N ({'stable' if row['stable'] else 'WORSE'})",
                flush=True,
            )
    settings = {"train_overrides": overrides, "method_options": options, "eval_signals": 10, "seed": 0}
    save_results(f"bench_stability{'_' + args.tag if args.tag else ''}", {"settings": settings, "rows": rows})
    print("\n| data | method | metric | N | at N | at 10 N | 10 N >= N | max grad norm (10 N) |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        short, long = row["at_N"], row["at_10N"]
        print(
            f"| {row['data']} | {row['method']} | {short['metric']} (after {short['adapt_steps']} steps) "
            f"| {row['N']} | {score(short)} | {score(long)} | {'yes' if row['stable'] else 'no'} "
            f"| {long.get('max_grad_norm', float('nan')):.3g} |"
        )


if __name__ == "__main__":
    main()
