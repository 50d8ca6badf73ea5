"""genfield's meta-gradients against the libraries a user would pick instead, in one run.

MAML (second order, K SGD steps, S signals, 10 % context, target = every pixel, the same SIREN and
MSE) three ways:

* **genfield**: ``build_meta_learner("maml", ...).meta_gradient(batch)`` (vmapped field, one
  autograd graph through the K steps);
* **higher** (Grefenstette et al. 2019): ``higher.innerloop_ctx`` around an ``nn.Sequential`` SIREN
  with the same weights, a Python loop over the signals (its documented use);
* **torch.func**: a minimal hand-written version, ``torch.func.grad`` of the mean over
  ``vmap``-ed tasks whose K inner steps are ``torch.func.grad`` themselves.

iMAML (proximal inner problem, exact Hessian, CG) against TorchOpt's ``torchopt.diff.implicit``
(``custom_root`` with its CG solve) where it imports.

First every version's meta-gradient is compared with genfield's (relative difference of the
flattened gradients, printed and saved); then they are timed interleaved (A B C, A B C, ...,
median) so that the ratios share the machine's load. Cells: 32^2 / width 64 x 3 and
64^2 / width 256 x L (``--layers``, 5 by default; 3 with ``--quick``).

Run ``python -m benchmarks.bench_peers [--quick] [--reps N]``; writes
``benchmarks/results/bench_peers.json``.
"""

from __future__ import annotations

import argparse
import warnings

import torch
from torch import nn
from torch.func import grad, vmap

from benchmarks._machine import interleaved_seconds, save_results
from genfield.datasets.builtin import builtin_faces
from genfield.datasets.images import ImageSplit
from genfield.fields import build_field
from genfield.meta import MetaStepSkipped, build_meta_learner

K, SIGNALS, CONTEXT, OMEGA0 = 5, 4, 0.1, 30.0
#: MAML's inner rate by hidden width: at 0.3 the 256-wide SIREN's K steps are chaotic (meta-gradient
#: norm ~3000, float32 rounding alone moves it by 8 %), at 0.03 all versions agree to 1e-6.
INNER_LRS = {64: 0.3, 256: 0.03}
# iMAML: lam and its inner rate keep H + lam I positive definite for this SIREN (at lam = 2 the
# exact Hessian far from a fit is indefinite and CG, genfield's and TorchOpt's alike, diverges).
LAM, IMAML_LR, CG_ITERATIONS = 10.0, 0.05, 20


