"""Hessian matching: the student's Hessian-vector products agree with finite differences of its
forces, the term is zero at agreement, and missing probes or products drop exactly their entries."""

from __future__ import annotations

import pytest
import torch

from loss_helpers import add_distillation_labels, copper_batch, small_student, student_prediction
from mlip_distill.losses import HessianLoss, NonFiniteLossError, hessian_vector_products


@pytest.fixture(scope="module")
def model():
    return small_student()


@pytest.fixture
def batch():
    return add_distillation_labels(copper_batch(2), probes=2)


def test_student_hessian_vector_products_match_finite_differences_of_its_forces(model, batch):
    prediction = student_prediction(model, batch, stress=False)
    products = hessian_vector_products(prediction["forces"], batch.pos, batch.hvp_v)
    step = 1e-4
    for k in range(batch.hvp_v.shape[1]):
        displaced = []
        for sign in (1.0, -1.0):
            shifted = batch.clone()
            shifted.pos = (batch.pos + sign * step * batch.hvp_v[:, k]).detach()
            displaced.append(model(shifted, compute_forces=True)["forces"].detach())
        # H v = -dF/dx · v
        finite_difference = -(displaced[0] - displaced[1]) / (2 * step)
        assert finite_difference.abs().max() > 1e-2
        assert torch.allclose(products[:, k], finite_difference, atol=1e-6, rtol=1e-5)


def test_zero_when_student_equals_teacher_and_positive_otherwise(model, batch):
    prediction = student_prediction(model, batch, stress=False)
    batch.hvp_hv = hessian_vector_products(prediction["forces"], batch.pos, batch.hvp_v).detach()
    assert HessianLoss()(prediction, batch).item() == pytest.approx(0.0, abs=1e-20)
    batch.hvp_hv[5, 1, 2] += 0.1
    assert HessianLoss()(prediction, batch).item() > 0.0


def test_missing_products_and_incomplete_probes_drop_exactly_their_entries(model, batch):
    prediction = student_prediction(model, batch, stress=False)
    full = HessianLoss(reduction="none")(prediction, batch).reshape(batch.num_nodes, 2, 3)
    batch.hvp_hv[3, 0] = float("nan")  # atom 3, probe 0: three entries
    batch.hvp_v[12, 1, 0] = float("nan")  # probe 1 of the second structure (atoms 8-15) is incomplete
    kept = torch.ones(batch.num_nodes, 2, 3, dtype=torch.bool)
    kept[3, 0] = False
    kept[8:16, 1] = False
    per_entry = HessianLoss(reduction="none")(prediction, batch)
    assert torch.allclose(per_entry, full[kept])
    assert per_entry.mean().item() == pytest.approx(HessianLoss()(prediction, batch).item())


def test_structure_mask_equals_missing_products(model, batch):
    prediction = student_prediction(model, batch, stress=False)
    unmasked = HessianLoss()(prediction, batch).item()
    batch.structure_mask = torch.tensor([False, True])
    masked = HessianLoss()(prediction, batch).item()
    del batch.structure_mask
    batch.hvp_hv[:8] = float("nan")
    assert masked == pytest.approx(HessianLoss()(prediction, batch).item())
    assert masked != pytest.approx(unmasked)


def test_positions_other_than_the_models_are_refused(model, batch):
    prediction = student_prediction(model, batch, stress=False)
    with pytest.raises(RuntimeError, match="forces do not depend on these positions"):
        HessianLoss()(prediction, batch.clone())


def test_needs_positions_that_require_grad(model, batch):
    prediction = model(batch, compute_forces=True, create_graph=True)
    with pytest.raises(RuntimeError, match=r"batch.pos.requires_grad_\(True\)"):
        HessianLoss()(prediction, batch)
    assert HessianLoss.requires_position_grad


def test_nan_forces_raise_naming_the_structure(model, batch):
    prediction = student_prediction(model, batch, stress=False)
    prediction["forces"] = prediction["forces"] * torch.where(torch.arange(16) == 10, torch.nan, 1.0).unsqueeze(-1)
    with pytest.raises(NonFiniteLossError, match=r"loss 'hessian': the predicted forces .* structure_id \[11\]"):
        HessianLoss()(prediction, batch)
