"""Training monitors: a sustained rise of the meta-training loss, and the best validation score.

:class:`RisingLoss` smooths the logged losses with an exponential moving average (EMA, weight
``decay`` on the past) and fires once, when the EMA has stayed above ``(1 + margin)`` times its running
minimum for ``patience`` consecutive logs: a loss that climbs for a sustained window, not one noisy
log (a single spike raises the EMA by only ``(1 - decay)`` of its size). It reads values the trainer
already brings to the host at its log steps, so it adds no synchronisation.

:class:`BestScore` keeps the best validation score, the direction taken from the metric: PSNR and IoU
(and SSIM) are better when higher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

HIGHER_IS_BETTER = ("psnr", "iou", "ssim")


class LossRising(RuntimeWarning):
    """The meta-training loss has risen for a sustained window (training may be diverging)."""


@dataclass
class RisingLoss:
    """Fires once when the loss EMA stays above its minimum by ``margin`` x a scale for ``patience`` logs.

    The scale is the larger of ``|minimum|`` and the drop achieved so far (first EMA - minimum), so
    the test means the same for losses that are negative (a Gaussian NLL) or near zero, where a
    relative margin of the minimum alone would fire on noise.
    """

    decay: float = 0.9
    margin: float = 0.5
    patience: int = 10
    ema: float | None = None
    first: float | None = None
    minimum: float = math.inf
    above: int = 0
    fired_at: int | None = None

    def update(self, step: int, loss: float) -> bool:
        """Feed the loss logged at ``step``; True exactly once, at the step where the rise is confirmed."""
        if not math.isfinite(loss):
            return False
        self.ema = loss if self.ema is None else self.decay * self.ema + (1 - self.decay) * loss
        self.first = self.ema if self.first is None else self.first
        self.minimum = min(self.minimum, self.ema)
        scale = max(abs(self.minimum), self.first - self.minimum)
        self.above = self.above + 1 if self.ema - self.minimum > self.margin * scale > 0 else 0
        if self.above >= self.patience and self.fired_at is None:
            self.fired_at = step
            return True
        return False

    def message(self) -> str:
        return (
            f"meta-training loss rising since about step {self.fired_at}: its moving average "
            f"{self.ema:.4g} has stayed above its minimum {self.minimum:.4g} by more than "
            f"{self.margin:.0%} of the loss scale for {self.patience} logs "
            "(consider a lower train.lr, train.grad_clip or inner rate)"
        )


def validation_metric(scores: dict[str, float]) -> str | None:
    """The score that ranks checkpoints: the first of PSNR, IoU, SSIM present in ``scores``."""
    return next((k for k in HIGHER_IS_BETTER if k in scores), None)


@dataclass
class BestScore:
    """The best validation score so far (higher is better for every metric it ranks by)."""

    metric: str | None = None
    value: float = -math.inf
    step: int | None = None

    def update(self, step: int, scores: dict[str, float]) -> bool:
        """True when ``scores`` beat the best so far (a non-finite score never does)."""
        metric = self.metric or validation_metric(scores)
        if metric is None or not math.isfinite(scores.get(metric, math.nan)):
            return False
        if scores[metric] > self.value:
            self.metric, self.value, self.step = metric, scores[metric], step
            return True
        return False

    def state(self) -> dict[str, float | int | str | None]:
        return {"metric": self.metric, "value": self.value, "step": self.step}

    def load(self, state: dict) -> None:
        self.metric, self.step = state.get("metric"), state.get("step")
        self.value = state.get("value", -math.inf)
