"""Early stopping, and the guard against NaN and infinite losses and gradients."""

from __future__ import annotations

import csv
import logging

import pytest
import pytorch_lightning as pl
import torch

from mlip_distill.training.errors import TrainingDiverged
from mlip_distill.training.run import compose_config, train

TINY = ["model.channels=8", "model.num_layers=1", "model.radial_hidden=16", "trainer.enable_progress_bar=false",
        "data.n_valid=8", "data.batch_size=8", "logger=csv", "scheduler.warmup_steps=2"]


def epochs_run(run_dir) -> int:
    with open(run_dir / "curves.csv") as handle:
        return len(list(csv.DictReader(handle)))


@pytest.mark.parametrize("settings", [
    ["optimizer.lr=0.0", "early_stopping.min_delta=0.0"],  # the metric cannot change
    ["early_stopping.min_delta=1000000.0"],                # it changes, but never by 1e6 meV/Å
])
def test_early_stopping_after_patience_validations_without_improvement(copper_label_file, tmp_path, settings):
    result = train(compose_config([f"data.path={copper_label_file}", f"run_dir={tmp_path}", *TINY,
                                   "trainer.max_epochs=10", "early_stopping.patience=2", *settings]))
    assert epochs_run(result.run_dir) == 3  # the first sets the best, two more without improvement


class Saboteur(pl.Callback):
    """Makes one structure's energy label infinite at the steps in ``bad_labels`` and a gradient
    NaN at the steps in ``bad_gradients``; records whether each step changed the weights."""

    def __init__(self, bad_labels=(), bad_gradients=()):
        self.bad_labels, self.bad_gradients = set(bad_labels), set(bad_gradients)
        self.changed, self.structures = {}, {}

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.before = [p.detach().clone() for p in module.model.parameters()]
        self.structures[trainer.global_step] = batch.structure_id.tolist()
        if trainer.global_step in self.bad_labels:
            batch.energy[1] = float("inf")

    def on_before_optimizer_step(self, trainer, module, optimizer):
        if trainer.global_step in self.bad_gradients:
            next(module.model.parameters()).grad[0] = float("nan")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        after = list(module.model.parameters())
        self.changed[trainer.global_step - 1] = any(not torch.equal(a, b) for a, b in zip(self.before, after))


def test_non_finite_steps_are_skipped_logged_and_training_goes_on(copper_label_file, tmp_path, caplog):
    saboteur = Saboteur(bad_labels={1}, bad_gradients={3})
    with caplog.at_level(logging.WARNING, logger="mlip_distill.training"):
        result = train(compose_config([f"data.path={copper_label_file}", f"run_dir={tmp_path}", *TINY,
                                       "trainer.max_epochs=2", "ema.enabled=false"]), callbacks=[saboteur])
    assert saboteur.changed == {0: True, 1: False, 2: True, 3: False, 4: True, 5: True, 6: True, 7: True}
    messages = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    assert len(messages) == 2
    ids = ", ".join(map(str, saboteur.structures[1]))
    assert messages[0].startswith("step 1: non-finite loss (loss 'energy'") and f"[{ids}]" in messages[0]
    assert messages[1].startswith("step 3: non-finite gradient of model.") and "step skipped" in messages[1]
    with open(result.run_dir / "metrics.csv") as handle:
        counts = [float(row["nonfinite_steps"]) for row in csv.DictReader(handle) if row.get("nonfinite_steps")]
    assert counts == [2.0, 2.0]


def test_consecutive_non_finite_steps_stop_training_with_a_diagnosis(copper_label_file, tmp_path):
    saboteur = Saboteur(bad_labels=range(2, 100))
    with pytest.raises(TrainingDiverged) as caught:
        train(compose_config([f"data.path={copper_label_file}", f"run_dir={tmp_path}", *TINY,
                              "trainer.max_epochs=5", "guards.max_nonfinite_steps=3"]), callbacks=[saboteur])
    message = str(caught.value)
    assert "3 consecutive steps" in message and "loss 'energy'" in message
    assert f"structures [{', '.join(map(str, saboteur.structures[4]))}]" in message
    assert "hint: lower optimizer.lr" in message
    assert len(message.splitlines()) == 1
