"""Small training callbacks."""

from __future__ import annotations

import time

import pytorch_lightning as pl


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
