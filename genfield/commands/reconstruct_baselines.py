"""The classical baselines of ``genfield reconstruct``: the same context, reconstructed by each.

``baselines=[...]`` (default: the run's kind's, :attr:`~genfield.kinds.base.KindSpec.baselines`,
strongest reference first; ``[]``: none) names baselines of :mod:`genfield.classical`. Each runs in
two phases, so that bad input changes nothing in ``out``:

1. :func:`prepare_baselines`, before any file is written: fit each baseline (on the run's training
   collection, rebuilt from the run's stored data config where the baseline learns from one:
   built-in data, or a data folder that still exists; otherwise it is skipped with one line saying
   why) and reconstruct the input's context. A baseline the user named that cannot run on this input
   is an :class:`~genfield.errors.InputError` naming ``baselines``; one of the kind's defaults that
   cannot is skipped with one line (a default never makes a call fail).
2. :func:`write_baselines`, after the method's outputs: each baseline's files in
   ``out/baselines/<name>/``, as the kind writes a method's (:meth:`~genfield.kinds.base.KindSpec.
   write_baseline`), its scores under ``baselines`` in ``metrics.json`` where the ground truth is
   known, and then ``results.md`` (:func:`genfield.comparison.results_markdown`) and the sentence
   saying which won by how much (:func:`genfield.comparison.verdict`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from genfield.datasets.batch import SignalBatch
from genfield.errors import InputError
from genfield.interface import Prediction
from genfield.kinds.base import KindSpec, baseline_name

if TYPE_CHECKING:
    from genfield.classical.base import Baseline
    from genfield.runs import Run

#: A baseline ready to write: the fitted baseline and its reconstruction of the input's context.
Prepared = tuple["Baseline", Prediction]


def kind_baselines(spec: KindSpec) -> dict[str, Callable[[], Baseline]]:
    """The baselines ``baselines=[...]`` may name for kind ``spec``: name -> factory, in its order."""
    return {baseline_name(factory): factory for factory in spec.baselines}


def training_collection(run: Run) -> tuple[Any, str]:
    """The run's training collection rebuilt from its stored data config, or ``(None, why not)``."""
    from genfield.builders import build_data

    try:
        return build_data(run.data, seed=int(run.config.get("seed") or 0)).train, ""
    except (InputError, OSError) as error:
        return None, f"the run's training data {run.data.get('name')!r} cannot be rebuilt ({error})"


def prepare_baselines(run: Run, spec: KindSpec, batch: SignalBatch, cfg: Mapping[str, Any]) -> list[Prepared]:
    """Fit and reconstruct each baseline of ``cfg['baselines']`` on ``batch`` (phase 1, no file written)."""
    factories, names = kind_baselines(spec), cfg.get("baselines")
    explicit = names is not None
    prepared: list[Prepared] = []
    train: Any = None
    why = ""
    for name in list(factories) if names is None else names:
        baseline = factories[name]()
        try:
            if getattr(baseline, "learns_from_collection", True):
                if train is None and not why:
                    train, why = training_collection(run)
                if train is None:
                    print(f"genfield: baseline {name} skipped: {why}", file=sys.stderr)
                    continue
            baseline.fit(train)
            torch.manual_seed(int(cfg["seed"]))
            prediction = baseline.reconstruct(batch)
            if not bool(torch.isfinite(prediction.mean).all()):
                raise InputError("its reconstruction is not finite (NaN or inf)")
        except InputError as error:
            if explicit:
                raise InputError(f"baselines=[{name}] cannot run on {cfg['input']}: {error}") from None
            print(f"genfield: baseline {name} skipped: {error}", file=sys.stderr)
            continue
        prepared.append((baseline, prediction))
    return prepared


def write_baselines(
    out: Path,
    prepared: Sequence[Prepared],
    spec: KindSpec,
    batch: SignalBatch,
    run: Run,
    cfg: Mapping[str, Any],
    method_metrics: Mapping[str, Any],
) -> dict[str, Any]:
    """Each baseline's files and scores (phase 2); ``results.md`` and the verdict where the method and
    the baselines are scored. Returns the entries for ``metrics.json`` (none without baselines)."""
    from genfield.comparison import Row, results_markdown, verdict

    if not prepared:
        return {}
    scores = {}
    for baseline, prediction in prepared:
        folder = out / "baselines" / baseline.name
        folder.mkdir(parents=True, exist_ok=True)
        scores[baseline.name] = {
            "folder": str(folder.relative_to(out)),
            **spec.write_baseline(folder, batch, baseline, prediction, cfg),
        }
    metric, setting = spec.metric, Path(str(cfg["input"])).name
    if metric not in method_metrics or not all(metric in s for s in scores.values()):
        return {"baselines": scores}
    route = str(run.config["method"].get("route", "method"))
    rows = [(run.name, route, method_metrics[metric])]
    rows += [(name, "classical", s[metric]) for name, s in scores.items()]
    data = str(run.data.get("name", spec.name))
    rows = [
        Row(data, spec.name, n, r, setting, None, metric, v, math.nan, math.nan, math.nan) for n, r, v in rows
    ]
    (out / "results.md").write_text(results_markdown(rows, title="genfield reconstruct", costs=False))
    sentence = verdict(rows)  # none when the run's method is itself a reference (random_init)
    return {"baselines": scores, **({"verdict": sentence} if sentence else {})}
