"""One training step of every estimator at realistic sizes: time, peak memory, cost of a full run.

Methods: MAML, FOMAML, Reptile, iMAML, iBaML and PONP, each built exactly as ``genfield compare``
builds it (``configs/method/<name>.yaml``, its ``by_kind`` overrides included, through
:func:`genfield.builders.build_method`). One training step is ``method.compute_gradients(batch)``
(the meta-gradient or the process's loss gradient; the optimizer update itself is negligible).

Cells (:func:`cells`): faces at 32^2 (SIREN 64 x 3, the compare field), 64^2 and 178^2 (SIREN 256 x 5,
the Learned-Initializations field), and 64^2 CT phantoms with 20 random views; 4 and 16 signals,
10 % context for images. Within a cell the six methods are timed interleaved (A B C ..., median of
``reps`` rounds after a warm-up), so their ratios share the machine's load. Memory is
:func:`genfield.profiling.measure`'s peak (CUDA: ``max_memory_allocated``; CPU: the live peak of
bytes saved for backward).

``--quick`` (the CPU default run): the 32^2 and 64^2 image cells and the CT cell with 4 signals, the
CT cell with the compare field (SIREN 64 x 3, 32 quadrature points per ray), and 178^2 with 4
signals for one step (the warm-up step, timed); the other cells are written as "not run" with
the reason. On CUDA every cell runs; ``--big-on-cpu`` adds the 16-signal 178^2 cell on a CPU
(one timed step per method, as ``--quick``'s 178^2 cell). The cost of a ``budget=full`` compare
run is estimated per method and cell as ``meta_steps x seconds per step``, scaled linearly from the
measured signals to the budget's batch.

Run ``python -m benchmarks.bench_scale [--quick] [--device cuda]``; writes
``benchmarks/results/bench_scale[_quick].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time
import warnings
from dataclasses import dataclass

import torch

from benchmarks._machine import RESULTS, save_results
from genfield.builders import build_data, build_field_for, build_method
from genfield.comparison import load_group
from genfield.datasets.sampling import seeded_generator
from genfield.meta import MetaStepSkipped
from genfield.profiling import measure

METHODS = ("maml", "fomaml", "reptile", "imaml", "ibaml", "ponp")


@dataclass
class Cell:
    name: str
    data: str
    data_overrides: dict
    hidden: int
    n_layers: int
    signals: int
    reps: int = 3


def cells(quick: bool, cuda: bool, big_on_cpu: bool = False) -> list[tuple[Cell, str | None]]:
    """Every cell with ``None`` (run it) or the reason it is not run."""
    ct_quick = quick and not cuda
    out: list[tuple[Cell, str | None]] = []
    for signals in (4, 16):
        big = signals == 16 and not cuda and not big_on_cpu
        out += [
            (
                Cell("faces 32^2", "faces", {"size": 32}, 64, 3, signals),
                None if signals == 4 or not quick else "--quick: 4 signals only",
            ),
            (
                Cell("faces 64^2", "faces", {"size": 64}, 256, 5, signals, reps=2),
                None if signals == 4 or not quick else "--quick: 4 signals only",
            ),
            (
                Cell(
                    "faces 178^2",
                    "faces",
                    {"size": 178},
                    256,
                    5,
                    signals,
                    reps=0 if (quick or big_on_cpu) and not cuda else 1,
                ),
                "CPU: 16 signals at 178^2 take ~10 minutes (--big-on-cpu)" if big else None,
            ),
            (
                Cell(
                    "CT 64^2, 20 views",
                    "ct_phantoms",
                    {"resolution": 64, "n_context_angles": 20, **({"n_samples": 32} if ct_quick else {})},
                    64 if ct_quick else 256,
                    3 if ct_quick else 5,
                    signals,
                    reps=2,
                ),
                None if signals == 4 or not quick else "--quick: 4 signals only",
            ),
        ]
    return sorted(out, key=lambda item: "178" in item[0].name)  # the costliest cells last


def build(cell: Cell, method: str, device: str):
    bundle = build_data({**load_group("data", cell.data), **cell.data_overrides})
    field = build_field_for(
        {"preset": "siren", "options": {"hidden": cell.hidden, "n_layers": cell.n_layers}}, bundle
    )
    model = build_method(load_group("method", method), field, bundle).to(device)
    signals = [bundle.train[i] for i in range(cell.signals)]
    batch = bundle.train_split(signals, seeded_generator(0, 1)).to(device)
    return model, batch


def run_cell(cell: Cell, reps: int, device: str, methods: tuple[str, ...] = METHODS) -> dict:
    built = {m: build(cell, m, device) for m in methods}
    row: dict = {
        "cell": cell.name,
        "hidden": cell.hidden,
        "n_layers": cell.n_layers,
        "signals": cell.signals,
        "reps": reps,
        "methods": {},
    }
    times: dict[str, list[float]] = {m: [] for m in methods}
    for rep in range(reps + 1):  # round 0: warm-up and memory (and the time, with reps=0)
        for name, (model, batch) in built.items():
            with measure(device) as cost, warnings.catch_warnings():
                warnings.simplefilter("ignore", MetaStepSkipped)
                warnings.simplefilter("ignore", UserWarning)  # PONP's token subsampling
                start = time.perf_counter()
                model.compute_gradients(batch)
                seconds = time.perf_counter() - start
            for p in model.parameters():
                p.grad = None
            if rep == 0:
                row["methods"][name] = {"peak_mib": round(cost.peak_mib, 2)}
                row["memory_method"] = cost.method
            if rep or not reps:
                times[name].append(cost.seconds if device.startswith("cuda") else seconds)
    for name in methods:
        row["methods"][name]["seconds"] = statistics.median(times[name])
    line = "  ".join(f"{n} {v['seconds']:.3f}s/{v['peak_mib']:.0f}MiB" for n, v in row["methods"].items())
    print(f"{cell.name} {cell.hidden}x{cell.n_layers} S={cell.signals}: {line}", flush=True)
    return row


def full_run_estimate(rows: list[dict]) -> dict:
    """Hours of a ``budget=full`` compare run per method and cell (meta_steps x s/step, per batch)."""
    budget = load_group("budget", "full")
    steps, batch = int(budget["meta_steps"]), int(budget["batch_size"])
    estimate = {"meta_steps": steps, "batch_size": batch, "hours": {}}
    for row in rows:
        if "methods" not in row:
            continue
        scale = batch / row["signals"]
        key = f"{row['cell']} ({row['hidden']}x{row['n_layers']}, from S={row['signals']})"
        estimate["hours"][key] = {
            m: round(steps * v["seconds"] * scale / 3600, 2) for m, v in row["methods"].items()
        }
    return estimate


def markdown(rows: list[dict], estimate: dict, device: str) -> str:
    lines = [
        f"One training step on {device}: median seconds (peak MiB). "
        f"Memory: {next((r['memory_method'] for r in rows if 'memory_method' in r), '')}.",
        "",
        "| cell | field | S | " + " | ".join(METHODS) + " |",
        "|---|---|---|" + "---|" * len(METHODS),
    ]
    for row in rows:
        head = f"| {row['cell']} | {row['hidden']}x{row['n_layers']} | {row['signals']} |"
        if "methods" not in row:
            lines.append(head + f" not run: {row['not_run']} |" + " |" * (len(METHODS) - 1))
            continue
        measured = row["methods"]
        cells = [
            f"{measured[m]['seconds']:.3f} ({measured[m]['peak_mib']:.0f})" if m in measured else "not run"
            for m in METHODS
        ]
        lines.append(head + " " + " | ".join(cells) + " |")
    lines += [
        "",
        f"`budget=full` ({estimate['meta_steps']} meta-steps of {estimate['batch_size']} signals), "
        "hours per method, scaled linearly from the measured batch:",
        "",
        "| cell | " + " | ".join(METHODS) + " |",
        "|---|" + "---|" * len(METHODS),
    ]
    for key, hours in estimate["hours"].items():
        lines.append(
            f"| {key} | " + " | ".join(f"{hours[m]:.1f}" if m in hours else "–" for m in METHODS) + " |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the CPU cell selection (see the docstring)")
    parser.add_argument("--reps", type=int, default=None, help="timed rounds per cell (default: per cell)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--big-on-cpu",
        action="store_true",
        help="also the 16-signal 178^2 cell on a CPU (one timed step per method, ~15 GiB)",
    )
    parser.add_argument(
        "--methods", nargs="*", default=list(METHODS), choices=METHODS, help="a subset (memory-bound cells)"
    )
    parser.add_argument("--signals", type=int, default=None, help="run only the cells of this batch size")
    parser.add_argument("--only", default=None, help="run only cells whose name contains this (e.g. 64, CT)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for cell, reason in cells(args.quick, args.device.startswith("cuda"), args.big_on_cpu):
        if args.only and args.only not in cell.name:
            reason = reason or f"--only {args.only}"
        if args.signals and args.signals != cell.signals:
            reason = reason or f"--signals {args.signals}"
        if reason:
            rows.append(
                {
                    "cell": cell.name,
                    "hidden": cell.hidden,
                    "n_layers": cell.n_layers,
                    "signals": cell.signals,
                    "not_run": reason,
                }
            )
            continue
        reps = cell.reps if args.reps is None else args.reps
        rows.append(run_cell(cell, reps, args.device, tuple(args.methods)))
        save(rows, args)  # after every cell: a run cut short keeps what it measured


def save(rows: list[dict], args) -> None:
    estimate = full_run_estimate(rows)
    only = re.sub(r"[^A-Za-z0-9]+", "", args.only) if args.only else ""  # "32^2" -> "322"
    name = "bench_scale" + ("_quick" if args.quick else "") + (f"_{only}" if only else "")
    name += f"_S{args.signals}" if args.signals else ""
    name += "" if set(args.methods) == set(METHODS) else "_" + "_".join(args.methods)
    save_results(name, {"rows": rows, "full_run_estimate": estimate}, args.device)
    path = RESULTS / f"{name}.md"
    path.write_text(markdown(rows, estimate, args.device))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
