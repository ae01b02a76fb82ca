"""Exponential moving average (EMA) of the student's weights, swapped in for validation,
testing and export."""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch


class WeightAverage(pl.Callback):
    """Keeps ``average = decay * average + (1 - decay) * weights`` after every optimiser step.

    The decay rises as ``min(decay, (1 + n) / (10 + n))`` over the first n updates, so that a
    short run's average is not dominated by the random initial weights. The average of the
    student's parameters (``module.model``) replaces them during validation and testing, and is
    what a run exports; its state (average, update count) is saved in checkpoints under ``ema``.

    Args:
        decay: the long-run decay per step; 0.999 averages over about 1,000 steps.
    """

    state_key = "ema"

    def __init__(self, decay: float = 0.999) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema.decay {decay}: expected 0 <= decay < 1")
        self.decay = float(decay)
        self.average: dict[str, torch.Tensor] | None = None
        self.updates = 0
        self.last_step = 0
        self.swapped = False

    def _parameters(self, module: pl.LightningModule) -> dict[str, torch.nn.Parameter]:
        return dict(module.model.named_parameters())

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        parameters = self._parameters(module)
        if self.average is None:  # not restored from a checkpoint
            self.average = {name: p.detach().clone() for name, p in parameters.items()}
            self.last_step = trainer.global_step
        else:
            self.average = {name: self.average[name].to(p.device, p.dtype) for name, p in parameters.items()}

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.last_step:  # accumulating gradients: no step taken
            return
        self.last_step = trainer.global_step
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        with torch.no_grad():
            for name, parameter in self._parameters(module).items():
                self.average[name].lerp_(parameter.detach(), 1.0 - decay)

    def swap(self, module: pl.LightningModule) -> None:
        """Exchange the model's weights and the average (a second call swaps back)."""
        if self.average is None:
            raise RuntimeError("WeightAverage.swap before the average was set up (on_fit_start)")
        with torch.no_grad():
            for name, parameter in self._parameters(module).items():
                kept = parameter.detach().clone()
                parameter.copy_(self.average[name])
                self.average[name].copy_(kept)
        self.swapped = not self.swapped

    def on_validation_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if self.swapped:
            raise RuntimeError("validation started with the averaged weights already swapped in")
        self.swap(module)

    def on_validation_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        # swapped back before checkpoints are written, so they hold the training weights
        self.swap(module)

    on_test_epoch_start = on_validation_epoch_start
    on_test_epoch_end = on_validation_epoch_end

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "last_step": self.last_step,
                "average": {k: v.detach().cpu() for k, v in (self.average or {}).items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates, self.last_step = int(state["updates"]), int(state["last_step"])
        self.average = {k: v.clone() for k, v in state["average"].items()}
