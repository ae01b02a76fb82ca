"""Hessian matching: the student's Hessian-vector products along the teacher's stored probes."""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from mlip_distill.losses.base import LossTerm, Reduction, broadcast_rows, row_weights
from mlip_distill.losses.labels import Kind, elementwise_error


def hessian_vector_products(forces: Tensor, positions: Tensor, probes: Tensor) -> Tensor:
    """``H v`` for each probe, (N, K, 3) eV/Å² per unit of the probe, with H = ∂²E/∂x∂x.

    Since F = −∂E/∂x, ``H v = −∂(F · v)/∂x``: one backward pass per probe through the force
    computation, with ``create_graph`` so that a loss on the result reaches the parameters.

    Args:
        forces: (N, 3) eV/Å, computed from ``positions`` with ``create_graph=True``.
        positions: (N, 3) Å, the tensor the forces were differentiated by (``batch.pos``).
        probes: (N, K, 3), finite; a probe spans every atom of the batch.
    """
    products = []
    for probe in probes.unbind(dim=1):
        try:
            (gradient,) = torch.autograd.grad((forces * probe.to(forces.dtype)).sum(), positions, create_graph=True)
        except RuntimeError as error:
            raise RuntimeError(
                "the forces do not depend on these positions: set requires_grad on the batch's own "
                "positions before the model runs, and pass that batch to the loss"
            ) from error
        products.append(-gradient)
    return torch.stack(products, dim=1)


class HessianLoss(LossTerm):
    """Error of the student's Hessian-vector products against the teacher's, three entries per
    atom and probe.

    ``entry = f((H_student v − H_teacher v) / scale)``, f as ``kind`` (``mse``, ``mae``,
    ``huber``), with ``batch.hvp_v`` (N, K, 3) the K probe vectors (any length unit; one probe
    spans all atoms of its structure) and ``batch.hvp_hv`` (N, K, 3) the teacher's ``H v`` in
    eV/Å² per probe unit, H = ∂²E/∂x∂x. A probe of a structure with any non-finite component
    drops that structure's entries for that probe; NaN in ``hvp_hv`` drops its entries. ``scale``
    is the RMS of ``hvp_hv``.

    Needs one extra backward pass per probe through the force computation: the model must run
    with ``batch.pos.requires_grad_(True)`` set beforehand and ``create_graph=True``
    (``requires_position_grad``). Hessian distillation of foundation potentials: Amin, Raja and
    Krishnapriyan, "Towards fast, specialized machine learning force fields: distilling
    foundation models via energy Hessians", ICLR 2025.

    Args:
        kind: ``mse``, ``mae`` or ``huber``.
        reduction, scale: see :class:`~mlip_distill.losses.base.LossTerm`.
        huber_delta: where Huber turns from quadratic to linear, in units of ``scale``.
    """

    name = "hessian"
    required_labels = ("hvp_v", "hvp_hv")
    requires_position_grad = True

    def __init__(
        self, kind: Kind = "mse", reduction: Reduction = "mean", scale: float = 1.0, huber_delta: float = 0.01
    ) -> None:
        super().__init__(reduction, scale)
        if kind not in ("mse", "mae", "huber"):
            raise ValueError(f"loss '{self.name}': unknown kind '{kind}': expected mse, mae or huber")
        self.kind, self.huber_delta = kind, float(huber_delta)

    def forward(self, prediction: Mapping[str, Tensor], batch) -> Tensor:
        forces, positions = prediction["forces"], batch.pos
        if not positions.requires_grad or forces.grad_fn is None:
            raise RuntimeError(
                f"loss '{self.name}' differentiates the forces by the positions: call "
                "batch.pos.requires_grad_(True) before the model, and run it with create_graph=True"
            )
        probes, target = self.label(batch, "hvp_v"), self.label(batch, "hvp_hv")
        rows = batch.batch
        weight, kept = row_weights(batch, True, forces.dtype)
        self.check_labels(target, rows, batch, "the teacher's Hessian-vector products")
        self.check_finite(forces, rows, batch, "the predicted forces", considered=kept)

        # a probe is usable only if it is complete over its structure: H v at one atom depends on v at all
        atom_probe_broken = ~torch.isfinite(probes).all(dim=-1)
        structure_probe_broken = torch.zeros(
            int(batch.num_graphs), probes.shape[1], dtype=torch.long, device=probes.device
        ).index_add(0, rows, atom_probe_broken.long())
        probe_usable = structure_probe_broken[rows] == 0
        complete_probes = torch.where(probe_usable.unsqueeze(-1), probes, torch.zeros_like(probes))

        predicted = hessian_vector_products(forces, positions, complete_probes)
        valid = (kept.reshape(-1, 1, 1) & probe_usable.unsqueeze(-1)) & ~target.isnan()
        self.check_finite(predicted, rows, batch, "the student's Hessian-vector products", considered=valid)
        error = (predicted[valid] - target[valid].to(predicted.dtype)) / self.scale
        per_entry = elementwise_error(error, self.kind, self.huber_delta) * broadcast_rows(weight, target)[valid]
        self.check_finite(per_entry, broadcast_rows(rows, target)[valid], batch, "the loss")
        return self.reduce(per_entry)
