"""Where iBaML's meta-gradient time goes, and what it costs against what it replaces.

At K inner steps (200 by default) on ``bench_meta``'s setup (32^2 faces, SIREN 64 x 3, 8 signals,
25 % context) and on 64^2 faces (SIREN 64 x 3 with ``--quick``, 256 x 5 otherwise, 4 signals,
10 % context):

1. **Breakdown** (at ``BREAKDOWN_STEPS`` inner steps; the inner loop costs K times its per-step
   figure) of one iBaML meta-gradient (``IBaML.meta_gradient``): the inner loop
   (``adapt_posterior``, K steps) against the implicit gradient (``implicit_gradient``: the graph
   of ``grad_v NLL``, the outer gradient, CG); the inner loop's cost per step for M = 1, 2, 4
   Monte-Carlo samples; the implicit gradient against the number of CG iterations (1, 5, 20; the
   slope is the cost of one CG iteration); one Hessian-vector product (Gauss-Newton and exact)
   relative to one gradient of the free energy at the same ``v``.
2. **The explicit twin** (the ABML baseline): the same Bayesian inner problem, the same K steps,
   but backpropagated through (``adapt_posterior(..., create_graph=True)`` then the target loss's
   gradient in the prior), written here from iBaML's public pieces. Its meta-gradient is compared
   with iBaML's (cosine similarity: they differ by construction, the implicit one assumes
   stationarity) and timed interleaved with iBaML and second-order MAML (same field and batch);
   peak memory by :func:`genfield.profiling.measure`.

Run ``python -m benchmarks.bench_ibaml_cost [--quick] [--steps K]``; writes
``benchmarks/results/bench_ibaml_cost[_quick].json``.
"""

from __future__ import annotations

import argparse
import warnings

import torch

from benchmarks._machine import interleaved_seconds, save_results
from genfield.datasets.builtin import builtin_faces
from genfield.datasets.images import ImageSplit
from genfield.fields import build_field
from genfield.meta import MetaStepSkipped, build_meta_learner
from genfield.meta.cg import gauss_newton_hvp
from genfield.meta.likelihood import gaussian_nll
from genfield.meta.tree import leaves, tree_leaves, tree_map
from genfield.profiling import measure

#: bench_meta's options (iBaML: Adam inner steps preconditioned by the prior, fresh noise, M = 2).
MAML_OPTIONS = {"inner_lr": 0.3}
#: Inner steps of the breakdown's inner-loop timing (its cost is K x the per-step cost).
BREAKDOWN_STEPS = 20
IBAML_OPTIONS = {"inner_lr": 0.02, "prior_std": 0.02, "curvature": "gauss_newton", "noise_seed": 0}


def inner_noise(learner, noise):
    return noise if learner.inner_noise == "fixed" else None


def explicit_twin(learner, batch) -> dict[str, torch.Tensor]:
    """ABML-style meta-gradient: backpropagation through the K steps of iBaML's inner problem."""
    named = learner.meta_parameters()
    with torch.enable_grad():
        noise = learner.draw_noise(batch.num_signals)
        v = learner.adapt_posterior(
            batch.context,
            batch.forward_map,
            inner_noise(learner, noise),
            learner.inner_steps,
            create_graph=True,
        )
        outer = learner.target_loss(v, noise, batch.target, batch.forward_map)
        grads = torch.autograd.grad(outer, list(named.values()), allow_unused=True, materialize_grads=True)
    return dict(zip(named, grads))


def implicit(learner, batch) -> dict[str, torch.Tensor]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetaStepSkipped)
        return learner.meta_gradient(batch)


def flat(grads: dict[str, torch.Tensor], keys) -> torch.Tensor:
    return torch.cat([grads[k].reshape(-1) for k in keys])


