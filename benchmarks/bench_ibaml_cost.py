"""Where iBaML's meta-gradient time goes, and what it costs against what it replaces.

At K inner steps (200 by default) on ``bench_meta``'s setup (32^2 faces, SIREN 64 x 3, 8 signals,
25 % context) and on 64^2 faces (SIREN 64 x 3 with ``--quick``, 256 x 5 otherwise, 4 signals,
10 % context):

1. **Breakdown** (at ``BREAKDOWN_STEPS`` inner steps; the inner loop costs K times its per-step
   figure) of one iBaML meta-gradient (``IBaML.meta_gradient``): the inner loop
   (``adapt_posterior``, K steps) against the implicit gradient (``implicit_gradient``: the graph
   of ``grad_v NLL``, the outer gradient, CG); one inner step split into Monte-Carlo sampling
   (the draw and the reparameterised weights), the field's forward (and the NLL), its backward,
   the closed-form assembly of ``grad_v F`` and the update (``inner_step``); the inner loop's cost
   per step for M = 1, 2, 4 Monte-Carlo samples and with either ``inner_gradient``; the implicit
   gradient against the number of CG iterations (1, 5, 20; the slope is the cost of one CG
   iteration, the intercept the set-up of the second-order graphs) and the CG relative residual
   reached after 1, 2, 3, 5, 8, 12, 20 iterations; one Hessian-vector product (Gauss-Newton and
   exact) relative to one gradient of the free energy at the same ``v``.
2. **The explicit twin** (the ABML baseline): the same Bayesian inner problem, the same K steps,
   but backpropagated through (``adapt_posterior(..., create_graph=True)`` then the target loss's
   gradient in the prior), written here from iBaML's public pieces. Its meta-gradient is compared
   with iBaML's (cosine similarity: they differ by construction, the implicit one assumes
   stationarity) and timed interleaved with iBaML, iBaML with ``inner_gradient="autograd"`` (its
   inner gradient before the closed form, the same numbers), iBaML with ``compile=True`` (its
   first-order inner steps through ``torch.compile``, :mod:`genfield.compiling`; the twin
   backpropagates through its steps, which Inductor's graphs cannot) and second-order MAML (same
   field and batch); peak memory by :func:`genfield.profiling.measure`.

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

#: bench_meta's options (iBaML: posterior-preconditioned SGD at rate 0.02 on mu, the fixed-point
#: step on rho, antithetic M = 2; seeded noise, so one draw serves all K steps).
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


def inner_step(learner, batch, v, reps: int) -> dict:
    """Seconds of one inner step at ``v``, by cumulative stage: the Monte-Carlo draw and the
    reparameterised weights, the field's forward and the NLL, its backward, the closed-form
    gradient (``free_energy_gradient``: those three plus the assembly) and the whole step
    (``adapt_posterior`` for one step from ``v``: plus the fixed-point/preconditioned update)."""
    S, draws = batch.num_signals, learner.mc_samples
    context, forward_map = batch.context, batch.forward_map

    def sample():
        with torch.no_grad():
            return leaves(learner.draws(v, learner.draw_noise(S)))

    queries = context.queries.repeat(draws, 1, 1)
    values = context.values.repeat(draws, 1, 1)

    def forward():
        phi = sample()
        with torch.enable_grad():
            pred = learner.observe(phi, queries, forward_map)
            nll = gaussian_nll(pred, values, learner.log_sigma.detach())
        return phi, nll.sum() / draws

    def backward():
        phi, nll = forward()
        torch.autograd.grad(nll, list(phi.values()))

    stages = {
        "sampling": sample,
        "sampling_forward": forward,
        "sampling_forward_backward": backward,
        "gradient": lambda: learner.free_energy_gradient(v, learner.draw_noise(S), context, forward_map),
        "step": lambda: learner.adapt_posterior(context, forward_map, None, 1, init=v),
    }
    cumulative = interleaved_seconds(stages, reps * 5)
    names = list(stages)
    parts = {"sampling": cumulative["sampling"]}
    parts.update({b: cumulative[b] - cumulative[a] for a, b in zip(names, names[1:])})
    return {
        "cumulative_seconds": cumulative,
        "parts_seconds": {
            "mc_sampling": parts["sampling"],
            "forward": parts["sampling_forward"],
            "backward": parts["sampling_forward_backward"],
            "closed_form_assembly": parts["gradient"],
            "update": parts["step"],
        },
    }


def cg_early_exit(learner, implicit_run, reps: int) -> dict:
    """The implicit gradient at 20 CG iterations with CG's early exit (``cg_early_exit``, the
    default: stop once every residual is below tol) against the full count, interleaved; the most
    CG iterations a signal needed."""

    def run(early_exit: bool):
        def timed():
            learner.cg_early_exit = early_exit
            return implicit_run()

        return timed

    timed = interleaved_seconds({"early_exit": run(True), "full_count": run(False)}, reps)
    used = run(True)()[1].get("cg_iterations")
    return {
        "seconds": timed,
        "early_exit_over_full_count": timed["early_exit"] / timed["full_count"],
        "cg_iterations_max": None if used is None else int(used),
    }


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
                return learner.implicit_gradient(v, noise, batch)

        return run

    cg_default = learner.cg_iterations
    out["cg_relative_residual_by_iterations"] = {
        n: implicit_at(n)()[1]["cg_residual"].item() for n in (1, 2, 3, 5, 8, 12, 20)
    }
    timed = interleaved_seconds(
        {
            "inner_loop": inner,
            "implicit_cg1": implicit_at(1),
            "implicit_cg5": implicit_at(5),
            "implicit_cg20": implicit_at(20),
        },
        reps,
    )
    out["cg_early_exit"] = cg_early_exit(learner, implicit_at(20), reps)
    learner.cg_iterations = cg_default
    out["seconds"] = timed
    out["inner_step"] = inner_step(learner, batch, v, reps)
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

    # the inner loop per step with either inner gradient (the same numbers)
    def inner_with(mode):
        def run():
            learner.inner_gradient = mode
            inner()

        return run

    per_mode = interleaved_seconds({m: inner_with(m) for m in ("closed_form", "autograd")}, reps)
    learner.inner_gradient = "closed_form"
    out["inner_step_seconds_by_gradient"] = {k: s / learner.inner_steps for k, s in per_mode.items()}
    out["inner_closed_form_over_autograd"] = per_mode["closed_form"] / per_mode["autograd"]

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


def compiled_difference(eager, compiled, batch, steps: int = 1) -> float:
    """Relative difference of the posteriors after ``steps`` inner steps, eager against compiled.

    One step: at K = 200 the inner loop of the bench's options amplifies any rounding difference
    (a 1e-7 relative change of the start is 6 % after 5 eager steps, 19 % after 10), so the
    K-step results of two summation orders differ whatever the compiler does."""
    noise = eager.draw_noise(batch.num_signals)
    v = [m.adapt_posterior(batch.context, batch.forward_map, noise, steps) for m in (eager, compiled)]
    return max(float((v[1].mu[k] - t).norm() / t.norm()) for k, t in v[0].mu.items())


def run_cell(size, hidden, n_layers, signals, context, steps, reps, twin: bool = True) -> dict:
    faces = list(builtin_faces("train", size=size))[:signals]
    batch = ImageSplit(context_fraction=context)(faces, torch.Generator().manual_seed(0))
    field = build_field("siren", head="grey", hidden=hidden, n_layers=n_layers)
    eager = {"compile": False}  # no learner compiles half-way through the timing ("auto")
    ibaml = build_meta_learner("ibaml", field, inner_steps=steps, **IBAML_OPTIONS, **eager)
    compiled = build_meta_learner("ibaml", field, inner_steps=steps, **IBAML_OPTIONS, compile=True)
    before = build_meta_learner(
        "ibaml", field, inner_steps=steps, inner_gradient="autograd", **IBAML_OPTIONS, **eager
    )
    maml = build_meta_learner("maml", field, inner_steps=steps, **MAML_OPTIONS, **eager)
    for learner in (compiled, before):
        learner.load_state_dict(ibaml.state_dict())
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
    row["compiled_vs_eager_relative_difference"] = compiled_difference(ibaml, compiled, batch)
    if twin:
        a, b = flat(implicit(ibaml, batch), keys), flat(explicit_twin(ibaml, batch), keys)
        row["implicit_vs_explicit_cosine"] = (a @ b / (a.norm() * b.norm())).item()
    fns = {
        "ibaml": lambda: implicit(ibaml, batch),
        "ibaml_compiled": lambda: implicit(compiled, batch),
        "ibaml_autograd_inner": lambda: implicit(before, batch),
        "explicit_twin": lambda: explicit_twin(ibaml, batch),
        "maml": lambda: maml.meta_gradient(batch),
    }
    if not twin:
        del fns["explicit_twin"]
    memory = {}
    for name, fn in fns.items():  # also the warm-up of the interleaved timing below
        with measure() as cost:
            fn()
        memory[name] = cost.peak_mib
    row["peak_mib"] = memory
    seconds = interleaved_seconds(fns, reps, warmup=False)
    row["seconds"] = seconds
    row["ratios"] = {
        "ibaml_over_maml_time": seconds["ibaml"] / seconds["maml"],
        "ibaml_compiled_over_maml_time": seconds["ibaml_compiled"] / seconds["maml"],
        "ibaml_compiled_over_ibaml_time": seconds["ibaml_compiled"] / seconds["ibaml"],
        "ibaml_over_ibaml_autograd_inner_time": seconds["ibaml"] / seconds["ibaml_autograd_inner"],
        "ibaml_autograd_inner_over_maml_time": seconds["ibaml_autograd_inner"] / seconds["maml"],
        "ibaml_over_maml_memory": memory["ibaml"] / memory["maml"],
    }
    if twin:
        row["ratios"]["ibaml_over_explicit_twin_time"] = seconds["ibaml"] / seconds["explicit_twin"]
        row["ratios"]["ibaml_compiled_over_explicit_twin_time"] = (
            seconds["ibaml_compiled"] / seconds["explicit_twin"]
        )
        row["ratios"]["ibaml_over_explicit_twin_memory"] = memory["ibaml"] / memory["explicit_twin"]
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
    parser.add_argument(
        "--no-twin", action="store_true", help="time iBaML and MAML only (more reps in the same time)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    reps = args.reps or (1 if args.quick else 3)
    big = (64, 64, 3) if args.quick else (64, 256, 5)
    cells = []
    for setup in ((32, 64, 3, 8, 0.25), (*big, 4, 0.1)):
        if args.size and setup[0] != args.size:
            continue
        cells.append(run_cell(*setup, args.steps, reps, twin=not args.no_twin))
        name = "bench_ibaml_cost" + ("_quick" if args.quick else "") + f"_K{args.steps}"
        name += f"_size{args.size}" if args.size else ""  # one cell: do not overwrite the others
        name += f"_reps{reps}_notwin" if args.no_twin else ""
        save_results(name, {"reps": reps, "cells": cells})  # after every cell


if __name__ == "__main__":
    main()
