"""Compare methods x datasets under one budget: the library behind ``genfield compare`` and ``demo``.

For every dataset, every method is built on the same field, meta-trained for the same number of
meta-steps on the same meta-batches, and evaluated on the same held-out signals and context:

* meta-learners after 0, 1, 2, 5, 10 adaptation steps (``adapt_steps``),
* neural processes in one forward pass and with ``tto_steps`` of test-time optimisation,
* the random-initialisation baseline after ``random_init_steps`` of fitting (one count or a list:
  the same step budget as the meta-learners, and a long fit),
* the classical baselines of the data kind (``KindSpec.baselines``: filtered back-projection for CT),
  fitted on the training collection.

Each method says at which settings it is evaluated (``Reconstructor.settings``), and the data
kind's spec scores every row, so nothing here branches on the route or the kind. Each row records
the kind's metric (PSNR, or IoU for shapes), the reconstruction time per signal and the peak
memory of the reconstruction (:mod:`genfield.profiling`). Results go to ``results.csv`` (one row per
method and setting), ``results.md`` (one table per data kind) and a plot of the metric against
adaptation steps per dataset; figures of the reconstructions go beside them.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from omegaconf import OmegaConf

from genfield.builders import build_data, build_field_for, build_method, method_target
from genfield.calibration import calibrate, coverage
from genfield.datasets.sampling import StepBatches
from genfield.errors import InputError
from genfield.evaluation import evaluate
from genfield.kinds import KindSpec, get_kind, given_over_by_kind
from genfield.profiling import measure
from genfield.targets import built_class, locate
from genfield.training import TrainConfig, load_best, resolve_device, train

if TYPE_CHECKING:
    from genfield.classical.base import Baseline
    from genfield.interface import Prediction

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def load_group(group: str, name: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The config ``configs/<group>/<name>.yaml`` as a plain dict, with ``overrides`` merged in
    (an option given in ``overrides["options"]`` also replaces the ``by_kind`` entries of that name:
    :func:`~genfield.kinds.given_over_by_kind`)."""
    path = CONFIG_DIR / group / f"{name}.yaml"
    if not path.is_file():
        valid = sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))
        raise InputError(f"unknown {group} {name!r}; valid names: {', '.join(valid)}")
    config = OmegaConf.load(path)
    if overrides:
        config = OmegaConf.merge(config, OmegaConf.create(dict(overrides)))
    result = OmegaConf.to_container(config, resolve=True)
    given = (overrides or {}).get("options")
    if isinstance(given, Mapping) and isinstance(result.get("options"), Mapping):
        result["options"] = given_over_by_kind(result["options"], given)
    return result


@dataclass
class Row:
    data: str
    kind: str
    method: str
    route: str
    setting: str
    steps: int | None
    metric: str
    value: float
    seconds_per_signal: float
    peak_mib: float
    train_seconds: float
    #: the central 90 % interval's coverage of the held-out values (``None``: no variance)
    coverage90: float | None = None
    #: the meta-step whose weights were scored: the best on validation (``budget.validations``), else
    #: the last; ``None`` for what does not train
    weights_step: int | None = None
    #: the validation score those weights were picked by (the method's validation metric at its own
    #: default steps, one figure per method): what a recipe is tuned on, never the test signals
    validation: float | None = None


