"""``genfield train``: meta-train a method on a dataset, evaluate it on the test split, write figures."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from genfield.commands.base import CONFIG_PATH, guard, run_dir
from genfield.errors import InputError


def run_train(cfg: DictConfig, out_dir: Path | None = None) -> dict[str, Any]:
    """Meta-train ``cfg.method`` on ``cfg.data`` with ``cfg.field``; evaluate on the test split."""
    import torch

    from genfield.builders import build_data, build_field_for, build_method, plain
    from genfield.datasets.sampling import StepBatches
    from genfield.distributed import init_distributed, is_main_process
    from genfield.evaluation import evaluate
    from genfield.reports import write_figures
    from genfield.runfiles import start_fresh
    from genfield.training import TrainConfig, load_best, resolve_device, train
    from genfield.validation import validate_train

    init_distributed()
    out_dir = run_dir() if out_dir is None else Path(out_dir)
    config = plain(cfg)
    validate_train(config)
    resume_from = check_train_folder(out_dir, config)
    if resume_from is not None and config.get("overwrite") and is_main_process():
        start_fresh(out_dir)
    if resume_from is None and config.get("resume"):
        print(f"genfield: no checkpoint in {out_dir} yet; resume=true starts at step 0", file=sys.stderr)
    if resume_from is not None and config.get("resume") and resume_from == config["train"]["steps"]:
        print(
            f"genfield: {out_dir} is already at train.steps={resume_from}; evaluating only", file=sys.stderr
        )
    torch.manual_seed(int(cfg.seed))
    device = resolve_device(str(cfg.device))
    bundle = build_data(config["data"], seed=int(cfg.seed))
    check_splits(bundle, config["data"])
    # what `reconstruct` needs to rebuild the model without the training data
    config["resolved"] = {"kind": bundle.kind, "head": bundle.head, "in_dim": bundle.in_dim}
    field = build_field_for(config["field"], bundle)
    method = build_method(config["method"], field, bundle).to(device)
    if device.type == "cuda":
        field.to(device)
    batches = StepBatches(bundle.train, bundle.train_split, bundle.batch_size, int(cfg.seed))
    val_batch = bundle.eval_batch("val", seed=int(cfg.seed)).to(device)
    eval_steps, samples = cfg.eval.steps, int(cfg.eval.num_samples)

    def validate(m):
        return evaluate(m, val_batch, steps=eval_steps, num_samples=samples).summary()

    train_config = TrainConfig(**config["train"])
    result = train(
        method,
        batches,
        train_config,
        out_dir,
        resume=config["resume"],
        validate=validate,
        run_config=config,
        device=device,
    )
    summary: dict[str, Any] = {
        "method": config["method"]["name"],
        "data": config["data"]["name"],
        "field": config["field"]["preset"],
        "steps": result.steps,
        "train_seconds": round(result.seconds, 2),
        "checkpoint": str(result.checkpoint) if result.checkpoint else None,
    }
    if not is_main_process():
        return summary
    summary["std_scale"] = calibrate_run(method, val_batch, result.checkpoint)
    test_batch = bundle.eval_batch("test", seed=int(cfg.seed)).to(device)
    began = time.perf_counter()
    evaluation = evaluate(method, test_batch, steps=eval_steps, num_samples=samples)
    summary["reconstruct_seconds_per_signal"] = (time.perf_counter() - began) / test_batch.num_signals
    summary.update({f"test_{k}": v for k, v in evaluation.summary().items()})
    if cfg.eval.figure:
        name = summary["method"]
        write_figures(out_dir, test_batch, {name: evaluation.prediction}, methods={name: method})
    if result.best is not None:  # test_* are the last weights; best_test_* the best on validation
        load_best(method, result)
        summary["best_std_scale"] = calibrate_run(method, val_batch, result.best_checkpoint)
        best = evaluate(method, test_batch, steps=eval_steps, num_samples=samples).summary()
        summary["best_step"] = result.best["step"]
        summary[f"best_val_{result.best['metric']}"] = result.best["value"]
        summary.update({f"best_test_{k}": v for k, v in best.items()})
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    scores = ", ".join(f"{k} {v:.4g}" for k, v in summary.items() if k.startswith("test_"))
    print(f"{summary['method']} on {summary['data']}: {result.steps} steps, {scores}; outputs in {out_dir}")
    return summary


def check_train_folder(out_dir: Path, config: dict[str, Any]) -> int | None:
    """The run folder is writable and training into it loses nothing (see :mod:`genfield.runfiles`);
    returns the step of the checkpoint it holds, if any."""
    from genfield.runfiles import check_run_folder, check_writable

    check_writable(out_dir, "hydra.run.dir")
    return check_run_folder(out_dir, config)


def calibrate_run(method: Any, val_batch: Any, checkpoint: Path | None) -> float | None:
    """Recalibrate a learned std on the validation signals (:func:`genfield.calibration.calibrate`)
    and write the factor into ``checkpoint``, so ``genfield reconstruct`` predicts with it; the
    factor, or None for a method without a learned std."""
    from genfield.calibration import STD_SCALE, calibrate
    from genfield.checkpoint import set_model_tensors

    factor = calibrate(method, val_batch)
    if factor is not None and checkpoint is not None and checkpoint.is_file():
        set_model_tensors(checkpoint, {STD_SCALE: getattr(method, STD_SCALE)})
    return factor


def check_splits(bundle: Any, data: dict[str, Any]) -> None:
    """Every split holds a signal; else name the split, ``data.split_fractions`` and the minimum count."""
    from genfield.datasets.sampling import split_indices

    for which in ("train", "val", "test"):
        if len(getattr(bundle, which)) == 0:
            total = sum(len(getattr(bundle, w)) for w in ("train", "val", "test"))
            fractions = (
                data["split_fractions"] if data.get("split_fractions") is not None else (0.8, 0.1, 0.1)
            )
            fits = (n for n in range(1, 10_000) if all(len(p) for p in split_indices(n, fractions).values()))
            raise InputError(
                f"data={data.get('name')}: the {which} split is empty ({total} signals split by "
                f"data.split_fractions={list(fractions)}); give at least {next(fits, '?')} signals "
                "or change data.split_fractions"
            )


@hydra.main(version_base="1.3", config_path="../" + CONFIG_PATH, config_name="train")
def train_app(cfg: DictConfig) -> None:
    guard(lambda: run_train(cfg))
