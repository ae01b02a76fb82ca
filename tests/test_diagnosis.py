"""End-of-run diagnosis on synthetic curves: each pathology is found, with its suggestion, and a
healthy run is left alone."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from mlip_distill.training.diagnosis import diagnose, diagnose_run, read_curves

EPOCHS = np.arange(30, dtype=float)
NOISE = 1.0 + 0.005 * np.random.default_rng(0).standard_normal(len(EPOCHS))


def write_curves(run_dir, **columns):
    """``curves.csv`` with one row per epoch, as the training run writes it."""
    names = ["epoch", "step", *columns]
    with open(run_dir / "curves.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(names)
        for epoch in range(len(EPOCHS)):
            writer.writerow([epoch, 10 * (epoch + 1), *(values[epoch] for values in columns.values())])
    return run_dir


def healthy(**changes):
    columns = {
        "lr": np.full(len(EPOCHS), 1e-3),
        "train_loss": 10.0 * np.exp(-EPOCHS / 10) * NOISE,
        "train_energy": 2.0 * np.exp(-EPOCHS / 10) * NOISE,
        "train_energy_weighted": 2.0 * np.exp(-EPOCHS / 10) * NOISE,
        "train_forces": 8.0 * np.exp(-EPOCHS / 10) * NOISE,
        "train_forces_weighted": 8.0 * np.exp(-EPOCHS / 10) * NOISE,
        "val_forces_rmse_mev_per_A": (100.0 * np.exp(-EPOCHS / 15) + 10.0) * NOISE,
    }
    return {**columns, **changes}


def kinds(diagnosis):
    return [finding.kind for finding in diagnosis.findings]


def test_healthy_run_has_no_findings(tmp_path):
    diagnosis = diagnose_run(write_curves(tmp_path, **healthy()))
    assert diagnosis.healthy, diagnosis.summary()
    assert diagnosis.epochs == 30 and diagnosis.metric == "val_forces_rmse_mev_per_A"
    assert diagnosis.best_epoch == 29 and diagnosis.best == pytest.approx(diagnosis.last)
    assert "no divergence, plateau or overfitting" in diagnosis.summary()


def test_divergence_is_found_and_points_at_the_learning_rate(tmp_path):
    loss = 10.0 * np.exp(-EPOCHS / 10)
    loss[20:] = loss[19] * np.exp(np.arange(1, 11))  # blows up from epoch 20
    diagnosis = diagnose_run(write_curves(tmp_path, **healthy(train_loss=loss, lr=np.full(30, 0.02))))
    assert kinds(diagnosis) == ["divergence"]
    finding = diagnosis.findings[0]
    assert "epoch 19" in finding.evidence
    assert "optimizer.lr" in finding.suggestion and "0.02" in finding.suggestion


def test_a_non_finite_loss_is_divergence(tmp_path):
    loss = 10.0 * np.exp(-EPOCHS / 10)
    loss[25:] = np.inf
    diagnosis = diagnose_run(write_curves(tmp_path, **healthy(train_loss=loss)))
    assert kinds(diagnosis) == ["divergence"] and "epoch 25" in diagnosis.findings[0].evidence


@pytest.mark.parametrize("final_lr, advice", [(1e-3, "lower the learning rate"), (1e-7, "larger student")])
def test_plateau_advice_depends_on_the_learning_rate(tmp_path, final_lr, advice):
    validation = np.where(EPOCHS < 8, 100.0 - 8 * EPOCHS, 36.0) * NOISE
    lr = np.geomspace(1e-3, final_lr, len(EPOCHS))
    diagnosis = diagnose_run(write_curves(tmp_path, **healthy(val_forces_rmse_mev_per_A=validation, lr=lr)))
    assert kinds(diagnosis) == ["plateau"]
    assert advice in diagnosis.findings[0].suggestion


def test_overfitting_is_validation_rising_while_training_falls(tmp_path):
    validation = np.where(EPOCHS < 12, 100.0 - 5 * EPOCHS, 45.0 + 1.5 * (EPOCHS - 12)) * NOISE
    diagnosis = diagnose_run(write_curves(tmp_path, **healthy(val_forces_rmse_mev_per_A=validation)))
    assert kinds(diagnosis) == ["overfitting"]
    assert diagnosis.best_epoch in (11, 12, 13)
    assert "on-policy" in diagnosis.findings[0].suggestion


def test_rising_validation_with_rising_training_is_not_overfitting(tmp_path):
    validation = np.where(EPOCHS < 12, 100.0 - 5 * EPOCHS, 45.0 + 1.5 * (EPOCHS - 12))
    loss = np.where(EPOCHS < 12, 10.0 - 0.5 * EPOCHS, 4.0 + 0.05 * (EPOCHS - 12))
    diagnosis = diagnose_run(write_curves(tmp_path, **healthy(val_forces_rmse_mev_per_A=validation, train_loss=loss)))
    assert "overfitting" not in kinds(diagnosis)


def test_a_stalled_loss_term_asks_for_a_larger_weight(tmp_path):
    stalled = np.full(len(EPOCHS), 2.0) * NOISE
    diagnosis = diagnose_run(write_curves(tmp_path, **healthy(train_energy=stalled)))
    assert kinds(diagnosis) == ["stalled term"]
    assert "loss.energy.weight" in diagnosis.findings[0].suggestion


def test_too_few_epochs_are_not_judged():
    curves = {"train_loss": np.array([3.0, 2.0]), "val_loss": np.array([3.0, 3.5])}
    diagnosis = diagnose(curves)
    assert diagnosis.healthy and "trends not judged" in diagnosis.summary()


def test_lightning_metrics_csv_is_read_per_epoch(tmp_path):
    """Without curves.csv, Lightning's step-wise rows are averaged per epoch."""
    header = ["epoch", "lr-AdamW", "step", "train_loss", "val_loss"]
    rows = [
        ["", "0.005", "9", "", ""], ["0", "", "9", "4.0", ""], ["0", "", "19", "2.0", ""], ["0", "", "19", "", "2.5"],
        ["", "0.004", "29", "", ""], ["1", "", "29", "1.0", ""], ["1", "", "39", "", "1.5"],
    ]
    with open(tmp_path / "metrics.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    curves = read_curves(tmp_path)
    np.testing.assert_allclose(curves["epoch"], [0, 1])
    np.testing.assert_allclose(curves["train_loss"], [3.0, 1.0])
    np.testing.assert_allclose(curves["val_loss"], [2.5, 1.5])
    np.testing.assert_allclose(curves["lr"], [0.005, 0.004])


def test_a_run_without_curves_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no curves.csv or metrics.csv"):
        read_curves(tmp_path)