def run_comparison(
    datasets: Sequence[str | Mapping[str, Any]],
    methods: Sequence[str],
    field: str,
    budget: Mapping[str, Any],
    out_dir: str | Path,
    seed: int = 0,
    device: str = "auto",
    data_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    method_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    field_overrides: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> list[Row]:
    """Run the comparison grid and write its files into ``out_dir``; return the rows.

    ``datasets`` are names of ``configs/data`` files or data configs themselves (a mapping with a
    ``name`` and a registered ``kind``: data of a kind that ships no yaml).
    """
    from genfield.reports import write_figures

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch_device = resolve_device(device)
    data_overrides, method_overrides = data_overrides or {}, method_overrides or {}
    unknown = sorted(set(budget.get("method_steps") or {}) - set(methods))
    if unknown:
        raise InputError(f"budget.method_steps names {unknown}, not among the methods {list(methods)}")
    rows: list[Row] = []
    for data in datasets:
        data_cfg = _data_config(data, data_overrides)
        data_cfg["batch_size"] = int(budget["batch_size"])
        data_cfg["eval_signals"] = int(budget["eval_signals"])
        data_name, bundle = str(data_cfg["name"]), build_data(data_cfg, seed=seed)
        spec = get_kind(bundle.kind)
        test_batch = bundle.eval_batch("test", seed=seed).to(torch_device)
        val_batch = bundle.eval_batch("val", seed=seed).to(torch_device)
        field_cfg = load_group("field", field, {"options": dict(field_overrides or {})})
        predictions, trained = {}, {}
        from genfield.classical import LINEAR_PRIORS  # scikit-image and SciPy: once baselines run

        for index, factory in enumerate(spec.baselines):
            baseline = factory()
            row, prediction = _baseline_row(data_name, spec, baseline, bundle, test_batch, torch_device)
            rows.append(row)
            if index == 0 or baseline.name in LINEAR_PRIORS:  # the classical reference, a linear prior
                predictions[baseline.name] = prediction
        for method_name in methods:
            method_cfg = load_group("method", method_name, method_overrides.get(method_name))
            applies = built_class(locate(method_target(method_cfg)[0], "method._target_")).kinds
            if applies is not None and bundle.kind not in applies:
                print(f"{method_name} skipped on {data_name}: it applies to {', '.join(applies)} data only")
                continue
            torch.manual_seed(seed)
            method = build_method(method_cfg, build_field_for(field_cfg, bundle), bundle).to(torch_device)
            batches = StepBatches(bundle.train, bundle.train_split, bundle.batch_size, seed)
            steps = meta_steps(budget, method_name) if method.learns_from_collection else 0
            every = validation_every(budget, steps)
            result = train(
                method,
                batches,
                TrainConfig(
                    steps=steps,
                    lr=float(method_cfg["lr"]),
                    val_every=every or 10**9,
                    checkpoint_every=max(steps, 1),
                    progress=progress,
                ),
                out / data_name / method_name,
                validate=(lambda m, val=val_batch: evaluate(m, val).summary()) if every else None,
                device=torch_device,
                label=f"{method_name} on {data_name}",
            )
            best = load_best(method, result)  # the best weights on validation, where it validated
            weights_step = (best["step"] if best else result.steps) if steps else None
            validation = float(best["value"]) if best else None
            for setting, adapt_steps in method.settings(budget):
                if steps:  # a learned std is recalibrated on the validation signals (never the test
                    # ones), at the steps it is scored at: the spread of an adapted posterior changes
                    # with the adaptation steps
                    calibrate(method, val_batch, steps=adapt_steps)
                with measure(torch_device) as cost:
                    evaluation = evaluate(method, test_batch, steps=adapt_steps)
                rows.append(
                    Row(
                        data_name,
                        bundle.kind,
                        method_name,
                        method_cfg["route"],
                        setting,
                        adapt_steps,
                        spec.metric,
                        evaluation.summary()[spec.metric],
                        cost.seconds / test_batch.num_signals,
                        cost.peak_mib,
                        result.seconds,
                        mean_coverage(evaluation.prediction, test_batch),
                        weights_step,
                        validation,
                    )
                )
            predictions[method_name] = evaluation.prediction  # at the method's largest budget
            trained[method_name] = method
        write_figures(out / data_name, test_batch, predictions, methods=trained)  # shapes: meshes
    write_results(out, rows)
    return rows


def meta_steps(budget: Mapping[str, Any], method: str) -> int:
    """The meta-training steps of ``method``: ``budget.method_steps[method]``, else ``budget.meta_steps``.

    One budget trains every method alike; ``method_steps`` lets a recipe whose step costs several
    times another's (iBaML's inner solve against PONP's one pass) train within the same wall-clock
    budget, and the table's ``train s`` column shows what each was given.
    """
    return int((budget.get("method_steps") or {}).get(method, budget["meta_steps"]))


def mean_coverage(prediction: Prediction, batch, level: float = 0.9) -> float | None:
    """The mean over signals of the central ``level`` interval's coverage (unobserved pixels on
    images, :func:`genfield.calibration.coverage`); ``None`` for a prediction without a variance."""
    per_signal = coverage(prediction, batch, level)
    return None if per_signal is None else per_signal.mean().item()


def validation_every(budget: Mapping[str, Any], steps: int) -> int | None:
    """Validate every ``steps // budget.validations`` meta-steps (``None``: never, the last weights
    are scored). Keeping the best weights on the validation signals is what stops a recipe that
    degrades late (MAML's outer loop past its preset) from being scored at its worst; ``validations``
    counts checks per run, so a 10x run validates as often, and its step at the preset's end is one.
    """
    count = int(budget.get("validations") or 0)
    if not count or not steps:
        return None
    return max(steps // count, 1)


def _data_config(data: str | Mapping[str, Any], overrides: Mapping[str, Mapping[str, Any]]) -> dict:
    """The data config ``data`` names (``configs/data``) or is, with its overrides merged in."""
    if isinstance(data, str):
        return load_group("data", data, overrides.get(data))
    if "name" not in data or "kind" not in data:
        raise InputError(f"a data config needs a name and a kind, got keys {sorted(data)}")
    extra = OmegaConf.create(dict(overrides.get(str(data["name"])) or {}))
    return OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(dict(data)), extra), resolve=True)


def _baseline_row(
    data_name: str, spec: KindSpec, baseline: Baseline, bundle, batch, device
) -> tuple[Row, Prediction]:
    """Fit a classical baseline on the training collection, reconstruct and score the test batch."""
    began = time.perf_counter()
    baseline.fit(bundle.train)
    fit_seconds = time.perf_counter() - began
    with measure(device) as cost:
        prediction = baseline.reconstruct(batch)
    value = spec.score(prediction.mean.detach(), batch)[spec.metric].float().mean().item()
    row = Row(
        data_name,
        spec.name,
        baseline.name,
        "classical",
        baseline.name,
        0,
        spec.metric,
        value,
        cost.seconds / batch.num_signals,
        cost.peak_mib,
        fit_seconds,
    )
    return row, prediction


