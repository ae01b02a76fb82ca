"""Watches on every optimiser step: gradient norm out of range, a falling float16 loss scale,
and non-finite losses or gradients (the step is skipped; too many in a row stop training)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

from .errors import TrainingDiverged

log = logging.getLogger("mlip_distill.training")


class GradientNormWatch:
    """Warns when the gradient norm (before clipping) stays outside ``[low, high]`` for
    ``patience`` consecutive steps: below, the model has stopped learning or the loss is tiny;
    above, the learning rate is too high or a label is an outlier. One warning per excursion."""

    def __init__(self, low: float = 0.1, high: float = 10.0, patience: int = 100) -> None:
        if not 0 <= low < high:
            raise ValueError(f"gradient norm range [{low}, {high}]: expected 0 <= low < high")
        self.low, self.high, self.patience = float(low), float(high), int(patience)
        self.outside = 0

    def update(self, norm: float, step: int) -> str | None:
        """Record one step's gradient norm; returns the warning when one is due."""
        if self.low <= norm <= self.high:
            self.outside = 0
            return None
        self.outside += 1
        if self.outside != self.patience:
            return None
        side = "below" if norm < self.low else "above"
        hint = ("the learning rate may be too low or training has converged" if side == "below"
                else "lower optimizer.lr or check the data for outliers")
        return (f"step {step}: gradient norm {side} [{self.low:g}, {self.high:g}] for {self.patience} steps "
                f"(now {norm:.3g}); {hint}")


class LossScaleWatch:
    """Warns when the float16 gradient scaler's loss scale falls ``falls`` times without rising
    in between: gradients keep overflowing, or the loss keeps underflowing float16."""

    def __init__(self, falls: int = 8) -> None:
        self.falls = int(falls)
        self.previous: float | None = None
        self.count = 0

    def update(self, scale: float, step: int) -> str | None:
        """Record the scale used at one step; returns the warning when one is due."""
        previous, self.previous = self.previous, scale
        if previous is None or scale == previous:
            return None
        if scale > previous:
            self.count = 0
            return None
        self.count += 1
        if self.count != self.falls:
            return None
        return (f"step {step}: the float16 loss scale fell {self.falls} times in a row (now {scale:g}); "
                "gradients overflow or underflow float16: try precision=bf16-mixed or a lower optimizer.lr")


@dataclass
class NonFiniteGuard:
    """Counts steps whose loss or gradient is NaN or infinite; each is logged and skipped, and
    ``max_consecutive`` in a row raise :class:`TrainingDiverged` with a diagnosis and a hint."""

    max_consecutive: int = 10
    consecutive: int = 0
    total: int = 0
    events: list[str] = field(default_factory=list)

    def bad_step(self, step: int, what: str, structure_ids: Sequence[int], hint_context: str = "") -> None:
        """Record a skipped step: ``what`` names the non-finite loss term(s) or parameter(s)."""
        self.consecutive += 1
        self.total += 1
        ids = ", ".join(str(int(i)) for i in structure_ids)
        message = f"step {step}: non-finite {what} in the batch of structures [{ids}]; step skipped"
        self.events.append(message)
        log.warning(message)
        if self.consecutive >= self.max_consecutive:
            raise TrainingDiverged(
                f"training stopped after {self.consecutive} consecutive steps with non-finite values "
                f"(last: {what}, structures [{ids}]); hint: lower optimizer.lr or raise scheduler.warmup_steps"
                f"{hint_context}, and check those structures in the label file (overlapping atoms, outlier labels)"
            )

    def good_step(self) -> None:
        self.consecutive = 0


def non_finite_terms(total: float, parts: dict[str, float]) -> list[str]:
    """Names of the loss terms that are NaN or infinite (``total`` when no term is)."""
    names = [name for name, value in parts.items() if not name.endswith("_weighted") and not math.isfinite(value)]
    return names or (["total"] if not math.isfinite(total) else [])
