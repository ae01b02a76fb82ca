"""Every term, built from its config, passes gradients to every student parameter it depends on
and to every projection parameter; all terms together form one TotalLoss."""

from __future__ import annotations

import pytest
import torch

from loss_helpers import add_distillation_labels, copper_batch, small_student, student_prediction
from mlip_distill.losses import build_loss

FEATURES = {"student_layer": "layer_2", "teacher_layer": "teacher", "teacher_irreps": "3x0e"}
CONFIGS = {
    "energy": {"kind": "huber", "huber_delta": 0.5},
    "forces": {"kind": "l2"},
    "stress": {"kind": "mse"},
    "atomic_energies": {"teacher_e0": {29: -3.0}},
    "features": FEATURES,
    "hessian": {"kind": "mse"},
    "boltzmann_kl": {"tau": 5.0, "energy_unit": 0.05},
}


@pytest.fixture(scope="module")
def batch():
    batch = add_distillation_labels(copper_batch(3, system_ids=[0, 0, 0]), probes=1)
    batch.features_teacher = batch.features_teacher[:, :3].contiguous()
    return batch


def parameters_upstream_of(model, name: str) -> dict[str, torch.nn.Parameter]:
    """The student's parameters a term on ``name`` depends on: node features come before the readout."""
    return {key: p for key, p in model.named_parameters() if not (name == "features" and key.startswith("readout"))}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_gradients_reach_every_student_and_projection_parameter(batch, name):
    model = small_student()
    total = build_loss({name: CONFIGS[name]}, {}, model).double()
    batch.pos = batch.pos.detach()
    prediction = student_prediction(model, batch, stress=total.needs_stress)
    value, parts = total(prediction, batch)
    assert value.item() > 0 and set(parts) == {name, f"{name}_weighted"}
    value.backward()
    checked = {**parameters_upstream_of(model, name), **{f"loss.{k}": p for k, p in total.named_parameters()}}
    without_gradient = [key for key, p in checked.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not without_gradient
    assert (name == "features") == bool(list(total.parameters()))


def test_all_terms_in_one_loss(batch):
    model = small_student()
    spec = {name: {"weight": 0.5, **options} for name, options in CONFIGS.items()}
    spec["features"]["kind"] = "cosine"
    total = build_loss(spec, {"forces": 0.3, "hessian": 2.0}, model).double()
    assert total.needs_stress and total.requires_position_grad
    assert [term.name for term in total.terms] == list(CONFIGS)
    assert total.terms[1].scale == 0.3 and total.terms[5].scale == 2.0 and total.terms[0].scale == 1.0
    batch.pos = batch.pos.detach()
    value, parts = total(student_prediction(model, batch), batch)
    assert value.item() == pytest.approx(sum(parts[f"{name}_weighted"].item() for name in CONFIGS))
    assert build_loss({"hessian": {"weight": 0.0}, "energy": {}}, {}).requires_position_grad is False