def write_results(out_dir: Path, rows: Sequence[Row]) -> None:
    """``results.csv``, ``results.md`` (one table per data kind) and ``<data>_metric_vs_steps.png``."""
    from genfield.viz.plots import plot_curves

    if not rows:
        return
    with (out_dir / "results.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(asdict(rows[0])))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)
    (out_dir / "results.md").write_text(results_markdown(rows))
    for data_name in dict.fromkeys(r.data for r in rows):
        curves = {}
        for method in dict.fromkeys(r.method for r in rows if r.data == data_name and r.route == "meta"):
            points = [(r.steps, r.value) for r in rows if r.data == data_name and r.method == method]
            curves[method] = ([p[0] for p in points], [p[1] for p in points])
        references = {r.method: r.value for r in rows if r.data == data_name and r.route == "classical"}
        if curves:
            metric = next(r.metric for r in rows if r.data == data_name)
            plot_curves(
                out_dir / f"{data_name}_{metric}_vs_steps.png",
                curves,
                "adaptation steps",
                metric.upper(),
                title=data_name,
                references={k: v for k, v in references.items() if math.isfinite(v)},
            )


def results_markdown(rows: Sequence[Row], title: str = "genfield comparison", costs: bool = True) -> str:
    """One Markdown table per data kind: a row per method, a column per setting; the time, memory and
    training columns unless ``costs=False`` (``genfield reconstruct`` measures none of them)."""
    lines = [f"# {title}", ""]
    for kind in dict.fromkeys(r.kind for r in rows):
        kind_rows = [r for r in rows if r.kind == kind]
        settings = list(dict.fromkeys(r.setting for r in kind_rows))
        metric = kind_rows[0].metric.upper()
        lines += [f"## {kind} ({metric}; higher is better)", ""]
        header = ["data", "method", *settings, *(["s / signal", "peak MiB", "train s"] if costs else [])]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for data, method in dict.fromkeys((r.data, r.method) for r in kind_rows):
            mine = {r.setting: r for r in kind_rows if r.data == data and r.method == method}
            last = list(mine.values())[-1]
            cells = [
                f"{mine[s].value:.2f}" if s in mine and math.isfinite(mine[s].value) else "" for s in settings
            ]
            cost = [f"{last.seconds_per_signal:.3f}", f"{last.peak_mib:.1f}", f"{last.train_seconds:.0f}"]
            lines.append("| " + " | ".join([data, method, *cells, *(cost if costs else [])]) + " |")
        lines.append("")
    lines += [verdict(rows), ""]
    if costs:
        lines.append(
            "Time and memory are those of the reconstruction at each method's largest budget (last "
            "column of its row). Peak memory: torch.cuda.max_memory_allocated on CUDA; on the CPU, the "
            "peak bytes autograd saved for backward (0 for a pure forward pass)."
        )
    return "\n".join(lines) + "\n"


#: The routes whose rows learn from the collection, and those that are references.
LEARNED_ROUTES = ("meta", "process")


def _best(rows: Sequence[Row]) -> Row | None:
    finite = [r for r in rows if math.isfinite(r.value)]
    return max(finite, key=lambda r: r.value) if finite else None


def verdict(rows: Sequence[Row]) -> str:
    """One sentence per dataset: the best learned row against the best reference, and by how much the
    winner won (higher is better).

    The references are the classical methods that learn nothing beyond an average
    (:data:`~genfield.classical.LINEAR_PRIORS` aside) and random-init fitting. A linear learned prior
    (the Gaussian of the training collection) learns from the same collection as the neural routes, so
    it is not counted as the classical baseline; where it ran, a second clause says how the best
    learned row stands against it, so the sentence never hides a stronger linear prior.
    """
    from genfield.classical import LINEAR_PRIORS

    sentences = []
    for data in dict.fromkeys(r.data for r in rows):
        mine = [r for r in rows if r.data == data]
        learned = _best([r for r in mine if r.route in LEARNED_ROUTES])
        linear = _best([r for r in mine if r.route == "classical" and r.method in LINEAR_PRIORS])
        others = [r for r in mine if r.route not in LEARNED_ROUTES and r.method not in LINEAR_PRIORS]
        reference = _best(others)
        if learned is None or reference is None:
            continue
        unit = " dB" if learned.metric == "psnr" else ""
        gap = learned.value - reference.value
        winner = "the learned method wins" if gap > 0 else "the reference wins"
        sentence = (
            f"{data}: best learned {learned.method} ({learned.setting}) {learned.value:.2f}{unit} "
            f"against best reference {reference.method} ({reference.setting}) {reference.value:.2f}{unit}: "
            f"{winner} by {abs(gap):.2f}{unit} {learned.metric.upper()}."
        )
        if linear is not None:
            ahead = learned.value - linear.value
            sentence += (
                f" The linear learned prior {linear.method} gives {linear.value:.2f}{unit}: "
                f"{learned.method} is {'ahead' if ahead > 0 else 'behind'} by {abs(ahead):.2f}{unit}."
            )
        sentences.append(sentence)
    return "\n".join(sentences)
