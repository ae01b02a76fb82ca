"""Run folders, loggers (CSV, TensorBoard, W&B offline) and the learning curves."""

from __future__ import annotations

import csv
import re

import pytest

from mlip_distill.training.curves import plot_curves, write_curves_csv
from mlip_distill.training.run import compose_config, train

TINY = ["model.channels=8", "model.num_layers=1", "model.radial_hidden=16", "trainer.enable_progress_bar=false",
        "data.n_valid=8", "data.batch_size=8", "scheduler.warmup_steps=2", "trainer.log_every_n_steps=1"]


@pytest.fixture(scope="module")
def logged_run(copper_label_file, tmp_path_factory):
    """A run in a fresh working directory, with every logger, and no run_dir given."""
    folder = tmp_path_factory.mktemp("cwd")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.delenv("WANDB_MODE", raising=False)
        patch.setenv("WANDB_API_KEY", "")  # no credentials: anything but offline would fail
        result = train(compose_config([f"data.path={copper_label_file}", "experiment_name=logs", *TINY,
                                       "trainer.max_epochs=3", "logger=[tensorboard,wandb]"]))
    assert not result.run_dir.is_absolute()
    result.run_dir, result.potential_dir = folder / result.run_dir, folder / result.potential_dir
    return folder, result


def test_run_folder_is_named_by_experiment_date_and_id(logged_run):
    folder, result = logged_run
    assert result.run_dir.parent == folder / "runs" / "logs"
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{6}", result.run_dir.name)
    for name in ("config.yaml", "metrics.csv", "curves.csv", "curves.png", "checkpoints/last.ckpt",
                 "potential/potential.json", "potential/curves.csv"):
        assert (result.run_dir / name).is_file(), name


def test_curves_have_one_row_per_epoch_with_every_column(logged_run):
    _, result = logged_run
    with open(result.run_dir / "curves.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [0, 1, 2]
    assert [int(row["step"]) for row in rows] == [4, 8, 12]
    columns = list(rows[0])
    assert columns[:5] == ["epoch", "step", "lr", "grad_norm", "train_loss"]
    for column in ("train_energy", "train_forces", "val_loss", "val_forces_rmse_mev_per_A", "val_energy_mae_mev_per_atom"):
        assert column in columns
    assert all(float(row[c]) > 0 for row in rows for c in columns if c != "epoch")
    # lr is the epoch's mean: rising through the 2-step warmup, then constant
    assert float(rows[0]["lr"]) < float(rows[1]["lr"]) == pytest.approx(float(rows[2]["lr"]))
    assert (result.run_dir / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_tensorboard_has_the_step_and_epoch_metrics(logged_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, result = logged_run
    events = EventAccumulator(str(result.run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train_loss", "grad_norm", "lr", "val_forces_rmse_mev_per_A"} <= tags
    assert len(events.Scalars("grad_norm")) == 12  # every step


def test_wandb_wrote_an_offline_run(logged_run):
    _, result = logged_run
    runs = list((result.run_dir / "wandb").glob(f"offline-run-*-{result.run_dir.name}"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))


def test_curves_from_rows_with_gaps(tmp_path):
    rows = [{"epoch": 0, "step": 5, "lr": 1e-3, "train_loss": 2.0},
            {"epoch": 1, "step": 10, "lr": 1e-3, "train_loss": 1.0, "val_loss": 1.5}]
    written = list(csv.DictReader(open(write_curves_csv(rows, tmp_path / "curves.csv"))))
    assert written[0]["val_loss"] == "" and written[1]["val_loss"] == "1.5" and written[1]["step"] == "10"
    assert plot_curves(rows, tmp_path / "curves.png").stat().st_size > 1000
