"""The outer learning-rate schedule: linear warm-up, then cosine or constant.

The factor multiplying the base learning rate at (0-based) optimizer step ``k`` of ``T`` steps, with
``W`` warm-up steps and a floor ``m`` (``min_lr_factor``), is

    f(k) = (k + 1) / W                                              for k < W   (linear warm-up)
    f(k) = m + (1 - m) * (1 + cos(pi * (k - W) / max(T - W, 1))) / 2  for k >= W  (cosine, SGDR)
    f(k) = 1                                                        for k >= W  (constant)

(Loshchilov & Hutter 2017, without restarts; warm-up as in Goyal et al. 2017.) Warm-up keeps Adam's
first steps, taken before its second-moment estimate has settled, small; the cosine decay lets a long
run settle instead of keep moving at the full rate. The schedule is a pure function of the step, held
in a :class:`torch.optim.lr_scheduler.LambdaLR` whose state travels in the checkpoint
(:func:`scheduler_state` / :func:`load_scheduler_state`), so a resumed run takes the same steps.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch

from genfield.errors import InputError, unknown_name

SCHEDULES = ("cosine", "constant")


def lr_factor(step: int, total: int, warmup: int, schedule: str = "cosine", min_factor: float = 0.0) -> float:
    """The factor ``f(step)`` of the module docstring (``step`` counts from 0)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def check_schedule(schedule: str, warmup: int, min_factor: float) -> None:
    """Raise :class:`InputError` for an unknown schedule, a negative warm-up or a floor outside [0, 1]."""
    if schedule not in SCHEDULES:
        raise unknown_name("train.schedule", schedule, SCHEDULES)
    if warmup < 0:
        raise InputError(f"train.warmup_steps={warmup}: need >= 0")
    if not 0.0 <= min_factor <= 1.0:
        raise InputError(f"train.min_lr_factor={min_factor}: need a value in [0, 1]")


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    total: int,
    warmup: int,
    schedule: str = "cosine",
    min_factor: float = 0.0,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler setting every parameter group's rate to ``base * f(k)`` before step ``k``."""
    check_schedule(schedule, warmup, min_factor)
    factor = functools.partial(
        lr_factor, total=total, warmup=warmup, schedule=schedule, min_factor=min_factor
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """The scheduler's state as plain JSON-able values (the factor function is rebuilt from config)."""
    return {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}


def load_scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler, state: dict[str, Any]) -> None:
    """Restore :func:`scheduler_state` (the step count and the rates it last set)."""
    scheduler.load_state_dict({**scheduler.state_dict(), **state})
    for group, rate in zip(scheduler.optimizer.param_groups, scheduler.get_last_lr(), strict=True):
        group["lr"] = rate
