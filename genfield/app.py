"""The Hydra applications behind ``genfield train | reconstruct | compare | demo``.

Each command is a ``@hydra.main`` application over the config groups shipped in
``genfield/configs`` (found from any directory once the package is installed), so ``--help``,
``--cfg job``, overrides and ``-m`` multirun behave as in any Hydra application. Outputs go to
Hydra's run directory. Bad input prints one line and exits with status 2.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from genfield.errors import InputError

CONFIG_PATH = "configs"


def _guard(work: Callable[[], Any]) -> Any:
    """Run ``work``; bad input becomes a one-line message and exit status 2 (not a traceback)."""
    from genfield.training import TrainingDiverged

    try:
        return work()
    except (InputError, TrainingDiverged) as error:
        print(f"genfield: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except KeyboardInterrupt:
        print("genfield: interrupted; the last checkpoint is intact", file=sys.stderr)
        raise SystemExit(130) from None


def run_dir() -> Path:
    """Hydra's output directory of this job."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


# --------------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------------
def run_train(cfg: DictConfig, out_dir: Path | None = None) -> dict[str, Any]:
    """Meta-train ``cfg.method`` on ``cfg.data`` with ``cfg.field``; evaluate on the test split."""
    import torch

    from genfield.builders import build_data, build_field_for, build_method, plain
    from genfield.datasets.sampling import StepBatches
    from genfield.distributed import init_distributed, is_main_process
    from genfield.evaluation import evaluate
    from genfield.reports import write_figures
    from genfield.training import TrainConfig, load_best, resolve_device, train

    init_distributed()
    out_dir = out_dir or run_dir()
    config = plain(cfg)
    torch.manual_seed(int(cfg.seed))
    device = resolve_device(str(cfg.device))
    bundle = build_data(config["data"], seed=int(cfg.seed))
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
        resume=bool(cfg.resume),
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
    test_batch = bundle.eval_batch("test", seed=int(cfg.seed)).to(device)
    began = time.perf_counter()
    evaluation = evaluate(method, test_batch, steps=eval_steps, num_samples=samples)
    summary["reconstruct_seconds_per_signal"] = (time.perf_counter() - began) / test_batch.num_signals
    summary.update({f"test_{k}": v for k, v in evaluation.summary().items()})
    if cfg.eval.figure:
        shape_fields = _shape_fields(method, test_batch) if bundle.kind == "shape" else None
        write_figures(
            out_dir, test_batch, {summary["method"]: evaluation.prediction}, shape_fields=shape_fields
        )
    if result.best is not None:  # test_* are the last weights; best_test_* the best on validation
        load_best(method, result)
        best = evaluate(method, test_batch, steps=eval_steps, num_samples=samples).summary()
        summary["best_step"] = result.best["step"]
        summary[f"best_val_{result.best['metric']}"] = result.best["value"]
        summary.update({f"best_test_{k}": v for k, v in best.items()})
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    scores = ", ".join(f"{k} {v:.4g}" for k, v in summary.items() if k.startswith("test_"))
    print(f"{summary['method']} on {summary['data']}: {result.steps} steps, {scores}; outputs in {out_dir}")
    return summary


def _shape_fields(method, batch) -> dict[str, Callable] | None:
    """A field_fn over 3-D points for the first test shape (marching cubes), from ``reconstruct``."""
    import torch

    from genfield.forward import PointMap

    first = batch.select(slice(0, 1))

    def field_fn(points: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return method.reconstruct(
                first.context, first.forward_map, points[None], PointMap(), variance=False
            ).mean[0]

    return {"reconstruction": field_fn}


@hydra.main(version_base="1.3", config_path=CONFIG_PATH, config_name="train")
def train_app(cfg: DictConfig) -> None:
    _guard(lambda: run_train(cfg))


def run_hydra_command(command: str, argv: list[str]) -> None:
    """Run a Hydra application with ``argv`` as its command line."""
    apps = {"train": train_app}
    if command not in apps:
        from importlib import import_module

        apps[command] = import_module(f"genfield.commands.{command}").app
    sys.argv = [f"genfield {command}", *argv, *_torchrun_overrides(argv)]
    apps[command]()


def _torchrun_overrides(argv: list[str]) -> list[str]:
    """Under torchrun, every rank must resolve the same run folder, and only rank 0 writes Hydra's
    files: the folder comes from the torchrun run id unless given, and ranks > 0 log nothing."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return []
    extra = []
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "torchrun")
        extra.append(f"hydra.run.dir=outputs/torchrun/{run_id}")
    if int(os.environ.get("RANK", "0")) > 0:
        extra += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    return extra
