"""The quality table of issue 15: learned priors against fitting from scratch and the classical baselines.

Each cell is one data kind at one documented sparse setting, run through
:func:`genfield.comparison.run_comparison` (same field, same meta-batches, the same held-out *test*
signals and context for every row; the validation signals only pick each method's best weights,
``budget.validations`` times in a run, and calibrate its std; nothing is tuned on the test signals):

* ``faces-10``, ``glyphs-10``: images from 10 % of the pixels;
* ``faces-all``: every pixel as context (the Learned-Initializations setting): meta-init after 2
  steps against random init after 100 (MAML trained for those 2 steps, with learned per-layer rates);
* ``ct-2``, ``ct-8``: CT phantoms from 2 and 8 even views (``eval_context_angles``), at compare.yaml's
  small CT sizes;
* ``shapes-300``: occupancy from 300 labelled points;
* ``views-1``: a held-out view from one context view.

Per cell the table gives the best learned row, the best classical baseline, the best random-init
fit, the margin of the learned row over the issue's reference set, the issue's target marked met or
missed, the seconds per meta-step of each learned method (what the ``quality`` budget's estimate is
derived from), and the central 90 % interval coverage of every row whose prediction has a variance
(:func:`genfield.metrics.interval_coverage`; on images over the unobserved pixels only).

    OMP_NUM_THREADS=1 python -m benchmarks.bench_quality --quick            # every cell, minutes
    OMP_NUM_THREADS=1 python -m benchmarks.bench_quality --budget small --kinds faces-10 glyphs-10 ct-8
    OMP_NUM_THREADS=1 python -m benchmarks.bench_quality --kinds glyphs-10 --set meta_steps=2000 batch_size=8
    python -m benchmarks.bench_quality --budget quality --steps-factor 10 --tag x10   # the 10x check
    OMP_NUM_THREADS=1 python -m benchmarks.bench_quality --kinds ct --jobs 2   # a kind on both cores

A cell may carry budget entries of its own for a preset (``budgets``: a batch or a method's steps
where its cost allows within the preset's hour); ``--set`` wins over them.

Writes ``benchmarks/results/bench_quality[_<tag>].json`` (machine described) and ``.md``.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import Any

import yaml

import genfield.comparison as comparison
from benchmarks._machine import RESULTS, save_results
from genfield.comparison import LEARNED_ROUTES, load_group

CT_SMALL = {"resolution": 24, "n_context_angles": 12, "n_samples": 16}


@dataclass(frozen=True)
class Target:
    """The issue's target for a cell: the best learned row minus the best reference row ``>= margin``.

    ``references`` are route/method filters: ``"classical"`` (every classical baseline but those in
    ``exclude``) and ``"baseline"`` (random-init fitting). ``at_least`` names a baseline the learned
    row must also reach (CT: the linear Gaussian prior). ``learned_steps`` / ``reference_steps`` pin
    the adaptation steps compared (the Learned-Initializations claim: 2 against 100).
    """

    margin: float
    references: tuple[str, ...] = ("classical", "baseline")
    exclude: tuple[str, ...] = ("gaussian-prior",)
    at_least: str | None = None
    learned_steps: int | None = None
    reference_steps: int | None = None

    def describe(self, unit: str) -> str:
        if self.learned_steps is not None:
            return f"meta-init @ {self.learned_steps} >= random init @ {self.reference_steps}"
        text = f"+{self.margin:g}{unit} over {'/'.join(self.references)}"
        return text + (f", >= {self.at_least}" if self.at_least else "")


CELLS: dict[str, dict[str, Any]] = {
    # first: with --jobs, the longest cell of the image kind starts at once
    "faces-all": {
        "data": "faces",
        "overrides": {"context_fraction": 1.0},
        "target": Target(0.0, ("baseline",), learned_steps=2, reference_steps=100),
        # scored after 2 steps, so MAML trains for those 2 with learned per-layer rates (Meta-SGD
        # rates shaped as MAML++'s), and at the quality preset for 40x its steps, which a 2-step
        # MAML step makes cheap (docs/decisions.md)
        "methods": {"maml": {"options": {"inner_steps": 2, "meta_sgd": True, "inner_lr_per": "layer"}}},
        "budgets": {"quality": {"method_steps": {"maml": 20000}}},
        # the claim is about initialisations; the process routes at every pixel cost most of the
        # cell's time (docs/decisions.md)
        "skip": ("ponp", "prior_residual"),
    },
    "faces-10": {"data": "faces", "overrides": {"context_fraction": 0.1}, "target": Target(1.5)},
    "glyphs-10": {
        "data": "glyphs",
        "overrides": {"context_fraction": 0.1},
        "target": Target(1.5),
        "budgets": {"quality": {"batch_size": 8}},  # the demo's batch (docs/decisions.md)
    },
    "ct-2": {
        "data": "ct_phantoms",
        "overrides": {**CT_SMALL, "eval_context_angles": 2},
        "target": Target(1.5, at_least="gaussian-prior"),
    },
    "ct-8": {
        "data": "ct_phantoms",
        "overrides": {**CT_SMALL, "eval_context_angles": 8},
        "target": Target(1.5, at_least="gaussian-prior"),
    },
    "shapes-300": {"data": "shapes", "overrides": {"n_context": 300}, "target": Target(0.05, exclude=())},
    "views-1": {
        "data": "views",
        "overrides": {"n_context_views": 1},
        "target": Target(1.5, ("baseline",)),
        # the meta-initialisations at 5-9 s per meta-step on 2 CPU cores: 150 steps cost about what
        # PONP's 500 do (docs/decisions.md)
        "budgets": {"quality": {"method_steps": {"maml": 150, "reptile": 150}}},
        # iBaML on views: ~55 s per meta-step on 2 CPU cores (docs/decisions.md), past any CPU budget here.
        "skip": ("ibaml",),
    },
}

QUICK_BUDGET = {
    "meta_steps": 3,
    "batch_size": 2,
    "eval_signals": 2,
    "adapt_steps": [0, 2],
    "tto_steps": 2,
    "random_init_steps": [10, 100],
    "validations": 1,
}
METHODS = ["maml", "reptile", "ibaml", "ponp", "prior_residual", "random_init"]


def select_cells(names: Sequence[str] | None) -> list[str]:
    """Cells by name or by data kind (``image``, ``ct``, ``shape``, ``views``); all when ``None``."""
    if not names:
        return list(CELLS)
    chosen = []
    for name in names:
        matched = [c for c in CELLS if c == name or get_kind_of(c) == name]
        if not matched:
            raise SystemExit(f"bench_quality: unknown cell or kind {name!r}; cells: {', '.join(CELLS)}")
        chosen += [c for c in matched if c not in chosen]
    return chosen


def get_kind_of(cell: str) -> str:
    return str(load_group("data", CELLS[cell]["data"])["kind"])


def cell_budget(
    cell: str,
    budget: Mapping[str, Any],
    preset: str,
    steps_factor: float = 1.0,
    given: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The budget a cell runs at: the preset's, the cell's own entries for that preset
    (``CELLS[cell]["budgets"][preset]``) over it, the command line's ``given`` over both, and every
    meta-step count times ``steps_factor``."""
    merged = {**budget, **CELLS[cell].get("budgets", {}).get(preset, {}), **(given or {})}
    scale = lambda n: max(1, round(int(n) * steps_factor))  # noqa: E731
    merged["meta_steps"] = scale(merged["meta_steps"])
    if merged.get("method_steps"):
        merged["method_steps"] = {m: scale(n) for m, n in merged["method_steps"].items()}
    return merged


