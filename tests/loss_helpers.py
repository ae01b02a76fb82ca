"""Batches and a small student shared by the loss tests."""

from __future__ import annotations

import numpy as np
import torch
from torch_geometric.data import Batch

from conftest import emt_copper_cells
from mlip_distill.data.graph import build_graph
from mlip_distill.data.io import labels_from_atoms
from mlip_distill.models import build_model

CUTOFF = 4.0
STUDENT_LAYER_IRREPS = {"layer_1": "4x0e+4x1o", "layer_2": "4x0e"}
TEACHER_IRREPS = "3x0e+2x1o"


def graphs(cells, dtype=torch.float64, system_ids=None, first_structure_id: int = 10):
    """Labelled graphs of ``cells``; structure ``k`` gets ``structure_id = first_structure_id + k``."""
    system_ids = system_ids if system_ids is not None else [0] * len(cells)
    return [
        build_graph(
            atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, CUTOFF, labels_from_atoms(atoms),
            structure_id=first_structure_id + k, system_id=system, dtype=dtype,
        )
        for k, (atoms, system) in enumerate(zip(cells, system_ids))
    ]


def copper_batch(n: int = 3, dtype=torch.float64, system_ids=None, seed: int = 0) -> Batch:
    """``n`` rattled 8-atom EMT copper cells with energy, forces, stress and atomic energies."""
    return Batch.from_data_list(graphs(emt_copper_cells(n, seed=seed), dtype, system_ids))


def small_student(dtype=torch.float64, seed: int = 0):
    """A NequIP student (4 channels, 2 layers, l_max 1) for copper, fresh weights."""
    torch.manual_seed(seed)
    model = build_model(
        "nequip", elements=[29], cutoff=CUTOFF, e0={29: -3.5}, scale=0.5, avg_num_neighbors=12.0,
        channels=4, num_layers=2, l_max=1, num_basis=4, radial_hidden=8,
    )
    return model.to(dtype)


def add_distillation_labels(batch: Batch, probes: int = 2, seed: int = 0) -> Batch:
    """Random teacher features (``features_teacher``, irreps :data:`TEACHER_IRREPS`) and
    Hessian-vector probes/products on ``batch``."""
    rng = np.random.default_rng(seed)
    dtype = batch.pos.dtype
    n = batch.num_nodes
    batch.features_teacher = torch.as_tensor(rng.normal(size=(n, 9)), dtype=dtype)
    batch.hvp_v = torch.as_tensor(rng.normal(size=(n, probes, 3)), dtype=dtype)
    batch.hvp_hv = torch.as_tensor(rng.normal(size=(n, probes, 3)), dtype=dtype)
    return batch


def student_prediction(model, batch: Batch, stress: bool = True) -> dict:
    """The student's prediction with everything a term may differentiate: forces with
    ``create_graph`` and positions that require grad (for Hessian-vector products)."""
    batch.pos.requires_grad_(True)
    return model(batch, compute_forces=True, compute_stress=stress, create_graph=True)
