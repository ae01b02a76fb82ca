"""Loss terms: zero at agreement, positive otherwise, NaN labels masked, reductions consistent."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from mlip_distill.data.graph import build_graph
from mlip_distill.losses import EnergyPerAtomLoss, ForcesLoss, StressLoss, TotalLoss, build_loss
from conftest import emt_copper_cells
from mlip_distill.data.io import labels_from_atoms

@pytest.fixture
def batch():
    cells = emt_copper_cells(3)
    graphs = [build_graph(a.numbers, a.positions, a.cell.array, a.pbc, 4.0, labels_from_atoms(a)) for a in cells]
    return Batch.from_data_list(graphs)

def perfect(batch):
    return {"energy": batch.energy.clone(), "forces": batch.forces.clone(), "stress": batch.stress.clone()}

@pytest.mark.parametrize("term", [EnergyPerAtomLoss, ForcesLoss, StressLoss])
@pytest.mark.parametrize("kind", ["mse", "mae", "huber"])
def test_zero_when_student_equals_teacher_and_positive_otherwise(batch, term, kind):
    loss = term(kind=kind, scale=0.1)
    prediction = perfect(batch)
    assert loss(prediction, batch).item() == 0.0
    for key in prediction:
        prediction[key] = prediction[key] + 0.01
    assert loss(prediction, batch).item() > 0.0

def test_nan_labels_are_masked_not_zeroed(batch):
    prediction = perfect(batch)
    prediction["forces"] = prediction["forces"] + 0.1
    full = ForcesLoss()(prediction, batch).item()
    batch.forces[:8] = float("nan")  # the first structure has no forces
    assert ForcesLoss()(prediction, batch).item() == pytest.approx(full)
    assert ForcesLoss(reduction="none")(prediction, batch).numel() == 3 * (batch.num_nodes - 8)
    # a zero in place of the missing labels would have changed the loss
    batch.forces[:8] = 0.0
    assert ForcesLoss()(prediction, batch).item() != pytest.approx(full)

def test_none_reduction_mean_equals_mean(batch):
    prediction = perfect(batch)
    generator = torch.Generator().manual_seed(0)
    prediction["forces"] = prediction["forces"] + torch.randn(prediction["forces"].shape, generator=generator)
    per_entry = ForcesLoss(reduction="none")(prediction, batch)
    assert per_entry.mean().item() == pytest.approx(ForcesLoss()(prediction, batch).item())
    assert per_entry.sum().item() == pytest.approx(ForcesLoss(reduction="sum")(prediction, batch).item())

def test_energy_is_per_atom_and_scaled(batch):
    prediction = perfect(batch)
    prediction["energy"] = prediction["energy"] + batch.n_atoms * 0.02  # 20 meV/atom
    assert EnergyPerAtomLoss(kind="mae", scale=0.01)(prediction, batch).item() == pytest.approx(2.0)

def test_total_loss_weights_and_parts(batch):
    prediction = perfect(batch)
    prediction["forces"] = prediction["forces"] + 0.1
    total = build_loss({"energy": {"weight": 1.0}, "forces": {"weight": 5.0}}, {"forces": 0.1})
    value, parts = total(prediction, batch)
    assert parts["energy"].item() == 0.0
    assert parts["forces"].item() == pytest.approx(1.0)
    assert value.item() == pytest.approx(5.0)
    assert parts["forces_weighted"].item() == pytest.approx(5.0)
    assert not total.needs_stress

def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="unknown loss term 'energies'"):
        build_loss({"energies": {}}, {})
    with pytest.raises(ValueError, match="scale must be positive"):
        ForcesLoss(scale=0.0)
    with pytest.raises(ValueError):
        TotalLoss([ForcesLoss()], [1.0, 2.0])
