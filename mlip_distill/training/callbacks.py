"""Small training callbacks."""

from __future__ import annotations

import time
from typing import Mapping

import pytorch_lightning as pl

from ..losses import TotalLoss


class EpochSummary(pl.Callback):
    """Prints one line per epoch: losses, errors in meV units, learning rate, time."""

    def on_train_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.start = time.perf_counter()

    # Validation runs inside the training epoch, so at its end both sets of metrics are current.
    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {key: float(value) for key, value in trainer.callback_metrics.items()}
        parts = [f"epoch {trainer.current_epoch:>3}"]
        for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
            if key in metrics:
                parts.append(f"{label} {metrics[key]:.4g}")
        for key, label, unit in (
            ("val_energy_rmse_mev_per_atom", "E", "meV/atom"),
            ("val_forces_rmse_mev_per_A", "F", "meV/Å"),
            ("val_stress_rmse_mev_per_A3", "S", "meV/Å³"),
        ):
            if key in metrics:
                parts.append(f"{label} {metrics[key]:.2f} {unit}")
        learning_rate = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        parts.append(f"lr {learning_rate:.2g}")
        parts.append(f"{time.perf_counter() - self.start:.0f} s")
        print("  ".join(parts), flush=True)


class LossWeightRamp(pl.Callback):
    """Moves each loss term's weight linearly from ``start`` to the weight ``loss`` was built
    with over the first ``steps`` optimiser steps, and logs it as ``weight_<term>``.

    A term absent from ``start`` ramps up from zero. The weights follow the trainer's step, so a
    resumed run continues the ramp where the killed one was.

    Args:
        loss: the module's loss; its weights are changed in place.
        start: ``{term name: weight}`` at step 0, e.g. the previous stage's final weights.
        steps: optimiser steps of the ramp; 0 uses the final weights from the start.
    """

    def __init__(self, loss: TotalLoss, start: Mapping[str, float], steps: int) -> None:
        self.loss = loss
        self.start = {term.name: float(start.get(term.name, 0.0)) for term in loss.terms}
        self.end = {term.name: weight for term, weight in zip(loss.terms, loss.weights)}
        self.steps = int(steps)

    def _set(self, step: int) -> None:
        fraction = min(step / self.steps, 1.0) if self.steps > 0 else 1.0
        for index, term in enumerate(self.loss.terms):
            start, end = self.start[term.name], self.end[term.name]
            self.loss.weights[index] = start + fraction * (end - start)

    def on_fit_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._set(trainer.global_step)  # validation before the first step sees the starting weights

    def on_train_batch_start(self, trainer: pl.Trainer, module: pl.LightningModule, batch, batch_idx: int) -> None:
        self._set(trainer.global_step)
        for term, weight in zip(self.loss.terms, self.loss.weights):
            module.log(f"weight_{term.name}", weight, batch_size=batch.num_graphs)
