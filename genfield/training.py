"""The trainer shared by every method: Adam on a Reconstructor's parameters over meta-batches.

Each step asks the method for its gradients (:meth:`Reconstructor.compute_gradients`), all-reduces
them when running under ``torch.distributed``, clips them if asked, and takes an optimizer step. The
batch of step ``k`` is a pure function of ``(seed, k)`` (:mod:`genfield.datasets.sampling`), and the
checkpoint holds the optimizer and RNG state, so ``resume=True`` continues a run exactly.

A non-finite loss stops training with a message naming the step and the last finite checkpoint,
which is kept: checkpoints are written atomically and only after finite steps.

Stability (defaults in :class:`TrainConfig` and ``configs/train.yaml``): the outer rate follows a
linear warm-up then a cosine decay (:mod:`genfield.schedules`, its state in the checkpoint), gradients
are clipped to a norm of ``grad_clip``, a sustained rise of the training loss is warned about once and
marked ``loss_rising = 1`` in the metrics (:mod:`genfield.monitor`), and the weights with the best
validation score are kept in ``checkpoints/best.safetensors`` beside ``last.safetensors``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from genfield.checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from genfield.datasets.batch import SignalBatch
from genfield.datasets.sampling import StepBatches
from genfield.distributed import broadcast_module, check_same_on_ranks
from genfield.distributed import world as process_world
from genfield.errors import InputError
from genfield.interface import Reconstructor
from genfield.monitor import BestScore, LossRising, RisingLoss
from genfield.runfiles import (
    METRICS,
    VALIDATION,
    StopAtStepBoundary,
    append_rows,
    keep_rows,
    stops_at_step_boundary,
)
from genfield.schedules import build_scheduler, check_schedule, load_scheduler_state, scheduler_state


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """How long and how to train (the ``train`` group of the Hydra config)."""

    steps: int = 1000
    lr: float = 1e-4
    grad_clip: float | None = 1.0
    schedule: str = "cosine"
    warmup_steps: int = 10
    min_lr_factor: float = 0.1
    val_every: int = 100
    checkpoint_every: int = 100
    log_every: int = 10
    progress: bool = True
    tensorboard: bool = False
    amp: bool = False

    def __post_init__(self) -> None:
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise InputError(f"train.grad_clip={self.grad_clip}: need a norm > 0 (or null for no clipping)")
        check_schedule(self.schedule, self.warmup_steps, self.min_lr_factor)


@dataclass
class TrainResult:
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)
    validation: list[dict[str, float]] = field(default_factory=list)
    checkpoint: Path | None = None
    seconds: float = 0.0
    best: dict[str, Any] | None = None  # {"metric", "value", "step"} of the best validation score
    best_checkpoint: Path | None = None


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def shard(batch: SignalBatch, rank: int, world: int) -> SignalBatch:
    """This rank's contiguous share of a meta-batch: signals ``[rank S/W, (rank + 1) S/W)``.

    Every rank builds the same global batch from ``(seed, step)`` and keeps its share (the split
    ``DistributedSampler`` makes of one global order), so the union of the shards is exactly the
    batch of a one-process run. Shards are equal, so the mean of the rank gradients is the gradient
    of the mean loss over the whole batch.
    """
    if world == 1:
        return batch
    if batch.num_signals % world:
        raise InputError(f"data.batch_size={batch.num_signals} does not split evenly over {world} ranks")
    per_rank = batch.num_signals // world
    part = batch.select(slice(rank * per_rank, (rank + 1) * per_rank))
    # where this shard sits in the global batch: methods that draw per-signal Monte-Carlo noise draw
    # it for the whole batch and keep their share, so N ranks match one process exactly
    return replace(part, shard=(rank * per_rank, batch.num_signals))


def all_reduce_gradients(
    parameters: list[torch.nn.Parameter],
    world: int,
    metrics: dict[str, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Average gradients and scalar metrics over ranks with one flattened all-reduce.

    The buffer holds every gradient (as DDP's buckets do, but in one bucket), one "has a gradient"
    flag per parameter and the metrics, so one collective per step serves all three. The gradient
    of a parameter becomes ``sum_r g_r / n``, ``n`` being the number of ranks that produced one:
    the DDP mean ``1/W sum_r g_r`` when every rank did, the mean over the others when a rank
    skipped its meta-step (:class:`~genfield.meta.MetaStepSkipped` writes no ``.grad``), and
    ``None`` -- no optimizer update, as in one process -- when none did. Metrics are averaged, so
    every rank sees the loss of the whole batch and a non-finite loss stops every rank together.

    Returns:
        the metrics averaged over ranks (the input itself when ``world == 1``).
    """
    metrics = dict(metrics or {})
    if world == 1 or not parameters:
        return metrics
    dtype = functools.reduce(torch.promote_types, (p.dtype for p in parameters))
    device = parameters[0].device
    names = sorted(metrics)  # same keys in the same order on every rank
    has_grad = [p.grad is not None for p in parameters]
    pieces = [
        (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype) for p in parameters
    ]
    pieces.append(torch.tensor(has_grad, dtype=dtype, device=device))
    pieces.extend(metrics[k].detach().reshape(1).to(device=device, dtype=dtype) for k in names)
    flat = torch.cat(pieces)
    dist.all_reduce(flat)
    sizes = [p.numel() for p in parameters] + [len(parameters), len(names)]
    *grads, counts, values = torch.split(flat, sizes)
    for p, g, n in zip(parameters, grads, counts.tolist(), strict=True):
        p.grad = (g / n).view_as(p).to(p.dtype) if n > 0 else None
    return {k: v / world for k, v in zip(names, values, strict=True)}