def flat(grads: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def relative_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


# -- the same SIREN, written by hand ---------------------------------------------------------------
def layer_names(n_layers: int) -> list[tuple[str, str]]:
    hidden = [
        (f"network.hidden_layers.{i}.weight", f"network.hidden_layers.{i}.bias") for i in range(n_layers)
    ]
    return [*hidden, ("network.output_layer.weight", "network.output_layer.bias")]


def siren(params: dict[str, torch.Tensor], x: torch.Tensor, n_layers: int) -> torch.Tensor:
    """The genfield SIREN with the grey head: ``sigmoid(W_L sin(30 (... ) ) + b_L)``."""
    names = layer_names(n_layers)
    h = x
    for w, b in names[:-1]:
        h = torch.sin(OMEGA0 * (h @ params[w].T + params[b]))
    w, b = names[-1]
    return torch.sigmoid(h @ params[w].T + params[b])


def func_maml(theta: dict[str, torch.Tensor], batch, n_layers: int, lr: float) -> list[torch.Tensor]:
    """MAML's meta-gradient with torch.func only."""

    def loss(p, x, y):
        return (siren(p, x, n_layers) - y).square().mean()

    def task(theta, xc, yc, xt, yt):
        phi = theta
        for _ in range(K):
            g = grad(loss)(phi, xc, yc)
            phi = {k: phi[k] - lr * g[k] for k in phi}
        return loss(phi, xt, yt)

    def meta(theta):
        c, t = batch.context, batch.target
        return vmap(task, in_dims=(None, 0, 0, 0, 0))(theta, c.queries, c.values, t.queries, t.values).mean()

    g = grad(meta)(theta)
    return [g[k] for k in theta]


class Sine(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sin(OMEGA0 * z)


def sequential_siren(theta: dict[str, torch.Tensor], n_layers: int) -> nn.Sequential:
    """An ``nn.Sequential`` with genfield's weights (what a ``higher`` user writes)."""
    modules: list[nn.Module] = []
    for w, _ in layer_names(n_layers):
        modules += [nn.Linear(theta[w].shape[1], theta[w].shape[0]), Sine()]
    modules[-1] = nn.Sigmoid()
    model = nn.Sequential(*modules)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for lin, (w, b) in zip(linears, layer_names(n_layers)):
            lin.weight.copy_(theta[w])
            lin.bias.copy_(theta[b])
    return model


def higher_maml(model: nn.Sequential, batch, lr: float) -> dict[str, torch.Tensor]:
    import higher

    opt = torch.optim.SGD(model.parameters(), lr=lr)
    model.zero_grad(set_to_none=True)
    c, t = batch.context, batch.target
    for s in range(batch.num_signals):
        with higher.innerloop_ctx(model, opt, copy_initial_weights=False) as (fmodel, diffopt):
            for _ in range(K):
                diffopt.step((fmodel(c.queries[s]) - c.values[s]).square().mean())
            ((fmodel(t.queries[s]) - t.values[s]).square().mean() / batch.num_signals).backward()
    linears = [m for m in model if isinstance(m, nn.Linear)]
    return {
        name: g
        for lin, pair in zip(linears, layer_names(len(linears) - 1))
        for name, g in zip(pair, (lin.weight.grad, lin.bias.grad))
    }


# -- iMAML through TorchOpt's implicit differentiation ----------------------------------------------
def torchopt_imaml(theta: dict[str, torch.Tensor], batch, n_layers: int, cg_iterations: int):
    import torchopt

    names = list(theta)
    c, t = batch.context, batch.target

    def objective(phi, meta, xc, yc):
        p = dict(zip(names, phi))
        pred = vmap(lambda q, x: siren(q, x, n_layers))(p, xc)
        fit = (pred - yc).square().flatten(1).mean(1).sum()
        prox = sum((a - b).square().sum() for a, b in zip(phi, meta))
        return fit + 0.5 * LAM * prox

    @torchopt.diff.implicit.custom_root(
        grad(objective, argnums=0),
        argnums=1,
        solve=torchopt.linear_solve.solve_cg(maxiter=cg_iterations, rtol=0.0, atol=0.0),
    )
    def solve(phi, meta, xc, yc):
        meta = tuple(m.detach() for m in meta)
        for _ in range(K):
            with torch.enable_grad():
                phi = tuple(p.detach().requires_grad_(True) for p in phi)
                gs = torch.autograd.grad(objective(phi, meta, xc, yc), phi)
            phi = tuple(p - IMAML_LR * g for p, g in zip(phi, gs))
        return tuple(p.detach() for p in phi)

    meta = tuple(theta[k].detach().requires_grad_(True) for k in names)
    init = tuple(m.detach().unsqueeze(0).expand(batch.num_signals, *m.shape).clone() for m in meta)
    phi = solve(init, meta, c.queries, c.values)
    pred = vmap(lambda q, x: siren(q, x, n_layers))(dict(zip(names, phi)), t.queries)
    outer = (pred - t.values).square().flatten(1).mean(1).mean()
    return list(torch.autograd.grad(outer, meta))


# -- one cell ---------------------------------------------------------------------------------------
def run_cell(size: int, hidden: int, n_layers: int, reps: int, device: str) -> dict:
    lr = INNER_LRS.get(hidden, 0.03)
    faces = list(builtin_faces("train", size=size))[:SIGNALS]
    batch = ImageSplit(context_fraction=CONTEXT)(faces, torch.Generator().manual_seed(0)).to(device)
    field = build_field("siren", head="grey", hidden=hidden, n_layers=n_layers).to(device)
    maml = build_meta_learner("maml", field, inner_steps=K, inner_lr=lr).to(device)
    imaml = build_meta_learner(
        "imaml",
        field,
        inner_steps=K,
        inner_lr=IMAML_LR,
        lam=LAM,
        curvature="hessian",
        cg_iterations=CG_ITERATIONS,
        cg_tol=1e-6,
    ).to(device)
    theta = {k: v.detach().clone() for k, v in maml.theta().items()}
    names = list(theta)
    model = sequential_siren(theta, n_layers).to(device)

    def genfield_maml():
        g = maml.meta_gradient(batch)
        return [g[f"init/{k}"] for k in names]

    def genfield_imaml():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MetaStepSkipped)  # a tight tol, timed at fixed iterations
            g, _ = imaml._outer_and_gradient(batch)
        return [g[f"init/{k}"] for k in names]

    cell: dict = {
        "image": size,
        "hidden": hidden,
        "n_layers": n_layers,
        "signals": SIGNALS,
        "inner_steps": K,
        "inner_lr": lr,
        "context_pixels": batch.context.values.shape[1],
    }
    reference = flat(genfield_maml())
    candidates = {"genfield": genfield_maml, "torch.func": lambda: func_maml(theta, batch, n_layers, lr)}
    try:
        import higher  # noqa: F401

        candidates["higher"] = lambda: list(higher_maml(model, batch, lr)[k] for k in names)
    except ImportError as error:
        cell["higher"] = f"not importable: {error}"
    cell["maml_relative_difference"] = {
        name: relative_difference(flat(fn()), reference)
        for name, fn in candidates.items()
        if name != "genfield"
    }
    print(f"{size}^2 {hidden}x{n_layers} MAML relative diff. vs genfield: {cell['maml_relative_difference']}")
    cell["maml_seconds"] = interleaved_seconds(candidates, reps, device)
    base = cell["maml_seconds"]["genfield"]
    cell["maml_ratio_genfield_over"] = {
        n: base / s for n, s in cell["maml_seconds"].items() if n != "genfield"
    }
    print(
        f"  MAML seconds {cell['maml_seconds']}  genfield / peer {cell['maml_ratio_genfield_over']}",
        flush=True,
    )

    # iMAML: first both at many CG iterations (same solution), then timed at CG_ITERATIONS each
    try:
        import torchopt  # noqa: F401
    except ImportError as error:
        cell["torchopt"] = f"not importable: {error}"
        return cell
    imaml.cg_iterations = 100
    converged = flat(genfield_imaml())
    peer = flat(torchopt_imaml(theta, batch, n_layers, 100))
    cell["imaml_relative_difference_torchopt"] = relative_difference(peer, converged)
    imaml.cg_iterations = CG_ITERATIONS
    cell["imaml_cg_iterations"] = CG_ITERATIONS
    cell["imaml_seconds"] = interleaved_seconds(
        {
            "genfield": genfield_imaml,
            "torchopt": lambda: torchopt_imaml(theta, batch, n_layers, CG_ITERATIONS),
        },
        reps,
        device,
    )
    cell["imaml_ratio_genfield_over_torchopt"] = (
        cell["imaml_seconds"]["genfield"] / cell["imaml_seconds"]["torchopt"]
    )
    print(
        f"  iMAML relative difference vs TorchOpt {cell['imaml_relative_difference_torchopt']:.2e}; "
        f"seconds {cell['imaml_seconds']}",
        flush=True,
    )
    return cell


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 hidden layers at 64^2 and 3 repetitions")
    parser.add_argument("--layers", type=int, default=5, help="hidden layers of the 64^2 / 256 cell")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument(
        "--size", type=int, default=None, help="run only the cell of this image size (32, 64)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    layers = 3 if args.quick else args.layers
    reps = args.reps or (3 if args.quick else 5)
    cells = []
    for size, hidden, n_layers in ((32, 64, 3), (64, 256, layers)):
        if args.size and size != args.size:
            continue
        cells.append(run_cell(size, hidden, n_layers, reps, args.device))
        name = "bench_peers" + (f"_{args.size}" if args.size else "")
        save_results(name, {"reps": reps, "interleaved": True, "cells": cells}, args.device)


if __name__ == "__main__":
    main()
