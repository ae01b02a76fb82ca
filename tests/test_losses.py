"""Label terms: zero at agreement, positive otherwise, NaN labels and masks drop exactly their
entries, weights, reductions, the data-parallel count, and NaN predictions named."""

from __future__ import annotations

import pytest
import torch

from loss_helpers import copper_batch
from mlip_distill.losses import (
    AtomicEnergiesLoss,
    EnergyPerAtomLoss,
    ForcesLoss,
    NonFiniteLossError,
    StressLoss,
    TotalLoss,
    build_loss,
)
from mlip_distill.losses import base as loss_base

LABEL_TERMS = [EnergyPerAtomLoss, ForcesLoss, StressLoss, AtomicEnergiesLoss]


@pytest.fixture
def batch():
    return copper_batch(3)


def perfect(batch):
    return {key: batch[key].clone() for key in ("energy", "forces", "stress", "atomic_energies")}


def noisy(batch, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return {key: value + 0.05 * torch.randn(value.shape, generator=generator, dtype=value.dtype)
            for key, value in perfect(batch).items()}


@pytest.mark.parametrize("term", LABEL_TERMS)
@pytest.mark.parametrize("kind", ["mse", "mae", "huber"])
def test_zero_when_student_equals_teacher_and_positive_otherwise(batch, term, kind):
    loss = term(kind=kind, scale=0.1)
    prediction = perfect(batch)
    assert loss(prediction, batch).item() == 0.0
    for key in prediction:
        prediction[key] = prediction[key] + 0.01
    assert loss(prediction, batch).item() > 0.0


def test_forces_l2_is_the_mean_length_of_the_force_error(batch):
    prediction = perfect(batch)
    prediction["forces"] = prediction["forces"] + torch.tensor([0.03, 0.0, 0.04], dtype=torch.float64)
    loss = ForcesLoss(kind="l2", scale=0.01)
    assert loss(prediction, batch).item() == pytest.approx(5.0)
    assert loss.__class__(kind="l2", reduction="none")(prediction, batch).shape == (batch.num_nodes,)
    with pytest.raises(ValueError, match="unknown kind 'l2'"):
        EnergyPerAtomLoss(kind="l2")


def test_atomic_energies_compare_each_side_to_its_own_e0(batch):
    prediction = perfect(batch)
    prediction["atomic_energies"] = prediction["atomic_energies"] - 0.7  # the student's E0 is 0.7 eV lower
    referenced = AtomicEnergiesLoss(teacher_e0={29: -3.0}, student_e0={"29": -3.7})
    assert referenced(prediction, batch).item() == pytest.approx(0.0, abs=1e-24)
    assert AtomicEnergiesLoss()(prediction, batch).item() == pytest.approx(0.49)
    with pytest.raises(ValueError, match="no E0 for element.*Cu"):
        AtomicEnergiesLoss(teacher_e0={1: 0.0}, student_e0={1: 0.0})(prediction, batch)
    with pytest.raises(ValueError, match="both teacher_e0 and student_e0"):
        AtomicEnergiesLoss(teacher_e0={29: -3.0})


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


@pytest.mark.parametrize("term", LABEL_TERMS)
def test_mask_and_nan_labels_drop_exactly_the_same_entries(batch, term):
    prediction = noisy(batch)
    key = term.required_labels[0]
    per_atom = batch[key].shape[0] == batch.num_nodes
    masked = batch.clone()
    entries_before = term(reduction="none")(prediction, batch).numel()
    if per_atom:
        masked.atom_mask = torch.ones(batch.num_nodes, dtype=torch.bool)
        masked.atom_mask[[1, 9, 20]] = False
        batch[key][[1, 9, 20]] = float("nan")
    else:
        masked.structure_mask = torch.tensor([True, False, True])
        batch[key][1] = float("nan")
    for reduction in ("mean", "sum"):
        loss = term(reduction=reduction)
        assert loss(prediction, masked).item() == pytest.approx(loss(prediction, batch).item(), rel=1e-12)
    per_entry = term(reduction="none")(prediction, masked)
    assert torch.equal(per_entry, term(reduction="none")(prediction, batch))
    entries_per_row = batch[key][0].numel()
    dropped_rows = 3 if per_atom else 1
    assert per_entry.numel() == entries_before - dropped_rows * entries_per_row
    assert per_entry.mean().item() == pytest.approx(term()(prediction, masked).item(), rel=1e-12)


@pytest.mark.parametrize("term", LABEL_TERMS)
def test_none_reduction_mean_equals_mean_and_sum_equals_sum(batch, term):
    prediction = noisy(batch)
    batch.structure_weight = torch.tensor([0.5, 2.0, 1.0], dtype=torch.float64)
    per_entry = term(reduction="none")(prediction, batch)
    assert per_entry.mean().item() == pytest.approx(term()(prediction, batch).item(), rel=1e-12)
    assert per_entry.sum().item() == pytest.approx(term(reduction="sum")(prediction, batch).item(), rel=1e-12)


def test_structure_and_atom_weights_multiply_their_entries(batch):
    prediction = noisy(batch)
    unweighted = ForcesLoss(reduction="none")(prediction, batch).reshape(-1, 3)
    batch.structure_weight = torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)
    batch.atom_weight = torch.full((batch.num_nodes,), 3.0, dtype=torch.float64)
    weighted = ForcesLoss(reduction="none")(prediction, batch).reshape(-1, 3)
    expected = unweighted * (3.0 * batch.structure_weight[batch.batch]).unsqueeze(-1)
    assert torch.allclose(weighted, expected)
    # a zero weight keeps the entries in the count (unlike a mask): the mean is over all 72
    assert ForcesLoss()(prediction, batch).item() == pytest.approx(weighted.mean().item())
    batch.structure_weight[0] = -1.0
    with pytest.raises(ValueError, match="non-negative"):
        ForcesLoss()(prediction, batch)


