"""``genfield reconstruct``: reconstruct a new signal from its observations with a trained run.

The run (:func:`genfield.runs.load_run`) is rebuilt from its checkpoint's stored config, without the
training data. Its kind's spec (:mod:`genfield.kinds`) reads the input file into the observations the
run's evaluation split would make (:meth:`~genfield.kinds.base.KindSpec.read_input`): an image and a
random ``context_fraction`` or a ``mask`` of its pixels; a CT sinogram with its ``angles``, or a slice
projected at them; a mesh or a point cloud, ``n_context`` points of it; a scene folder's
``context_views``. The method adapts to that context once
(:meth:`~genfield.interface.Reconstructor.condition_on`), and the kind writes its outputs from that
state (:meth:`~genfield.kinds.base.KindSpec.write_outputs`): PNGs of the reconstruction and of the
predictive standard deviation where the method has one, a figure, a mesh, and the scores where a
ground truth is known, all in ``metrics.json``. The kind's classical baselines reconstruct the same
context beside it (``baselines=[...]``, :mod:`genfield.commands.reconstruct_baselines`).

Every option is checked before any file is read (:mod:`genfield.commands.reconstruct_options`).
Outputs go to ``out`` (default: Hydra's run directory, else nothing is written there); a call that
fails on bad input leaves no folder it made behind, and changes no file already in ``out``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig

from genfield.checkpoint import stored_config
from genfield.commands import reconstruct_options as options
from genfield.commands.base import CONFIG_PATH, guard, run_dir
from genfield.commands.reconstruct_baselines import prepare_baselines, write_baselines
from genfield.datasets.angles import parse_angles
from genfield.datasets.batch import SignalBatch
from genfield.errors import InputError
from genfield.forward.ct import from_skimage
from genfield.interface import Adapted
from genfield.kinds.inputs import input_type
from genfield.outputs import check_output_folder, discard_if_empty
from genfield.runs import Run, check_overrides, find_checkpoint, load_run, with_run_groups

#: Run, find_checkpoint, load_run, with_run_groups, parse_angles and from_skimage are re-exported from
#: their homes (genfield.runs, genfield.datasets.angles, genfield.forward.ct) for one release.
__all__ = ["Run", "app", "find_checkpoint", "from_skimage", "load_run", "parse_angles", "reconstruct"]
__all__ += ["with_run_groups"]


def _steps(cfg: Mapping[str, Any]) -> int | None:
    return None if cfg.get("steps") is None else int(cfg["steps"])


def adapt(run: Run, batch: SignalBatch, cfg: Mapping[str, Any]) -> Adapted:
    """Adapt the run's method to the batch's context once; every later prediction reuses the state."""
    torch.manual_seed(int(cfg["seed"]))
    context, samples = batch.context.to(run.device), int(cfg["num_samples"])
    return run.method.condition_on(context, batch.forward_map, steps=_steps(cfg), num_samples=samples)


def reconstruct(cfg: Mapping[str, Any], out_dir: str | Path, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Reconstruct ``cfg['input']`` with the run ``cfg['run']``; write files to ``out_dir``.

    ``cfg`` holds the options of ``genfield/configs/reconstruct.yaml`` (and any ``method``,
    ``data``, ``field`` groups selected); ``overrides`` are the command-line overrides, whose
    ``method.``/``data.``/``field.`` keys must agree with the run's stored config. Returns the
    metrics written to ``metrics.json``. Bad input raises :class:`~genfield.errors.InputError`.
    """
    from genfield.kinds import get_kind
    from genfield.training import resolve_device

    for key, what in (("run", "<run directory or checkpoint file>"), ("input", "<file or folder>")):
        if cfg.get(key) in (None, "???", ""):
            raise InputError(f"{key}={what} is required")
    cfg = {**options.option_defaults(), **cfg}
    options.check_options(cfg)
    out = Path(out_dir)
    check_output_folder(out, "out")
    checkpoint = find_checkpoint(cfg["run"])
    stored = stored_config(checkpoint)
    check_overrides(stored, cfg, overrides, str(checkpoint))
    options.check_baselines(cfg["baselines"], stored["resolved"]["kind"])
    path = Path(str(cfg["input"])).expanduser()
    given = input_type(path, str(cfg.get("input_type") or "auto"))
    run = load_run(checkpoint, resolve_device(str(cfg.get("device") or "auto")))
    spec = get_kind(run.kind)
    if given not in spec.accepts:
        raise InputError(
            f"input {path} is {'a folder' if given == 'views' else f'a {given} file'}, but run "
            f"{checkpoint} was trained on {run.kind} data ({run.data.get('name')}): give "
            f"{spec.describe}{spec.input_hint(given)}"
        )
    existed = out.exists()
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(int(cfg["seed"]))
    try:
        batch = spec.read_input(path, given, run, cfg)
        baselines = prepare_baselines(run, spec, batch, cfg)  # before any file is written
        references = {b.name: prediction for b, prediction in baselines}
        results = spec.write_outputs(out, batch, adapt(run, batch, cfg), run, cfg, references)
    except InputError:
        if not existed:
            discard_if_empty(out)
        raise
    metrics = {
        "run": str(checkpoint),
        "input": str(path),
        "kind": run.kind,
        "method": run.name,
        "steps": _steps(cfg),
        "num_samples": int(cfg["num_samples"]),
        "seed": int(cfg["seed"]),
        **results,
    }
    metrics.update(write_baselines(out, baselines, spec, batch, run, cfg, metrics))
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def run(cfg: DictConfig) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    from genfield.builders import plain

    out = Path(str(cfg.out)).expanduser() if cfg.get("out") else run_dir()
    try:
        metrics = reconstruct(plain(cfg), out, list(HydraConfig.get().overrides.task))
    except InputError:
        if cfg.get("out"):
            if not options.OUT_EXISTED.get(str(out), False):
                discard_if_empty(out)
        else:  # no empty timestamped folder (nor empty outputs/reconstruct/) per failed call
            discard_if_empty(out, up_to=Path.cwd())
        raise
    scores = ", ".join(
        f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, float) and not k.endswith("_max")
    )
    print(f"{metrics['method']} ({metrics['kind']}) on {metrics['input']}: {scores}; outputs in {out}")
    if metrics.get("verdict"):  # which of the method and the baselines was best, by how much
        print(metrics["verdict"])
    return metrics


@hydra.main(version_base="1.3", config_path="../" + CONFIG_PATH, config_name="reconstruct")
def _hydra_app(cfg: DictConfig) -> None:
    guard(lambda: run(cfg))


def app() -> None:
    """``genfield reconstruct``: check the overrides, select the run's config groups, then Hydra."""
    sys.argv = [sys.argv[0], *guard(lambda: options.prepare_argv(sys.argv[1:]))]
    _hydra_app()