def breakdown(learner, batch, reps: int) -> dict:
    noise = learner.draw_noise(batch.num_signals)

    def inner():
        return learner.adapt_posterior(
            batch.context, batch.forward_map, inner_noise(learner, noise), learner.inner_steps
        )

    v = inner()
    out: dict = {}

    def implicit_at(iterations):
        def run():
            learner.cg_iterations = iterations
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", MetaStepSkipped)
                learner.implicit_gradient(v, noise, batch)

        return run

    cg_default = learner.cg_iterations
    timed = interleaved_seconds(
        {
            "inner_loop": inner,
            "implicit_cg1": implicit_at(1),
            "implicit_cg5": implicit_at(5),
            "implicit_cg20": implicit_at(20),
        },
        reps,
    )
    learner.cg_iterations = cg_default
    out["seconds"] = timed
    out["inner_step_seconds"] = timed["inner_loop"] / learner.inner_steps
    out["cg_iteration_seconds"] = (timed["implicit_cg20"] - timed["implicit_cg5"]) / 15
    out["implicit_setup_seconds"] = timed["implicit_cg1"] - out["cg_iteration_seconds"]

    # inner loop per step against the number of Monte-Carlo samples
    samples = {}
    for m in (1, 2, 4):
        learner.mc_samples = m
        eps = learner.draw_noise(batch.num_signals)
        samples[f"M={m}"] = lambda eps=eps: learner.adapt_posterior(batch.context, batch.forward_map, eps, 10)
    learner.mc_samples = IBAML_OPTIONS.get("mc_samples", 2)
    per_m = interleaved_seconds(samples, reps)
    out["inner_step_seconds_by_samples"] = {k: s / 10 for k, s in per_m.items()}

    # one HVP (Gauss-Newton, exact) against one gradient of the free energy, at v
    leaf = leaves(v)
    with torch.enable_grad():
        pred = learner.sample_observations(leaf, noise, batch.context.queries, batch.forward_map)
        nll = gaussian_nll(pred, batch.context.values, learner.log_sigma).mean(0).sum()
        grad_nll = torch.autograd.grad(nll, tree_leaves(leaf), create_graph=True)
        ggn = gauss_newton_hvp(pred, leaf, torch.exp(-2 * learner.log_sigma.detach()) / len(pred))
    probe = tree_map(torch.randn_like, leaf)

    def gradient():
        fresh = leaves(v)
        with torch.enable_grad():
            loss = learner.free_energy(fresh, noise, batch.context, batch.forward_map, True).sum()
            torch.autograd.grad(loss, tree_leaves(fresh))

    def exact_hvp():
        torch.autograd.grad(grad_nll, tree_leaves(leaf), tree_leaves(probe), retain_graph=True)

    unit = interleaved_seconds(
        {"gradient": gradient, "hvp_gauss_newton": lambda: ggn(probe), "hvp_exact": exact_hvp}, reps
    )
    out["unit_seconds"] = unit
    out["hvp_over_gradient"] = {k: unit[k] / unit["gradient"] for k in ("hvp_gauss_newton", "hvp_exact")}
    return out


def run_cell(size, hidden, n_layers, signals, context, steps, reps) -> dict:
    faces = list(builtin_faces("train", size=size))[:signals]
    batch = ImageSplit(context_fraction=context)(faces, torch.Generator().manual_seed(0))
    field = build_field("siren", head="grey", hidden=hidden, n_layers=n_layers)
    ibaml = build_meta_learner("ibaml", field, inner_steps=steps, **IBAML_OPTIONS)
    maml = build_meta_learner("maml", field, inner_steps=steps, **MAML_OPTIONS)
    row: dict = {
        "image": size,
        "hidden": hidden,
        "n_layers": n_layers,
        "signals": signals,
        "context_fraction": context,
        "inner_steps": steps,
        "cg_iterations": ibaml.cg_iterations,
        "mc_samples": ibaml.mc_samples,
    }
    keys = [k for k in ibaml.meta_parameters() if k.startswith("prior_")]
    a, b = flat(implicit(ibaml, batch), keys), flat(explicit_twin(ibaml, batch), keys)
    row["implicit_vs_explicit_cosine"] = (a @ b / (a.norm() * b.norm())).item()
    fns = {
        "ibaml": lambda: implicit(ibaml, batch),
        "explicit_twin": lambda: explicit_twin(ibaml, batch),
        "maml": lambda: maml.meta_gradient(batch),
    }
    memory = {}
    for name, fn in fns.items():  # also the warm-up of the interleaved timing below
        with measure() as cost:
            fn()
        memory[name] = cost.peak_mib
    row["peak_mib"] = memory
    seconds = interleaved_seconds(fns, reps, warmup=False)
    row["seconds"] = seconds
    row["ratios"] = {
        "ibaml_over_explicit_twin_time": seconds["ibaml"] / seconds["explicit_twin"],
        "ibaml_over_maml_time": seconds["ibaml"] / seconds["maml"],
        "ibaml_over_explicit_twin_memory": memory["ibaml"] / memory["explicit_twin"],
        "ibaml_over_maml_memory": memory["ibaml"] / memory["maml"],
    }
    print({k: row[k] for k in ("image", "seconds", "peak_mib", "ratios")}, flush=True)
    ibaml.inner_steps = BREAKDOWN_STEPS  # per-step costs do not depend on K
    row["breakdown"] = breakdown(ibaml, batch, reps)
    row["breakdown"]["inner_steps"] = BREAKDOWN_STEPS
    ibaml.inner_steps = steps
    print(row["breakdown"], flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="SIREN 64 x 3 at 64^2, 1 timed round")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument(
        "--size", type=int, default=None, help="run only the cell of this image size (32, 64)"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reps = args.reps or (1 if args.quick else 3)
    big = (64, 64, 3) if args.quick else (64, 256, 5)
    cells = []
    for setup in ((32, 64, 3, 8, 0.25), (*big, 4, 0.1)):
        if args.size and setup[0] != args.size:
            continue
        cells.append(run_cell(*setup, args.steps, reps))
        name = "bench_ibaml_cost" + ("_quick" if args.quick else "") + f"_K{args.steps}"
        save_results(name, {"reps": reps, "cells": cells})  # after every cell


if __name__ == "__main__":
    main()
