"""Training with the distillation terms: each runs end to end from a label file."""

from __future__ import annotations

import csv
import warnings

from mlip_distill.models import build_model
from mlip_distill.package import save_potential
from mlip_distill.teachers import label_file, load_teacher
from mlip_distill.training.run import compose_config, train
from conftest import emt_copper_cells

TINY = ["model.channels=8", "model.num_layers=2", "model.radial_hidden=16", "trainer.enable_progress_bar=false",
        "trainer.max_epochs=2", "data.n_valid=4", "data.batch_size=4", "trainer.log_every_n_steps=1"]


def structures_file(tmp_path, n=16):
    from ase.io import write

    cells = emt_copper_cells(n)
    for k, atoms in enumerate(cells):
        atoms.calc = None
        atoms.info["system_id"] = k % 4  # four systems of four conformers
    path = tmp_path / "cells.xyz"
    write(path, cells)
    return path


def last_value(run_dir, column: str) -> float:
    with open(run_dir / "metrics.csv") as handle:
        return [float(row[column]) for row in csv.DictReader(handle) if row.get(column)][-1]


def test_hessian_matching_trains_on_finite_difference_products(tmp_path):
    labels = tmp_path / "labels.h5"
    label_file(structures_file(tmp_path), load_teacher("emt"), labels, progress=False, hvp_probes=1)
    result = train(compose_config([f"data.path={labels}", f"run_dir={tmp_path / 'run'}", "loss=distill_hessian", *TINY]))
    assert last_value(result.run_dir, "val_loss") > 0
    assert last_value(result.run_dir, "train_hessian_weighted") > 0
    assert result.metrics["forces_rmse_mev_per_A"] > 0


def test_feature_matching_trains_against_a_potential_teacher(tmp_path):
    teacher = build_model("nequip", elements=[29], cutoff=4.0, channels=4, num_layers=2, e0={29: -0.3})
    package = save_potential(teacher, "nequip", tmp_path / "teacher")
    labels = tmp_path / "labels.h5"
    label_file(structures_file(tmp_path), load_teacher(f"potential:{package}"), labels, progress=False,
               features=("layer_1",))
    result = train(compose_config([f"data.path={labels}", f"run_dir={tmp_path / 'run'}", "loss=distill_features",
                                   "model.cutoff=4.0", *TINY]))
    assert last_value(result.run_dir, "train_features") > 0
    exported = (result.potential_dir / "weights.safetensors").read_bytes()
    assert b"projection" not in exported  # the projection heads stay with the loss


def test_soft_targets_train_with_conformers_grouped(tmp_path):
    labels = tmp_path / "labels.h5"
    label_file(structures_file(tmp_path), load_teacher("emt"), labels, progress=False)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = train(compose_config([f"data.path={labels}", f"run_dir={tmp_path / 'run'}",
                                       "loss=distill_soft_targets", "data.conformers_per_system=2", *TINY]))
    assert not [w for w in record if "one structure per system" in str(w.message)]
    assert last_value(result.run_dir, "train_boltzmann_kl") > 0
