"""Probe: can a network learn on top of the linear Gaussian prior? Glyphs, 32 px, 10 % of the pixels.

The linear Gaussian prior (:class:`~genfield.classical.gaussian.GaussianPrior`) is the strongest
reference on glyphs and CT. This probe asks whether a learned model that *starts* from it can beat
it: a U-Net (:class:`~genfield.processes.unet.UNet`, output layer zero-initialised, so it starts
exactly at the prior) reads ``[prior posterior mean, context values, context mask]`` on the pixel
grid and adds a residual. To keep the prior's posterior on the network's training signals honest,
the prior is fitted on the first half of the training glyphs and the network is trained on the
second half (two context draws each); it is compared on the same held-out test glyphs and context
with the prior fitted on all training glyphs (the reference of the quality table). The best of the
checkpoints every 250 steps on 64 validation glyphs is kept.

    OMP_NUM_THREADS=2 python -m benchmarks.bench_gp_residual --steps 2000

Writes ``benchmarks/results/bench_gp_residual.json``. The method that grew from it is
:mod:`genfield.processes.prior_residual` (``method=prior_residual``: trained through genfield's
trainer on the whole collection, with a variance, on images and CT); this probe stays as the
record of the finding.
"""

from __future__ import annotations

import argparse
import time

import torch
from einops import rearrange

from benchmarks._machine import save_results
from genfield.builders import build_data
from genfield.classical.gaussian import GaussianPrior
from genfield.comparison import load_group
from genfield.datasets.batch import SignalBatch
from genfield.metrics import psnr
from genfield.processes.unet import UNet


def grid_inputs(prior: GaussianPrior, batch: SignalBatch, size: int) -> torch.Tensor:
    """``(S, 3, H, W)``: the prior's posterior mean, the context values and the context mask."""
    mean = prior.reconstruct(batch).mean[..., 0]
    index = batch.extras["context_index"]
    values = torch.zeros_like(mean).scatter_(1, index, batch.context.values[..., 0])
    mask = torch.zeros_like(mean).scatter_(1, index, 1.0)
    return rearrange(torch.stack([mean, values, mask], 1), "s c (h w) -> s c h w", h=size)


def truth(batch: SignalBatch, size: int) -> torch.Tensor:
    return rearrange(batch.target.values[..., 0], "s (h w) -> s 1 h w", h=size)


def mean_psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(psnr(pred.clamp(0, 1).flatten(1), target.flatten(1), dims=[1]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--test-signals", type=int, default=16, help="as bench_quality's quality budget")
    args = parser.parse_args()
    torch.manual_seed(0)
    bundle = build_data(load_group("data", "glyphs", {"context_fraction": 0.1}), seed=0)
    size = int(bundle.train[0].image.shape[0])
    train = [bundle.train[i] for i in range(len(bundle.train))]
    half = len(train) // 2
    reference, prior = GaussianPrior().fit(train), GaussianPrior().fit(train[:half])

    generator = torch.Generator().manual_seed(1)
    started = time.time()
    inputs, targets = [], []
    for _ in range(2):  # two context draws per training glyph
        for start in range(half, len(train), 128):
            batch = bundle.train_split(train[start : start + 128], generator)
            inputs.append(grid_inputs(prior, batch, size))
            targets.append(truth(batch, size))
    inputs, targets = torch.cat(inputs), torch.cat(targets)
    prepare_seconds = time.time() - started

    val, test = bundle.eval_batch("val", count=64), bundle.eval_batch("test", count=args.test_signals)
    val_x, val_y = grid_inputs(prior, val, size), truth(val, size)
    net = UNet(3, 1, (32, 64, 128))
    torch.nn.init.zeros_(net.out.weight)
    torch.nn.init.zeros_(net.out.bias)
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    history, best, best_state = [], -float("inf"), None
    started = time.time()
    for step in range(args.steps + 1):
        if step % 250 == 0 or step == args.steps:
            with torch.no_grad():
                score = mean_psnr(val_x[:, :1] + net(val_x), val_y)
            history.append({"step": step, "val_psnr": score})
            print(history[-1], flush=True)
            if score > best:
                best, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
        if step == args.steps:
            break
        pick = torch.randint(len(inputs), (args.batch,), generator=generator)
        loss = (inputs[pick, :1] + net(inputs[pick]) - targets[pick]).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    train_seconds = time.time() - started
    net.load_state_dict(best_state)

    test_x, test_y = grid_inputs(prior, test, size), truth(test, size)
    with torch.no_grad():
        residual = mean_psnr(test_x[:, :1] + net(test_x), test_y)
    results = {
        "data": "glyphs, 32 px, 10 % context",
        "train_signals": {"prior": half, "network": len(train) - half},
        "steps": args.steps,
        "batch": args.batch,
        "test_signals": args.test_signals,
        "test_psnr": {
            "prior_plus_residual": residual,
            "prior_fitted_on_half": mean_psnr(test_x[:, :1], test_y),
            "prior_fitted_on_all": mean_psnr(grid_inputs(reference, test, size)[:, :1], test_y),
        },
        "val_history": history,
        "seconds": {"prepare": prepare_seconds, "train": train_seconds},
    }
    print(results["test_psnr"], flush=True)
    save_results("bench_gp_residual", results)


if __name__ == "__main__":
    main()
