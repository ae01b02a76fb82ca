"""Data parallelism: ``trainer.strategy=ddp trainer.devices=2`` on the CPU (gloo), each process with
half the batch, trains the same model as one process with the whole batch.

The cells have 4 and 8 atoms, so the two processes hold different numbers of atoms in a step:
averaging each process's own mean force error would weight them wrongly (the loss reduces by
the atom count over all processes instead, see :mod:`mlip_distill.losses.base`).
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from conftest import emt_copper_cells, write_label_file

SETTINGS = [
    "model.channels=8", "model.num_layers=1", "model.radial_hidden=16", "trainer.enable_progress_bar=false",
    "data.n_valid=8", "trainer.max_epochs=2", "scheduler=constant", "scheduler.warmup_steps=0",
    "optimizer.lr=0.01", "logger=csv",
]


def train(tmp_path, name: str, *overrides: str):
    """Run ``mlip-distill train`` in a fresh process; the student's weights and the last
    epoch's validation force RMSE (meV/Å)."""
    run_dir = tmp_path / name
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "mlip_distill.cli", "train", *SETTINGS, f"run_dir={run_dir}", *overrides],
        cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    with open(run_dir / "metrics.csv") as handle:
        errors = [row["val_forces_rmse_mev_per_A"] for row in csv.DictReader(handle) if row.get("val_forces_rmse_mev_per_A")]
    return {key: value for key, value in state.items() if value.is_floating_point()}, float(errors[-1])


def relative_difference(first: dict, second: dict) -> float:
    squared = sum(float((first[key].double() - second[key].double()).square().sum()) for key in first)
    norm = sum(float(first[key].double().square().sum()) for key in first)
    return (squared / norm) ** 0.5


def test_two_processes_train_the_same_model_as_one(tmp_path):
    cells = emt_copper_cells(12, repeat=(1, 1, 1), seed=1) + emt_copper_cells(12, repeat=(2, 1, 1), seed=2)
    data = f"data.path={write_label_file(tmp_path / 'mixed.h5', cells)}"
    one, one_error = train(tmp_path, "one", data, "data.batch_size=8")
    two, two_error = train(tmp_path, "two", data, "data.batch_size=4", "trainer.strategy=ddp", "trainer.devices=2")
    other, _ = train(tmp_path, "other_batches", data, "data.batch_size=4")
    assert one.keys() == two.keys()
    difference = relative_difference(one, two)
    assert difference < 1e-5
    # the tolerance is meaningful: another split of the data into steps gives another model
    assert relative_difference(one, other) > 100 * max(difference, 1e-6)
    # validation errors are summed over the processes, not averaged per process
    assert two_error == pytest.approx(one_error, rel=1e-5)