def test_mean_divides_by_the_count_over_all_ranks(batch, monkeypatch):
    prediction = noisy(batch)
    local_sum = ForcesLoss(reduction="sum")(prediction, batch)
    other_rank_entries = 30.0
    monkeypatch.setattr(loss_base, "global_count", lambda count: (count + other_rank_entries, 2))
    mean = ForcesLoss()(prediction, batch)
    assert mean.item() == pytest.approx(local_sum.item() * 2 / (3 * batch.num_nodes + other_rank_entries))


@pytest.mark.parametrize("term, key, row", [
    (EnergyPerAtomLoss, "energy", 2), (ForcesLoss, "forces", 17), (StressLoss, "stress", 2),
    (AtomicEnergiesLoss, "atomic_energies", 17),
])
def test_nan_prediction_raises_naming_the_term_and_structure(batch, term, key, row):
    prediction = perfect(batch)
    prediction[key][row] = float("nan")  # atom 17 is in the third structure, structure_id 12
    message = rf"loss '{term.name}': the prediction .* position\(s\) \[2\] \(dataset structure_id \[12\]\)"
    with pytest.raises(NonFiniteLossError, match=message):
        term()(prediction, batch)


def test_nan_prediction_where_the_label_is_missing_is_ignored(batch):
    prediction = perfect(batch)
    prediction["stress"][0] = float("nan")  # a molecule's stress is NaN; so is its label
    batch.stress[0] = float("nan")
    assert StressLoss()(prediction, batch).item() == 0.0


def test_infinite_label_raises(batch):
    batch.forces[3, 0] = float("inf")
    with pytest.raises(NonFiniteLossError, match=r"loss 'forces': the label .* structure_id \[10\]"):
        ForcesLoss()(perfect(batch), batch)


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
    assert not total.needs_stress and not total.requires_position_grad


def test_bad_configuration_is_refused():
    with pytest.raises(ValueError, match="unknown loss term 'energies'"):
        build_loss({"energies": {}}, {})
    with pytest.raises(ValueError, match="loss term 'forces': .*unexpected keyword argument 'delta'"):
        build_loss({"forces": {"delta": 0.1}}, {})
    with pytest.raises(ValueError, match="weight must not be negative"):
        build_loss({"forces": {"weight": -1.0}}, {})
    with pytest.raises(ValueError, match="scale must be positive"):
        ForcesLoss(scale=0.0)
    with pytest.raises(ValueError, match="unknown reduction 'avg'"):
        ForcesLoss(reduction="avg")
    with pytest.raises(ValueError):
        TotalLoss([ForcesLoss()], [1.0, 2.0])