@stops_at_step_boundary
def train(
    method: Reconstructor,
    batches: StepBatches,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    validate: Callable[[Reconstructor], dict[str, float]] | None = None,
    run_config: dict[str, Any] | None = None,
    device: torch.device | None = None,
    label: str = "train",
) -> TrainResult:
    """Train ``method`` for ``config.steps`` steps on the meta-batches of ``batches``.

    Args:
        method: the reconstructor to train (meta-learner or neural process).
        batches: the meta-batch of every step (:class:`~genfield.datasets.sampling.StepBatches`).
        config: steps, learning rate, clipping, validation and checkpoint cadence.
        out_dir: where ``checkpoints/last.safetensors``, ``metrics.csv`` and logs go.
        resume: continue from ``out_dir/checkpoints/last.safetensors`` if it exists.
        validate: called every ``val_every`` steps on rank 0; returns metrics to log.
        run_config: the resolved config stored in checkpoints.
        device: where to train (default: where the method's parameters are).
        label: the progress bar's label (``compare`` names the method and dataset).

    ``metrics.csv`` / ``validation.csv`` grow as rows are logged; rows past the starting step (the
    checkpoint's on resume, 0 otherwise) are dropped first. SIGINT / SIGTERM stop at the next step
    boundary with a checkpoint and raise :class:`~genfield.runfiles.Interrupted`.
    """
    out_dir = Path(out_dir)
    rank, world = process_world()
    checkpoint = out_dir / "checkpoints" / "last.safetensors"
    best_checkpoint = checkpoint.with_name("best.safetensors")
    parameters = [p for p in method.parameters() if p.requires_grad]
    if not parameters:  # nothing is learned across signals (the random-init baseline)
        return TrainResult(steps=0)
    optimizer = torch.optim.Adam(method.optimizer_groups(config.lr), lr=config.lr)
    scheduler = build_scheduler(
        optimizer, config.steps, config.warmup_steps, config.schedule, config.min_lr_factor
    )
    rising, best = RisingLoss(), BestScore()
    device = device or (parameters[0].device if parameters else torch.device("cpu"))
    start = 0
    if resume and checkpoint.is_file():
        meta = load_checkpoint(checkpoint, method, optimizer)
        start = meta["step"]
        if "scheduler" in meta["extra"]:
            load_scheduler_state(scheduler, meta["extra"]["scheduler"])
        best.load(meta["extra"].get("best", {}))
    check_same_on_ranks(start, "the step to resume from", world)
    saved = start
    if rank == 0:  # the logs continue from the starting step: no row is logged twice
        keep_rows(out_dir / METRICS, lambda logged: logged < start)
        keep_rows(out_dir / VALIDATION, lambda validated: validated <= start)
    broadcast_module(method, world)  # every rank starts from rank 0's weights, as DDP does
    result = TrainResult(steps=start)
    # Mixed precision where it is safe: bf16 autocast on CUDA, never for second-order estimators
    # (Hessian-vector products and backprop through inner steps want full precision).
    use_amp = config.amp and device.type == "cuda" and not method.needs_double_backward
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
    writer = _tensorboard(out_dir) if config.tensorboard and rank == 0 else None
    began = time.perf_counter()
    bar = tqdm(
        range(start, config.steps),
        initial=start,
        total=config.steps,
        desc=label,
        unit="step",
        disable=not config.progress or rank != 0,
    )
    stop = StopAtStepBoundary.current()
    for step in bar:
        if stop.requested:
            break
        batch = shard(batches[step], rank, world).to(device)
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            metrics = method.compute_gradients(batch)
        metrics = all_reduce_gradients(parameters, world, metrics)
        loss = metrics.get("loss")
        if loss is not None and not torch.isfinite(loss).all():  # one host sync per step
            last = (
                f"{checkpoint} (step {read_checkpoint_metadata(checkpoint)['step']})"
                if checkpoint.is_file()
                else "none"
            )
            raise TrainingDiverged(f"non-finite loss at step {step}; last finite checkpoint: {last}")
        clip = config.grad_clip if config.grad_clip is not None else math.inf
        metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(parameters, clip)
        metrics["lr"] = torch.tensor(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
        result.steps = step + 1
        if step % config.log_every == 0 or step + 1 == config.steps:
            logged = {"step": step, **{k: float(v) for k, v in metrics.items()}}
            if "loss" in logged and rising.update(step, logged["loss"]):
                logged["loss_rising"] = 1.0
                warnings.warn(rising.message(), LossRising, stacklevel=2)
            result.history.append(logged)
            if rank == 0:
                append_rows(out_dir / METRICS, [logged])
            bar.set_postfix({k: f"{v:.4g}" for k, v in logged.items() if k != "step"})
            if writer is not None:
                for key, value in logged.items():
                    writer.add_scalar(f"train/{key}", value, step)
        if validate is not None and rank == 0 and (step + 1) % config.val_every == 0:
            scores = {"step": step + 1, **validate(method)}
            result.validation.append(scores)
            append_rows(out_dir / VALIDATION, [scores])
            if best.update(step + 1, scores):
                extra = _extra(scheduler, best)
                save_checkpoint(best_checkpoint, method, optimizer, step + 1, run_config, extra)
            if writer is not None:
                for key, value in scores.items():
                    writer.add_scalar(f"val/{key}", value, step + 1)
        if rank == 0 and ((step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps):
            save_checkpoint(checkpoint, method, optimizer, step + 1, run_config, _extra(scheduler, best))
            saved = step + 1
    bar.close()
    result.seconds = time.perf_counter() - began
    if writer is not None:
        writer.close()
    if stop.requested:  # the steps done since the last checkpoint are kept too
        if rank == 0 and result.steps > saved:
            extra = _extra(scheduler, best)
            save_checkpoint(checkpoint, method, optimizer, result.steps, run_config, extra)
        raise stop.interrupted(
            out_dir, result.steps, config.steps, checkpoint if checkpoint.is_file() else None
        )
    if rank == 0:
        result.checkpoint = checkpoint if checkpoint.is_file() else None
        if best.step is not None and best_checkpoint.is_file():
            result.best, result.best_checkpoint = best.state(), best_checkpoint
    return result


def _extra(scheduler: torch.optim.lr_scheduler.LRScheduler, best: BestScore) -> dict[str, Any]:
    """What a checkpoint holds beside weights and optimizer: the schedule's and the best score's state."""
    return {"scheduler": scheduler_state(scheduler), "best": best.state()}


def load_best(method: Reconstructor, result: TrainResult) -> dict[str, Any] | None:
    """Load the best-on-validation weights of ``result`` into ``method``; their score, or None."""
    if result.best_checkpoint is None:
        return None
    load_checkpoint(result.best_checkpoint, method, restore_rng=False)
    return result.best


def _tensorboard(out_dir: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:
        raise InputError(
            "train.tensorboard=true needs the tensorboard package: pip install 'genfield[tensorboard]'"
        ) from error
    return SummaryWriter(log_dir=str(out_dir / "tensorboard"))
