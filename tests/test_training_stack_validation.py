"""Validation: eval mode, no parameter gradients, forces still by autograd."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.loader import DataLoader

from mlip_distill.data.dataset import GraphDataset
from mlip_distill.losses import build_loss
from mlip_distill.models import build_model
from mlip_distill.training.module import StudentModule


def test_validation_step_differentiates_positions_only(copper_label_file):
    torch.manual_seed(0)
    model = build_model("nequip", elements=[29], cutoff=4.0, e0={29: -3.5}, channels=8, num_layers=1, radial_hidden=16)
    loss = build_loss({"energy": {"weight": 1.0}, "forces": {"weight": 10.0}}, {"energy": 0.01, "forces": 0.5})
    module = StudentModule(model, loss, {"name": "adamw", "lr": 1e-3}, {"name": "constant"})
    module.log = lambda *args, **kwargs: None  # no trainer here
    batch = next(iter(DataLoader(GraphDataset(copper_label_file, "teacher", 4.0), batch_size=4)))

    needs_grad_during_forward = []
    model.register_forward_hook(
        lambda m, i, o: needs_grad_during_forward.append(any(p.requires_grad for p in m.parameters())))
    module.eval()
    with torch.no_grad():  # as Lightning runs validation
        module.on_validation_epoch_start()
        module.validation_step(batch, 0)
    assert needs_grad_during_forward == [False]
    assert all(p.grad is None for p in module.parameters())
    assert all(p.requires_grad for p in module.parameters())  # restored for training

    # the forces validated are the autograd forces of the model
    reference = model(batch, compute_forces=True)["forces"].detach().double()
    expected = 1000.0 * torch.sqrt((reference - batch.forces.double()).square().mean()).item()
    assert module.val_metrics.compute()["forces_rmse_mev_per_A"] == pytest.approx(expected, rel=1e-6)
    assert not module.training and not model.training
