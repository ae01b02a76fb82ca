"""Gradient clipping, the gradient norm before clipping, and the warnings of the watches."""

from __future__ import annotations

import csv
import logging

import pytest
import pytorch_lightning as pl
import torch

from mlip_distill.training.guards import GradientNormWatch, LossScaleWatch
from mlip_distill.training.run import compose_config, train

TINY = ["model.channels=8", "model.num_layers=1", "model.radial_hidden=16", "trainer.enable_progress_bar=false",
        "data.n_valid=8", "data.batch_size=8", "scheduler.warmup_steps=2", "logger=csv"]


class ClippedNorms(pl.Callback):
    """The gradient norm each optimiser step actually used (after clipping)."""

    def __init__(self):
        self.norms = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        self.norms.append(float(torch.nn.utils.get_total_norm(grads)))


def test_gradient_norm_is_logged_every_step_before_clipping(copper_label_file, tmp_path, caplog):
    clip = 1e-3
    probe = ClippedNorms()
    with caplog.at_level(logging.WARNING, logger="mlip_distill.training"):
        result = train(compose_config([
            f"data.path={copper_label_file}", f"run_dir={tmp_path}", "trainer.max_epochs=2", *TINY,
            "trainer.log_every_n_steps=1", f"trainer.gradient_clip_val={clip}",
            "guards.grad_norm_range=[1000.0,10000.0]", "guards.grad_norm_patience=3",
        ]), callbacks=[probe])
    with open(result.run_dir / "metrics.csv") as handle:
        logged = [float(row["grad_norm"]) for row in csv.DictReader(handle) if row.get("grad_norm")]
    assert len(logged) == len(probe.norms) == 8  # 32 training structures / 8 per batch, 2 epochs
    assert all(norm <= clip * (1 + 1e-4) for norm in probe.norms)  # clipped
    assert min(logged) > 10 * clip  # logged before clipping
    # the norm stayed below [1000, 10000] for 8 steps: one warning, after 3 of them
    warnings = [r.getMessage() for r in caplog.records if "gradient norm below" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("step 2:")


def test_gradient_norm_watch_warns_once_per_excursion():
    watch = GradientNormWatch(0.1, 10.0, patience=3)
    seen = [watch.update(norm, step) for step, norm in enumerate([1, 20, 30, 40, 50, 1, 0.01, 0.01, 0.01])]
    assert [k for k, message in enumerate(seen) if message] == [3, 8]
    assert "above" in seen[3] and "below" in seen[8]
    with pytest.raises(ValueError):
        GradientNormWatch(1.0, 0.5)


def test_loss_scale_watch_warns_when_the_scale_keeps_falling():
    watch = LossScaleWatch(falls=3)
    scales = [65536, 32768, 32768, 65536, 32768, 16384, 8192, 4096]  # a rise resets the count
    seen = [watch.update(scale, step) for step, scale in enumerate(scales)]
    assert [k for k, message in enumerate(seen) if message] == [6]
    assert "8192" in seen[6]
