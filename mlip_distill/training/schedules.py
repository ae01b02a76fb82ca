"""Learning-rate schedules: a linear warmup over the first optimiser steps, then cosine
annealing, reduce-on-plateau or a constant rate.

The warmup is :class:`torch.optim.lr_scheduler.LinearLR`, stepped every optimiser step. It and
reduce-on-plateau both change the learning rate multiplicatively, so a plateau reduction during
the warmup is kept rather than overwritten. Cosine annealing follows the warmup in one
:class:`~torch.optim.lr_scheduler.SequentialLR` and runs over optimiser steps, not epochs; in a
run with a wall-time limit it runs over whichever ends the run first, steps or time, so that a
time-limited run still ends at ``eta_min`` rather than stopping high up the cosine.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping

import torch
from torch.optim.lr_scheduler import LambdaLR, LinearLR, ReduceLROnPlateau, SequentialLR

from .errors import ConfigError

SCHEDULES = ("constant", "cosine", "plateau")
SETTINGS = {  # each schedule's own settings, besides name, warmup_steps and warmup_start_lr
    "constant": set(),
    "cosine": {"decay_steps", "eta_min"},
    "plateau": {"monitor", "factor", "patience", "threshold", "threshold_mode", "min_lr", "cooldown", "eps", "mode"},
}


def _warmup(optimizer: torch.optim.Optimizer, steps: int, start_lr: float | None = None) -> LinearLR | LambdaLR:
    """``lr * (k + 1) / steps`` at optimiser step k, so the rate reaches ``lr`` at the last
    warmup step; with ``start_lr``, a straight line from ``start_lr`` to ``lr`` instead."""
    total = max(steps - 1, 1)
    if start_lr is None:
        return LinearLR(optimizer, start_factor=1.0 / steps, end_factor=1.0, total_iters=total)
    start = start_lr / optimizer.param_groups[0]["lr"]
    if 0 < start <= 1:
        return LinearLR(optimizer, start_factor=start, end_factor=1.0, total_iters=total)
    # LinearLR refuses factors above 1: a stage whose rate is below the previous stage's final one ramps down
    return LambdaLR(optimizer, lambda k: start + (1.0 - start) * min(k / total, 1.0))


def _cosine(optimizer: torch.optim.Optimizer, decay_steps: int, eta_min: float,
            time_fraction: Callable[[], float] | None) -> LambdaLR:
    """From ``lr`` down to ``eta_min`` along a half cosine of progress ``max(k / decay_steps,
    time_fraction())`` at optimiser step k (capped at 1)."""
    lr = optimizer.param_groups[0]["lr"]
    floor = eta_min / lr if lr > 0 else 0.0

    def factor(k: int) -> float:
        progress = k / decay_steps
        if time_fraction is not None:
            progress = max(progress, time_fraction())
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return LambdaLR(optimizer, factor)


def build_schedulers(
    optimizer: torch.optim.Optimizer,
    options: Mapping[str, Any],
    total_steps: int,
    time_fraction: Callable[[], float] | None = None,
) -> list[dict]:
    """Lightning scheduler configs for ``optimizer`` as the ``scheduler`` config says.

    Args:
        optimizer: the optimiser whose learning rate is scheduled.
        options: ``name`` (constant, cosine or plateau), ``warmup_steps`` (0 turns warmup off) and
            the schedule's own settings: cosine ``eta_min`` (final learning rate) and
            ``decay_steps`` (null: the rest of the run); ``warmup_start_lr`` (set by a
            stage of a multi-stage run: the warmup starts from the previous stage's final rate
            instead of from ``lr / warmup_steps``); plateau ``monitor``, ``factor``,
            ``patience``, ``min_lr``, ``threshold``.
        total_steps: optimiser steps of the whole run (Lightning's ``estimated_stepping_batches``),
            the length of the cosine when ``decay_steps`` is null.
        time_fraction: for a run with a wall-time limit, the share of it used so far (0 to 1);
            the cosine then ends at ``eta_min`` when the time is up, if that comes first.
    Returns:
        Scheduler configs for ``configure_optimizers``, possibly empty.
    """
    options = dict(options)
    name = str(options.pop("name", "constant")).lower()
    warmup_steps = int(options.pop("warmup_steps", 0) or 0)
    start_lr = options.pop("warmup_start_lr", None)
    if name not in SCHEDULES:
        raise ConfigError(f"scheduler.name '{name}': expected one of {', '.join(SCHEDULES)}")
    if warmup_steps < 0:
        raise ConfigError(f"scheduler.warmup_steps {warmup_steps}: expected 0 or more optimiser steps")
    unknown = sorted(set(options) - SETTINGS[name])
    if unknown:  # e.g. an experiment's cosine eta_min left over after scheduler=plateau on the command line
        raise ConfigError(
            f"scheduler={name}: unknown setting(s) {', '.join(unknown)}; drop with "
            + " ".join(f"~scheduler.{key}" for key in unknown)
        )

    if name == "cosine":
        decay_steps = options.pop("decay_steps", None)
        if decay_steps is None:
            if not math.isfinite(total_steps):
                raise ConfigError("scheduler=cosine runs over the whole training: set trainer.max_epochs or scheduler.decay_steps")
            decay_steps = max(int(total_steps) - warmup_steps, 1)
        eta_min = float(options.pop("eta_min", 0.0))
        cosine = _cosine(optimizer, int(decay_steps), eta_min, time_fraction)
        if warmup_steps:
            scheduler = SequentialLR(optimizer, [_warmup(optimizer, warmup_steps, start_lr), cosine], milestones=[warmup_steps])
        else:
            scheduler = cosine
        return [{"scheduler": scheduler, "interval": "step", "name": "lr"}]

    configs = [{"scheduler": _warmup(optimizer, warmup_steps, start_lr), "interval": "step"}] if warmup_steps else []
    if name == "plateau":
        monitor = options.pop("monitor", "val_loss")
        plateau = ReduceLROnPlateau(optimizer, **options)
        configs.append({"scheduler": plateau, "monitor": monitor, "interval": "epoch", "strict": False})
    return configs
