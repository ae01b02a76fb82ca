"""The LightningModule: one student, one weighted loss, metrics in meV units."""

from __future__ import annotations

from typing import Any, Mapping

import pytorch_lightning as pl
import torch
from torch import nn

from ..losses import TotalLoss
from ..metrics import ErrorMetrics
from .schedules import build_schedulers


class StudentModule(pl.LightningModule):
    """Trains ``model`` (a student of :mod:`mlip_distill.models`) on ``loss``.

    Logged every step: ``train_loss`` and each term's raw and weighted value (``train_<term>``,
    ``train_<term>_weighted``), the learning rate. Every epoch: the errors of
    :class:`~mlip_distill.metrics.ErrorMetrics` in meV units over the epoch's training batches
    (``train_forces_rmse_mev_per_A``, ...; weights change during the epoch), and on the
    validation set ``val_loss`` and the same errors prefixed ``val_``.

    Validation runs with the model in eval mode and without parameter gradients, but forces and
    stress still come from autograd, so the trainer must be built with ``inference_mode=False``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: TotalLoss,
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.optimizer_options = dict(optimizer)
        self.scheduler_options = dict(scheduler)
        self.train_metrics = ErrorMetrics()
        self.val_metrics = ErrorMetrics()

    def _predict(self, batch):
        # Hessian-vector products differentiate the forces again by the positions, in
        # validation too, so the force graph must be kept whenever a term needs it.
        second_derivatives = self.loss.requires_position_grad
        if second_derivatives:
            batch.pos.requires_grad_(True)
        return self.model(
            batch,
            compute_forces=True,
            compute_stress=self.loss.needs_stress,
            create_graph=self.training or second_derivatives,
        )

    def training_step(self, batch, batch_idx: int):
        prediction = self._predict(batch)
        total, parts = self.loss(prediction, batch)
        self.train_metrics.update(prediction, batch)
        size = batch.num_graphs
        self.log("train_loss", total.detach(), batch_size=size, prog_bar=True)
        self.log_dict({f"train_{k}": v for k, v in parts.items()}, batch_size=size)
        return total

    def validation_step(self, batch, batch_idx: int) -> None:
        with torch.enable_grad():
            prediction = self._predict(batch)
            total, _ = self.loss(prediction, batch)
        self.log("val_loss", total.detach(), batch_size=batch.num_graphs, prog_bar=True)
        self.val_metrics.update(prediction, batch)

    def on_train_epoch_start(self) -> None:
        self.train_metrics.reset()

    def on_train_epoch_end(self) -> None:
        metrics = self.train_metrics.compute()
        self.log_dict({f"train_{k}": v for k, v in metrics.items()}, sync_dist=True)

    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_metrics.compute()
        self.log_dict({f"val_{k}": v for k, v in metrics.items()}, sync_dist=True)

    def configure_optimizers(self):
        options = dict(self.optimizer_options)
        name = options.pop("name", "adamw").lower()
        optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
        if name not in optimizers:
            raise ValueError(f"optimizer.name '{name}': expected one of {sorted(optimizers)}")
        # the loss's own parameters (feature projection heads) train with the student
        parameters = list(self.model.parameters()) + list(self.loss.parameters())
        optimizer = optimizers[name](parameters, **options)
        schedulers = build_schedulers(optimizer, self.scheduler_options, self.trainer.estimated_stepping_batches)
        return [optimizer], schedulers

