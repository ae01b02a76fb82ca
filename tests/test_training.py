"""`mlip-distill train`: a short real run writes a complete run folder and a usable potential."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from ase.calculators.fd import calculate_numerical_forces

from mlip_distill.calculator import StudentCalculator
from mlip_distill.training.checkpoint import model_state_from_checkpoint
from mlip_distill.training.run import compose_config, train
from conftest import emt_copper_cells

TINY = ["model.channels=8", "model.num_layers=1", "model.radial_hidden=16", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def short_run(copper_label_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    config = compose_config(
        [f"data.path={copper_label_file}", f"run_dir={run_dir}", "trainer.max_epochs=6", "data.n_valid=8", *TINY]
    )
    return train(config)


def read_metrics(run_dir):
    with open(run_dir / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def test_run_folder_is_complete(short_run):
    run_dir = short_run.run_dir
    for name in ("config.yaml", "metrics.csv", "checkpoints/best.ckpt", "checkpoints/last.ckpt",
                 "potential/weights.safetensors", "potential/potential.json"):
        assert (run_dir / name).is_file(), name
    columns = read_metrics(run_dir)[0].keys()
    for column in ("train_loss", "train_forces", "train_forces_weighted", "train_forces_rmse_mev_per_A",
                   "val_forces_rmse_mev_per_A",
                   "val_energy_mae_mev_per_atom", "val_loss"):
        assert column in columns
    assert not list(run_dir.rglob("*.tmp"))


def test_training_lowers_the_validation_error(short_run):
    rows = [r for r in read_metrics(short_run.run_dir) if r.get("val_forces_rmse_mev_per_A")]
    errors = [float(r["val_forces_rmse_mev_per_A"]) for r in rows]
    assert len(errors) == 6  # one per epoch
    assert min(errors[1:]) < errors[0]
    assert short_run.metrics["forces_rmse_mev_per_A"] == pytest.approx(min(errors), rel=1e-4)


def test_checkpoint_loads_without_unpickling(short_run):
    state = model_state_from_checkpoint(short_run.run_dir / "checkpoints" / "best.ckpt")
    assert any(key.startswith("scale_shift") for key in state)


def test_exported_potential_runs_in_ase_with_exact_forces(short_run):
    atoms = emt_copper_cells(1, seed=7)[0]
    atoms.calc = StudentCalculator(short_run.potential_dir, dtype="float64")
    forces = atoms.get_forces()
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=1e-5), atol=1e-5 * np.abs(forces).max())


def test_user_config_dir_is_searched_first(copper_label_file, tmp_path):
    experiments = tmp_path / "configs" / "experiment"
    experiments.mkdir(parents=True)
    (experiments / "mine.yaml").write_text("# @package _global_\nexperiment_name: mine\ntrainer:\n  max_epochs: 1\n")
    config = compose_config(["experiment=mine", f"data.path={copper_label_file}"], config_dir=tmp_path / "configs")
    assert config.experiment_name == "mine" and config.trainer.max_epochs == 1
    assert config.model.name == "nequip"  # packaged groups are still found


def test_refit_e0_removes_a_constant_energy_offset(copper_label_file):
    import torch
    from torch_geometric.loader import DataLoader

    from mlip_distill.data.dataset import GraphDataset
    from mlip_distill.models import build_model
    from mlip_distill.training.calibration import refit_e0

    torch.manual_seed(0)
    model = build_model("painn", elements=[29], cutoff=4.0, e0={29: -2.0}, channels=4, num_layers=1)
    loader = DataLoader(GraphDataset(copper_label_file, "teacher", 4.0), batch_size=8)

    def mean_error():
        errors = [(model(b, compute_forces=False)["energy"] - b.energy) / b.n_atoms for b in loader]
        return torch.cat(errors).mean().item()

    assert abs(mean_error()) > 1.0  # E0 of -2 eV is far from EMT copper
    refit_e0(model, loader)
    assert abs(mean_error()) < 1e-6
    assert model.hyperparameters()["e0"]["29"] == model.e0[29]


def test_refit_e0_from_isolated_atoms_on_frames_of_one_molecule(tmp_path):
    """Frames of one composition cannot tell H from O: the fit alone spreads an absolute-energy
    offset over both elements; started from the labels' isolated atoms, each E0 stays near its own."""
    import torch
    from ase.build import molecule
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator
    from torch_geometric.loader import DataLoader

    from conftest import write_label_file
    from mlip_distill.data.dataset import GraphDataset
    from mlip_distill.models import build_model
    from mlip_distill.training.calibration import refit_e0

    isolated = {1: -13.6, 8: -2041.0}  # a DFT code's absolute isolated-atom energies, eV
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(12):
        water = molecule("H2O", vacuum=4.0)
        water.positions += rng.normal(0.0, 0.03, water.positions.shape)
        water.calc = EMT()
        energy = water.get_potential_energy() + 2 * isolated[1] + isolated[8]
        water.calc = SinglePointCalculator(water, energy=energy, forces=water.get_forces())
        frames.append(water)
    loader = DataLoader(GraphDataset(write_label_file(tmp_path / "water.h5", frames), "teacher", 4.0), batch_size=4)
    torch.manual_seed(0)

    def fitted(start):
        model = build_model("painn", elements=[1, 8], cutoff=4.0, e0={1: -1.0, 8: -2.0}, channels=4, num_layers=1)
        e0 = refit_e0(model, loader, start=start)
        errors = torch.cat([model(b, compute_forces=False)["energy"] - b.energy for b in loader])
        assert abs(errors.mean().item()) < 1e-3  # either way the mean energy is right (float32 of ~2 keV)
        return e0

    assert abs(fitted(None)[1] - isolated[1]) > 100.0  # ~6/41 of a 2 keV offset lands on hydrogen
    from_isolated = fitted(isolated)
    assert all(abs(from_isolated[z] - isolated[z]) < 5.0 for z in isolated)