def merged_overrides(
    cell: Mapping[str, Mapping[str, Any]], given: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """A cell's own method overrides under those given on the command line (which win)."""
    out: dict[str, dict[str, Any]] = {}
    for method in {*cell, *given}:
        ours, theirs = cell.get(method, {}), given.get(method, {})
        out[method] = {**ours, **theirs, "options": {**ours.get("options", {}), **theirs.get("options", {})}}
    return out


def run_cell(
    cell: str,
    budget: Mapping[str, Any],
    methods: Sequence[str],
    seed: int,
    method_overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run one cell's comparison, one method at a time (a method whose training diverges is recorded
    under ``failed`` and the others still run); its rows with coverage and seconds per meta-step."""
    spec = CELLS[cell]
    data_cfg = load_group("data", spec["data"], spec["overrides"])
    method_overrides = merged_overrides(spec.get("methods", {}), method_overrides or {})
    rows: list[dict[str, Any]] = []
    failed: dict[str, str] = {}
    skipped = [m for m in methods if m in spec.get("skip", ())]
    for method in [m for m in methods if m not in skipped]:
        steps = {k: v for k, v in (budget.get("method_steps") or {}).items() if k == method}
        try:
            with tempfile.TemporaryDirectory() as out:
                found = comparison.run_comparison(
                    [data_cfg],
                    [method],
                    "siren",
                    {**budget, "method_steps": steps},
                    out,
                    seed,
                    "cpu",
                    method_overrides=method_overrides,
                    progress=False,
                )
        except Exception as error:  # noqa: BLE001 - a diverged method is a result, reported in the table
            failed[method] = f"{type(error).__name__}: {error}"
            continue
        have_classical = any(row["route"] == "classical" for row in rows)
        # the classical rows of the first method's run stand for the cell
        rows += [asdict(r) for r in found if not (r.route == "classical" and have_classical)]
    return {
        "cell": cell,
        "data": spec["data"],
        "overrides": spec["overrides"],
        "method_overrides": method_overrides,
        "rows": rows,
        "failed": failed,
        "skipped": skipped,
        "budget": dict(budget),
        "seconds_per_meta_step": {
            r["method"]: r["train_seconds"] / comparison.meta_steps(budget, r["method"])
            for r in rows
            if r["route"] in LEARNED_ROUTES and comparison.meta_steps(budget, r["method"])
        },
    }


def _best(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    finite = [r for r in rows if math.isfinite(r["value"])]
    return max(finite, key=lambda r: r["value"]) if finite else None


def judge(rows: Sequence[Mapping[str, Any]], target: Target) -> dict[str, Any]:
    """Best learned, best classical, best random init, the margin and whether the target is met."""
    learned = [r for r in rows if r["route"] in LEARNED_ROUTES]
    classical = [r for r in rows if r["route"] == "classical"]
    fits = [r for r in rows if r["route"] == "baseline"]
    if target.learned_steps is not None:
        learned = [r for r in learned if r["route"] == "meta" and r["steps"] == target.learned_steps]
    if target.reference_steps is not None:
        fits = [r for r in fits if r["steps"] == target.reference_steps]
    pool = [r for r in classical if "classical" in target.references and r["method"] not in target.exclude]
    pool += fits if "baseline" in target.references else []
    best_learned, reference = _best(learned), _best(pool)
    margin = None if best_learned is None or reference is None else best_learned["value"] - reference["value"]
    met = margin is not None and margin >= target.margin
    floor = _best([r for r in classical if r["method"] == target.at_least]) if target.at_least else None
    if floor is not None:
        met = met and best_learned["value"] >= floor["value"]
    return {
        "best_learned": best_learned,
        "best_classical": _best(classical),
        "random_init": _best(fits),
        "reference": reference,
        "floor": floor,
        "margin": margin,
        "met": met,
    }


def _cell_text(row: Mapping[str, Any] | None) -> str:
    if row is None:
        return "–"
    return f"{row['method']} ({row['setting']}) {row['value']:.2f}"


def quality_markdown(
    cells: Sequence[Mapping[str, Any]], title: str, run: Mapping[str, Any] | None = None
) -> str:
    """The quality table (one line per cell) and the coverage table (one line per row with a variance)."""
    lines = [
        f"# {title}",
        "",
        "Held-out test signals; margin = best learned - best of the target's references.",
        "",
    ]
    header = [
        "cell",
        "metric",
        "best learned",
        "best classical",
        "random init",
        "margin",
        "target",
        "verdict",
    ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for cell in cells:
        target: Target = CELLS[cell["cell"]]["target"] if "target" not in cell else cell["target"]
        verdict = judge(cell["rows"], target)
        metric = cell["rows"][0]["metric"] if cell["rows"] else ""
        unit = " dB" if metric == "psnr" else ""
        margin = "–" if verdict["margin"] is None else f"{verdict['margin']:+.2f}{unit}"
        lines.append(
            "| "
            + " | ".join(
                [
                    cell["cell"],
                    metric.upper(),
                    _cell_text(verdict["best_learned"]),
                    _cell_text(verdict["best_classical"]),
                    _cell_text(verdict["random_init"]),
                    margin,
                    target.describe(unit),
                    "met" if verdict["met"] else "**missed**",
                ]
            )
            + " |"
        )
    failures = [(cell["cell"], m, e) for cell in cells for m, e in cell.get("failed", {}).items()]
    failures += [(cell["cell"], m, "not run (cost)") for cell in cells for m in cell.get("skipped", ())]
    if failures:
        lines += ["", "Methods without rows: " + "; ".join(f"{c} {m}: {e}" for c, m, e in failures)]
    lines += ["", "## 90 % interval coverage (rows that report a variance; calibrated: 0.90)", ""]
    lines += ["| cell | method | setting | coverage |", "|---|---|---|---|"]
    for cell in cells:
        for r in cell["rows"]:
            if r.get("coverage90") is not None:
                lines.append(f"| {cell['cell']} | {r['method']} | {r['setting']} | {r['coverage90']:.3f} |")
    lines += wall_time_lines(cells, run)
    lines += ["", "## seconds per meta-step", "", "| cell | method | s / step |", "|---|---|---|"]
    for cell in cells:
        for method, seconds in cell.get("seconds_per_meta_step", {}).items():
            lines.append(f"| {cell['cell']} | {method} | {seconds:.3f} |")
    return "\n".join(lines) + "\n"


def wall_time_lines(cells: Sequence[Mapping[str, Any]], run: Mapping[str, Any] | None = None) -> list[str]:
    """Wall time of each cell, their sum per data kind (each cell holds one core) and of the run.

    With ``--jobs`` above 1 the cells overlap, so the run's wall time is below the per-kind sum.
    """
    timed = [c for c in cells if "wall_seconds" in c]
    if not timed:
        return []
    lines = ["", "## wall time (minutes)", "", "| cell | kind | minutes |", "|---|---|---|"]
    per_kind: dict[str, float] = {}
    for cell in timed:
        kind = get_kind_of(cell["cell"])
        per_kind[kind] = per_kind.get(kind, 0.0) + cell["wall_seconds"]
        lines.append(f"| {cell['cell']} | {kind} | {cell['wall_seconds'] / 60:.1f} |")
    lines += [f"| all {kind} cells (sum) | {kind} | {total / 60:.1f} |" for kind, total in per_kind.items()]
    if run:
        lines.append(f"| whole run, {run['jobs']} at once | - | {run['wall_seconds'] / 60:.1f} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="every cell at a tiny budget (minutes)")
    parser.add_argument("--budget", default="quality", help="a configs/budget preset (ignored with --quick)")
    parser.add_argument("--kinds", nargs="*", help=f"cells or data kinds (cells: {', '.join(CELLS)})")
    parser.add_argument("--methods", nargs="*", default=METHODS)
    parser.add_argument(
        "--steps-factor", type=float, default=1.0, help="multiply meta_steps (10: the 10x check)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--jobs", type=int, default=1, help="cells run at once, one process each (2: both CPU cores)"
    )
    parser.add_argument("--tag", default=None)
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="budget entries, e.g. batch_size=8"
    )
    parser.add_argument(
        "--options",
        nargs="*",
        default=[],
        metavar="METHOD.KEY=VALUE",
        help="method options, e.g. prior_residual.score=ground_truth (METHOD.lr: its outer rate); "
        "an option given here also replaces the method's by_kind entries of that name",
    )
    args = parser.parse_args()
    method_overrides: dict[str, dict[str, Any]] = {}
    for item in args.options:
        dotted, _, value = item.partition("=")
        method, _, key = dotted.partition(".")
        if not key or not value:
            raise SystemExit(f"bench_quality: --options {item!r}: expected METHOD.KEY=VALUE")
        entry = method_overrides.setdefault(method, {"options": {}})
        (entry if key == "lr" else entry["options"])[key] = yaml.safe_load(value)  # lr: the outer rate
    budget = dict(QUICK_BUDGET) if args.quick else load_group("budget", args.budget)
    given = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in {*budget, "method_steps"} or not value:
            raise SystemExit(
                f"bench_quality: --set {item!r}: budget keys are {', '.join(budget)}, method_steps"
            )
        given[key] = yaml.safe_load(value)
    budget.update(given)
    name = "quick" if args.quick else args.budget
    tag = f"bench_quality_{args.tag or name}"
    steps = max(1, round(int(budget["meta_steps"]) * args.steps_factor))
    title = f"Quality benchmark ({name} budget, meta_steps={steps}, seed {args.seed})"
    chosen = select_cells(args.kinds)
    jobs = [
        (
            cell,
            cell_budget(cell, budget, name, args.steps_factor, given),
            args.methods,
            args.seed,
            method_overrides,
        )
        for cell in chosen
    ]
    cells: list[dict[str, Any]] = []
    run = {"jobs": args.jobs, "wall_seconds": 0.0}
    start = time.perf_counter()

    def record(cell: dict[str, Any]) -> None:
        cells.append(cell)
        cells.sort(key=lambda c: chosen.index(c["cell"]))
        run["wall_seconds"] = time.perf_counter() - start
        result = {"budget": budget, "methods": args.methods, "options": method_overrides, "run": run}
        save_results(tag, {**result, "cells": cells})
        (RESULTS / f"{tag}.md").write_text(quality_markdown(cells, title, run))  # after every cell

    if args.jobs == 1:
        for job in jobs:
            record(timed_cell(*job))
    else:  # one process per cell, ``--jobs`` at once (each with the one torch thread it inherits)
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for done in as_completed([pool.submit(timed_cell, *job) for job in jobs]):
                record(done.result())
    print(quality_markdown(cells, title, run))


def timed_cell(
    cell: str,
    budget: Mapping[str, Any],
    methods: Sequence[str],
    seed: int,
    method_overrides: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """:func:`run_cell` with its wall time and verdict (what ``main`` runs, in this process or a worker)."""
    print(f"{cell} ...", flush=True)
    start = time.perf_counter()
    result = run_cell(cell, budget, methods, seed, method_overrides)
    result["wall_seconds"] = time.perf_counter() - start
    result["verdict"] = judge(result["rows"], CELLS[cell]["target"])
    print(f"{cell} done in {result['wall_seconds'] / 60:.1f} min", flush=True)
    return result


if __name__ == "__main__":
    main()
