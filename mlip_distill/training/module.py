"""The LightningModule: one student, one weighted loss, metrics in meV units."""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import Any, Iterator, Mapping

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Timer
import torch
from torch import Tensor, nn

from ..losses import TotalLoss
from ..losses.base import NonFiniteLossError
from ..metrics import ErrorMetrics
from .guards import GradientNormWatch, LossScaleWatch, NonFiniteGuard
from .schedules import build_schedulers

log = logging.getLogger("mlip_distill.training")

HALF = (torch.float16, torch.bfloat16)


def _to_float32(values: Any) -> Any:
    """Half-precision tensors of a prediction (nested dicts too) as float32; others unchanged."""
    if isinstance(values, Tensor):
        return values.float() if values.dtype in HALF else values
    if isinstance(values, Mapping):
        return {key: _to_float32(value) for key, value in values.items()}
    return values


@contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters of ``module`` without ``requires_grad`` inside the block: autograd then builds
    only the graph to the positions (forces, stress), not to the weights."""
    parameters = [p for p in module.parameters() if p.requires_grad]
    for parameter in parameters:
        parameter.requires_grad_(False)
    try:
        yield
    finally:
        for parameter in parameters:
            parameter.requires_grad_(True)


class StudentModule(pl.LightningModule):
    """Trains ``model`` (a student of :mod:`mlip_distill.models`) on ``loss``.

    Logged every step: ``train_loss`` and each term's raw and weighted value (``train_<term>``,
    ``train_<term>_weighted``), the learning rate ``lr``, the gradient norm before clipping
    ``grad_norm`` and, under float16, the gradient scaler's ``loss_scale``. Every epoch: the
    errors of :class:`~mlip_distill.metrics.ErrorMetrics` in meV units over the epoch's training
    batches (``train_forces_rmse_mev_per_A``, ...; weights change during the epoch), the count of
    skipped steps ``nonfinite_steps``, and on the validation set ``val_loss`` and the same errors
    prefixed ``val_``.

    Losses are computed in float32 (or float64) outside autocast, whatever the precision of the
    forward pass. A step whose loss or gradient is NaN or infinite is skipped and logged with the
    structures of its batch; ``guards.max_nonfinite_steps`` in a row stop training
    (:class:`~mlip_distill.training.errors.TrainingDiverged`).

    Validation runs with the model in eval mode and without parameter gradients, but forces and
    stress still come from autograd, so the trainer must be built with ``inference_mode=False``.

    Args:
        guards: ``grad_norm_range`` ([low, high]), ``grad_norm_patience`` (steps),
            ``max_nonfinite_steps``, ``loss_scale_falls``; see ``configs/train.yaml``.
    """

    def __init__(
        self,
        model: nn.Module,
        loss: TotalLoss,
        optimizer: Mapping[str, Any],
        scheduler: Mapping[str, Any],
        guards: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.loss = loss
        self.optimizer_options = dict(optimizer)
        self.scheduler_options = dict(scheduler)
        self.train_metrics = ErrorMetrics()
        self.val_metrics = ErrorMetrics()
        guards = dict(guards or {})
        low, high = guards.get("grad_norm_range", (0.1, 10.0))
        self.grad_norm_watch = GradientNormWatch(low, high, guards.get("grad_norm_patience", 100))
        self.loss_scale_watch = LossScaleWatch(guards.get("loss_scale_falls", 8))
        self.nonfinite = NonFiniteGuard(guards.get("max_nonfinite_steps", 10))
        self._step_structures: list[int] = []

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

    def _loss(self, prediction, batch):
        with torch.autocast(device_type=batch.pos.device.type, enabled=False):
            return self.loss(_to_float32(prediction), batch)

    def _structure_ids(self, batch) -> list[int]:
        ids = batch.structure_id if "structure_id" in batch else torch.arange(batch.num_graphs)
        return [int(i) for i in ids]

    def training_step(self, batch, batch_idx: int):
        self._step_structures.extend(self._structure_ids(batch))
        prediction = self._predict(batch)
        try:
            total, parts = self._loss(prediction, batch)
            if not torch.isfinite(total):
                raise NonFiniteLossError(f"total loss {float(total)}")
        except NonFiniteLossError as err:
            # returning None makes Lightning skip backward and the optimiser's update
            self.nonfinite.bad_step(self.global_step, f"loss ({err})", self._structure_ids(batch), self._hint())
            return None
        self.train_metrics.update(prediction, batch)
        size = batch.num_graphs
        self.log("train_loss", total.detach(), batch_size=size, prog_bar=True)
        self.log_dict({f"train_{k}": v for k, v in parts.items()}, batch_size=size)
        return total

    def _grad_scaler(self):
        return getattr(self.trainer.precision_plugin, "scaler", None)

    def _hint(self) -> str:
        scaler = self._grad_scaler()
        return f" (float16 loss scale {scaler.get_scale():g}: or use precision=bf16-mixed)" if scaler else ""

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradient norm before clipping, learning rate and loss scale; the non-finite guard."""
        structures, self._step_structures = self._step_structures, []
        named = [(n, p) for n, p in self.named_parameters() if p.grad is not None]
        self.log("lr", optimizer.param_groups[0]["lr"])
        scaler = self._grad_scaler()
        if scaler is not None:
            scale = float(scaler.get_scale())
            self.log("loss_scale", scale)
            self._warn(self.loss_scale_watch.update(scale, self.global_step))
        if not named:  # every batch of this step was skipped
            return
        norm = float(torch.nn.utils.get_total_norm([p.grad for _, p in named]))
        if math.isfinite(norm):
            self.nonfinite.good_step()
            self.log("grad_norm", norm)
            self._warn(self.grad_norm_watch.update(norm, self.global_step))
        elif scaler is None:  # a float16 scaler skips such steps itself and lowers its scale
            bad = [n for n, p in named if not bool(torch.isfinite(p.grad).all())]
            for _, parameter in named:
                parameter.grad = None
            what = f"gradient of {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}"
            self.nonfinite.bad_step(self.global_step, what, structures, self._hint())

    def _warn(self, message: str | None) -> None:
        if message and self.trainer.is_global_zero:
            log.warning(message)

    def validation_step(self, batch, batch_idx: int) -> None:
        with torch.enable_grad(), frozen(self):
            prediction = self._predict(batch)
            total, _ = self._loss(prediction, batch)
        self.log("val_loss", total.detach(), batch_size=batch.num_graphs, prog_bar=True, sync_dist=True)
        self.val_metrics.update(prediction, batch)

    def on_train_epoch_start(self) -> None:
        self.train_metrics.reset()

    def on_train_epoch_end(self) -> None:
        metrics = self.train_metrics.compute(all_processes=True)
        self.log_dict({f"train_{k}": v for k, v in metrics.items()})
        self.log("nonfinite_steps", float(self.nonfinite.total))

    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_metrics.compute(all_processes=True)
        self.log_dict({f"val_{k}": v for k, v in metrics.items()})

    def configure_optimizers(self):
        options = dict(self.optimizer_options)
        name = options.pop("name", "adamw").lower()
        optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
        if name not in optimizers:
            raise ValueError(f"optimizer.name '{name}': expected one of {sorted(optimizers)}")
        # the loss's own parameters (feature projection heads) train with the student
        parameters = list(self.model.parameters()) + list(self.loss.parameters())
        optimizer = optimizers[name](parameters, **options)
        schedulers = build_schedulers(
            optimizer, self.scheduler_options, self.trainer.estimated_stepping_batches, self._time_fraction()
        )
        return [optimizer], schedulers

    def _time_fraction(self):
        """The share of the run's wall-time limit used so far, or None without a limit. Read
        from Lightning's Timer, whose elapsed time a resumed run restores from the checkpoint."""
        timers = [callback for callback in self.trainer.callbacks if isinstance(callback, Timer)]
        if not timers:
            return None
        timer = timers[0]

        def fraction() -> float:
            elapsed, remaining = timer.time_elapsed("train"), timer.time_remaining("train")
            return elapsed / (elapsed + remaining) if remaining is not None and elapsed + remaining > 0 else 0.0

        return fraction