def test_a_crash_while_checkpointing_keeps_the_previous_checkpoint(tmp_path):
    from mlip_distill.training.checkpoint import AtomicModelCheckpoint

    target = tmp_path / "last.ckpt"
    target.write_bytes(b"previous checkpoint")

    class CrashingTrainer:
        global_step, is_global_zero = 3, True

        def save_checkpoint(self, path, weights_only=False):
            with open(path, "wb") as handle:
                handle.write(b"half a checkpoint")
            raise KeyboardInterrupt  # killed in the middle of writing

    with pytest.raises(KeyboardInterrupt):
        AtomicModelCheckpoint(dirpath=tmp_path)._save_checkpoint(CrashingTrainer(), str(target))
    assert target.read_bytes() == b"previous checkpoint"
    assert list(tmp_path.iterdir()) == [target]


def test_fixed_validation_indices_hold_out_exactly_those(copper_label_file):
    from mlip_distill.data.errors import DataError
    from mlip_distill.training.datamodule import LabelFileDataModule

    module = LabelFileDataModule(copper_label_file, "teacher", 4.0, valid_indices=[3, 5, 30])
    assert module.valid_store_indices == [3, 5, 30]
    assert len(module.train_store_indices) == 37 and not {3, 5, 30} & set(module.train_store_indices)
    with pytest.raises(DataError, match="valid_indices"):
        LabelFileDataModule(copper_label_file, "teacher", 4.0, valid_indices=[3, 999])


def test_split_follows_data_seed_and_training_order_follows_the_run_seed(copper_label_file):
    """Committee members share a split but must not share a batch order."""
    from mlip_distill.training.datamodule import LabelFileDataModule

    def first_epoch(shuffle_seed):
        module = LabelFileDataModule(copper_label_file, "teacher", 4.0, batch_size=4, n_valid=5, seed=0,
                                     shuffle_seed=shuffle_seed)
        batches = [batch.structure_id.tolist() for batch in module.train_dataloader()]
        return module.valid_store_indices, batches

    split_1, order_1 = first_epoch(1)
    split_2, order_2 = first_epoch(2)
    assert split_1 == split_2
    assert order_1 != order_2 and sorted(sum(order_1, [])) == sorted(sum(order_2, []))
    assert first_epoch(1) == (split_1, order_1)
