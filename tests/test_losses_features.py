"""Feature matching: zero when the projected student equals the teacher, invariance to rotating
the structure (teacher features rotated by their Wigner D matrices), masks and NaN rows."""

from __future__ import annotations

import pytest
import torch
from e3nn import o3
from torch_geometric.data import Batch

from conftest import emt_copper_cells
from loss_helpers import (
    STUDENT_LAYER_IRREPS,
    TEACHER_IRREPS,
    add_distillation_labels,
    copper_batch,
    graphs,
    small_student,
)
from mlip_distill.losses import FeatureMatchingLoss, NonFiniteLossError, build_loss


def feature_loss(kind: str = "mse", reduction: str = "mean", layer: str = "layer_1") -> FeatureMatchingLoss:
    torch.manual_seed(1)
    loss = FeatureMatchingLoss(layer, "teacher", STUDENT_LAYER_IRREPS[layer], TEACHER_IRREPS, kind, reduction)
    return loss.double()


@pytest.fixture
def batch():
    return add_distillation_labels(copper_batch(3))


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_zero_when_projected_student_equals_teacher_and_positive_otherwise(batch, kind):
    loss = feature_loss(kind)
    student = torch.randn(batch.num_nodes, 16, dtype=torch.float64)
    prediction = {"node_features": {"layer_1": student}}
    with torch.no_grad():
        batch.features_teacher = loss.projection(student)
    assert loss(prediction, batch).item() == pytest.approx(0.0, abs=1e-12)
    batch.features_teacher[:, 3] += 0.1
    assert loss(prediction, batch).item() > 1e-6


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_unchanged_when_the_structure_is_rotated(kind):
    torch.manual_seed(3)
    rotation = o3.rand_matrix(dtype=torch.float64)
    cells = emt_copper_cells(2)
    rotated_cells = [atoms.copy() for atoms in cells]
    for atoms in rotated_cells:
        atoms.set_cell(atoms.cell.array @ rotation.numpy().T, scale_atoms=False)
        atoms.positions = atoms.positions @ rotation.numpy().T
    model, loss = small_student(), feature_loss(kind)
    batch = add_distillation_labels(Batch.from_data_list(graphs(cells)))
    rotated = Batch.from_data_list(graphs(rotated_cells))
    rotated.features_teacher = batch.features_teacher @ o3.Irreps(TEACHER_IRREPS).D_from_matrix(rotation).T

    student = model(batch, compute_forces=False)["node_features"]["layer_1"]
    rotated_student = model(rotated, compute_forces=False)["node_features"]["layer_1"]
    # the student is equivariant and its vectors did turn: the test is not vacuous
    d_student = o3.Irreps(STUDENT_LAYER_IRREPS["layer_1"]).D_from_matrix(rotation)
    assert torch.allclose(rotated_student, student @ d_student.T, atol=1e-10)
    assert not torch.allclose(rotated_student, student, atol=1e-3)

    value = loss({"node_features": {"layer_1": student}}, batch)
    rotated_value = loss({"node_features": {"layer_1": rotated_student}}, rotated)
    assert rotated_value.item() == pytest.approx(value.item(), rel=1e-8)
    # rotating only the teacher's features changes the loss
    rotated.features_teacher = batch.features_teacher @ o3.Irreps(TEACHER_IRREPS).D_from_matrix(rotation).T
    assert loss({"node_features": {"layer_1": student}}, rotated).item() != pytest.approx(value.item(), rel=1e-6)


def test_invariant_features_use_a_linear_map_of_the_scalars(batch):
    loss = FeatureMatchingLoss("layer_2", "teacher", "4x0e", "5x0e")
    assert sum(p.numel() for p in loss.parameters()) == 4 * 5
    batch.features_teacher = torch.randn(batch.num_nodes, 5, dtype=torch.float64)
    student = torch.randn(batch.num_nodes, 4, dtype=torch.float64)
    assert loss.double()({"node_features": {"layer_2": student}}, batch) > 0


def test_nan_teacher_rows_and_masked_atoms_drop_exactly_those_atoms(batch):
    prediction = {"node_features": {"layer_1": torch.randn(batch.num_nodes, 16, dtype=torch.float64)}}
    full = feature_loss(reduction="none")(prediction, batch)
    masked = batch.clone()
    masked.atom_mask = torch.ones(batch.num_nodes, dtype=torch.bool)
    masked.atom_mask[[0, 13]] = False
    batch.features_teacher[[0, 13]] = float("nan")
    keep = torch.ones(batch.num_nodes, dtype=torch.bool)
    keep[[0, 13]] = False
    for labelled in (masked, batch):
        per_atom = feature_loss(reduction="none")(prediction, labelled)
        assert torch.allclose(per_atom, full[keep])
        assert per_atom.mean().item() == pytest.approx(feature_loss()(prediction, labelled).item())


def test_nan_student_features_raise_naming_the_structure(batch):
    features = torch.randn(batch.num_nodes, 16, dtype=torch.float64)
    features[9, 5] = float("nan")
    message = r"loss 'features': the student's features 'layer_1' .* \[1\] \(dataset structure_id \[11\]\)"
    with pytest.raises(NonFiniteLossError, match=message):
        feature_loss()({"node_features": {"layer_1": features}}, batch)


def test_configuration_errors_name_what_is_wrong(batch):
    with pytest.raises(ValueError, match="irreps 1e .* lacks"):
        FeatureMatchingLoss("layer_1", "teacher", "4x0e+4x1o", "2x0e+1x1e")
    features = {"layer_2": torch.zeros(24, 4)}
    with pytest.raises(KeyError, match="no node features 'layer_9'"):
        FeatureMatchingLoss("layer_9", "teacher", "4x0e", "2x0e")({"node_features": features}, batch)
    with pytest.raises(KeyError, match="needs batch.features_other"):
        FeatureMatchingLoss("layer_2", "other", "4x0e", "2x0e")({"node_features": features}, batch)
    model = small_student()
    options = {"student_layer": "layer_1", "teacher_layer": "teacher", "teacher_irreps": TEACHER_IRREPS}
    total = build_loss({"features": options}, {}, model)
    assert total.terms[0].student_irreps == o3.Irreps("4x0e+4x1o")
    assert sum(p.numel() for p in total.parameters()) == 4 * 3 + 4 * 2
    with pytest.raises(ValueError, match="student_layer 'layer_7' is not one of layer_1, layer_2"):
        build_loss({"features": {**options, "student_layer": "layer_7"}}, {}, model)
