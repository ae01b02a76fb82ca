"""Temperature-scaled KL: non-negative, blind to constant energy offsets, growing as conformer
orderings diverge, τ² keeping gradients comparable across τ; masks, warnings and errors."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch_geometric.data import Batch

from conftest import emt_copper_cells
from loss_helpers import graphs
from mlip_distill.losses import ROOM_TEMPERATURE_ENERGY, BoltzmannKLLoss, NonFiniteLossError, SoftTargetKL

SYSTEMS = [0, 0, 0, 1, 1, 2]  # system 2 has a single conformer in the batch: it adds nothing


@pytest.fixture(scope="module")
def cells():
    return emt_copper_cells(len(SYSTEMS))


@pytest.fixture
def batch(cells):
    batch = Batch.from_data_list(graphs(cells, system_ids=SYSTEMS))
    spread = ROOM_TEMPERATURE_ENERGY * torch.tensor([0.0, 0.4, -0.3, 0.2, -0.5, 0.1], dtype=torch.float64)
    batch.energy = -28.0 + spread
    return batch


def student_energies(batch, seed: int = 0, noise: float = 0.3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    shift = noise * ROOM_TEMPERATURE_ENERGY * torch.randn(batch.num_graphs, generator=generator, dtype=torch.float64)
    return (batch.energy + shift).requires_grad_(True)


def test_non_negative_and_zero_for_energies_that_differ_by_a_constant_per_system(batch):
    loss = BoltzmannKLLoss(tau=2.0)
    for seed in range(5):
        assert loss({"energy": student_energies(batch, seed)}, batch).item() > 0.0
    offsets = torch.tensor([3.0, 3.0, 3.0, -1.5, -1.5, 7.0], dtype=torch.float64)
    assert loss({"energy": batch.energy + offsets}, batch).item() == pytest.approx(0.0, abs=1e-14)


def test_grows_as_the_energy_ordering_diverges(batch):
    loss = BoltzmannKLLoss(tau=1.0)
    system_mean = torch.tensor([batch.energy[:3].mean()] * 3 + [batch.energy[3:5].mean()] * 2 + [batch.energy[5]])
    relative = batch.energy - system_mean
    values = []
    for reversal in (0.0, 0.25, 0.5, 0.75, 1.0):  # 1: the student orders the conformers backwards
        values.append(loss({"energy": system_mean + (1 - 2 * reversal) * relative}, batch).item())
    assert values[0] == pytest.approx(0.0, abs=1e-14)
    assert all(later > earlier for earlier, later in zip(values, values[1:]))


def test_tau_squared_keeps_the_gradient_comparable_across_tau(batch):
    norms = {}
    for tau in (1.0, 10.0):
        energies = student_energies(batch, seed=1)
        BoltzmannKLLoss(tau=tau)({"energy": energies}, batch).backward()
        norms[tau] = energies.grad.norm().item()
    assert norms[1.0] > 0
    assert 1 / 3 < norms[10.0] / norms[1.0] < 3


def test_one_conformer_per_system_adds_nothing_and_warns_once(cells):
    batch = Batch.from_data_list(graphs(cells[:3], system_ids=[0, 1, 2]))
    energies = batch.energy.clone().requires_grad_(True)
    loss = BoltzmannKLLoss()
    with pytest.warns(UserWarning, match="no two conformers of one system"):
        value = loss({"energy": energies + 1.0}, batch)
    assert value.item() == 0.0
    value.backward()  # still part of the graph
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss({"energy": energies}, batch)


def test_none_reduction_gives_one_entry_per_system_and_its_mean_is_mean(batch):
    energies = student_energies(batch)
    per_system = BoltzmannKLLoss(reduction="none")({"energy": energies}, batch)
    assert per_system.shape == (2,)
    assert per_system.mean().item() == pytest.approx(BoltzmannKLLoss()({"energy": energies}, batch).item())


def test_mask_and_missing_teacher_energy_drop_a_conformer(batch):
    energies = student_energies(batch)
    loss = BoltzmannKLLoss(reduction="none")
    full = loss({"energy": energies}, batch)
    batch.structure_mask = torch.tensor([True, True, True, False, True, True])
    masked = loss({"energy": energies}, batch)
    del batch.structure_mask
    batch.energy[3] = float("nan")
    assert torch.equal(masked, loss({"energy": energies}, batch))
    assert masked.shape == (1,) and masked.item() == pytest.approx(full[0].item())


def test_structure_weights_weight_their_system(batch):
    energies = student_energies(batch)
    full = BoltzmannKLLoss(reduction="none")({"energy": energies}, batch)
    batch.structure_weight = torch.tensor([2.0, 2.0, 2.0, 1.0, 0.0, 5.0], dtype=torch.float64)
    weighted = BoltzmannKLLoss(reduction="none")({"energy": energies}, batch)
    assert torch.allclose(weighted, full * torch.tensor([2.0, 0.5], dtype=torch.float64))


def test_nan_prediction_and_mixed_atom_counts_raise(batch, cells):
    energies = student_energies(batch).detach()
    energies[4] = float("nan")
    message = r"loss 'boltzmann_kl': the predicted energy .* \[4\] \(dataset structure_id \[14\]\)"
    with pytest.raises(NonFiniteLossError, match=message):
        BoltzmannKLLoss()({"energy": energies}, batch)
    mixed = Batch.from_data_list(graphs(cells[:2] + emt_copper_cells(1, repeat=(1, 1, 1)), system_ids=[0, 0, 0]))
    message = r"structure_id \[10, 11, 12\]\) share a system_id but have different atom counts \[8, 8, 4\]"
    with pytest.raises(ValueError, match=message):
        BoltzmannKLLoss()({"energy": mixed.energy.clone()}, mixed)


def test_soft_target_kl_on_class_logits():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 4, generator=generator), torch.randn(5, 4, generator=generator)
    tau = 3.0
    expected = tau**2 * torch.nn.functional.kl_div(
        torch.log_softmax(student / tau, -1), torch.log_softmax(teacher / tau, -1), log_target=True, reduction="none"
    ).sum(-1)
    per_row = SoftTargetKL(tau, reduction="none")(student, teacher)
    assert torch.allclose(per_row, expected, atol=1e-6)
    assert (per_row > 0).all()
    assert SoftTargetKL(tau)(student, teacher).item() == pytest.approx(expected.mean().item(), rel=1e-5)
    assert SoftTargetKL(tau)(teacher + 2.0, teacher).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="rows, classes"):
        SoftTargetKL(tau)(student, teacher[:, :3])
