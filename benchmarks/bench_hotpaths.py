"""Before / after ratios of the meta-learning hot paths, each pair measured in one run.

1. **Fused sine layer**: ``sin((omega_0 W) h + omega_0 b)``, the scale on the weights instead of on
   every pre-activation, patched into :class:`~genfield.fields.networks.CoordinateMLP` for the
   "fused" runs, against the library's ``sin(omega_0 (W h + b))``. The outputs are compared first
   (relative difference), then MAML (second order) and FOMAML meta-gradients are timed
   interleaved. The library keeps whichever wins on the second-order path (results/bench_hotpaths.json).

``torch.compile`` of the first-order inner loops and of fitting is measured by
``benchmarks/bench_compile.py``.

Run ``python -m benchmarks.bench_hotpaths [--quick]``; writes
``benchmarks/results/bench_hotpaths.json``.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from benchmarks._machine import interleaved_seconds, save_results
from genfield.datasets.builtin import builtin_faces
from genfield.datasets.images import ImageSplit
from genfield.fields import build_field
from genfield.fields.networks import CoordinateMLP
from genfield.meta import build_meta_learner


def fused_forward(self, h, modulations=None):
    """The candidate: without modulations, the sine layer with ``omega_0`` folded into the weights."""
    if self.activation != "sine" or (modulations is not None and self.modulation != "none"):
        return LIBRARY_FORWARD(self, h, modulations)
    for layer in self.hidden_layers:
        h = torch.sin(F.linear(h, self.omega0 * layer.weight, self.omega0 * layer.bias))
    return self.output_layer(h)


LIBRARY_FORWARD = CoordinateMLP.forward


@contextmanager
def fused():
    CoordinateMLP.forward = fused_forward
    try:
        yield
    finally:
        CoordinateMLP.forward = LIBRARY_FORWARD


def cell_batch(size: int, signals: int = 4):
    faces = list(builtin_faces("train", size=size))[:signals]
    return ImageSplit(context_fraction=0.1)(faces, torch.Generator().manual_seed(0))


def fused_sine(size: int, hidden: int, n_layers: int, reps: int) -> dict:
    batch = cell_batch(size)
    field = build_field("siren", head="grey", hidden=hidden, n_layers=n_layers)
    params = field.init_batch(4, seed=0)
    before = field(params, batch.target.queries)
    with fused():
        after = field(params, batch.target.queries)
    row = {
        "image": size,
        "hidden": hidden,
        "n_layers": n_layers,
        "signals": 4,
        "output_relative_difference": ((after - before).norm() / before.norm()).item(),
    }
    for name in ("maml", "fomaml"):
        learner = build_meta_learner(name, field, inner_steps=5, inner_lr=0.3)

        def run_fused(learner=learner):
            with fused():
                learner.meta_gradient(batch)

        seconds = interleaved_seconds(
            {"fused": run_fused, "unfused": lambda learner=learner: learner.meta_gradient(batch)}, reps
        )
        row[name] = {**seconds, "ratio_fused_over_unfused": seconds["fused"] / seconds["unfused"]}
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 hidden layers at 64^2, fewer repetitions")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reps = 3 if args.quick else 7
    big = (64, 256, 3 if args.quick else 5)
    results: dict = {"reps": reps, "interleaved": True}
    results["fused_sine"] = [fused_sine(32, 64, 3, reps), fused_sine(*big, reps)]
    save_results("bench_hotpaths", results)


if __name__ == "__main__":
    main()
