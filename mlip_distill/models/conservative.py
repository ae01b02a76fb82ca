"""Energy → forces and stress by automatic differentiation.

Forces are ``-∂E/∂pos``. Stress is ``(1/V) ∂E/∂ε`` for a symmetric strain ε applied to positions
and cell alike (``pos' = pos (1 + ε)``, ``cell' = cell (1 + ε)``), evaluated at ε = 0. This is
ASE's sign: tensile stress is positive, a compressed crystal has negative stress. Stress is NaN for
structures without periodicity or with a zero-volume cell.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor
from torch_geometric.data import Batch

VOIGT_PAIRS = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))

AtomicEnergyModel = Callable[[Batch, Tensor], tuple[Tensor, dict[str, Tensor]]]
"""``(batch, edge_vectors (E, 3) Å) → (atomic energies (N,) eV, node features {name: (N, F)})``."""


def edge_vectors(pos: Tensor, cell: Tensor, batch: Batch) -> Tensor:
    """``r_ij = pos[j] - pos[i] + S_ij @ cell``, (E, 3) Å, for ``pos`` (N, 3) and ``cell`` (B, 3, 3)."""
    centre, neighbour = batch.edge_index[0], batch.edge_index[1]
    shifts = batch.cell_shifts.to(pos.dtype)
    if cell.shape[0] == 1:
        # One structure (MD): a matrix product, whose gradient is another one. Gathering the cell
        # per edge would make the stress's backward pass add every edge into the same nine numbers,
        # which serialises on a GPU (10x slower per step at 100,000 atoms).
        image_offsets = shifts @ cell[0]
    else:
        image_offsets = torch.einsum("ek,ekl->el", shifts, cell[batch.batch[centre]])
    return pos[neighbour] - pos[centre] + image_offsets


def voigt(matrix: Tensor) -> Tensor:
    """(B, 3, 3) → (B, 6) in the order xx, yy, zz, yz, xz, xy."""
    # plain slices: indexing with lists would copy an index tensor to the device on every call,
    # which a CUDA graph cannot record
    return torch.stack([matrix[:, row, column] for row, column in VOIGT_PAIRS], dim=1)


def energy_forces_stress(
    atomic_energy_model: AtomicEnergyModel,
    batch: Batch,
    compute_forces: bool = True,
    compute_stress: bool = False,
    create_graph: bool = False,
    dtype: torch.dtype | None = None,
) -> dict[str, Any]:
    """Run ``atomic_energy_model`` on ``batch`` and differentiate its total energy.

    Gradients are taken even under ``torch.no_grad()`` (validation still needs forces); the
    returned tensors are then detached. With ``create_graph`` the forces and stress keep their
    graph, for training on forces or for Hessian-vector products (set ``batch.pos.requires_grad``
    beforehand to differentiate them with respect to positions).

    Returns:
        ============================  =========  =======================================
        key                           shape      meaning
        ============================  =========  =======================================
        ``energy``                    (B,)       total energy, eV
        ``atomic_energies``           (N,)       per-atom energy, eV
        ``node_features``             dict       ``{name: (N, F)}`` from the model
        ``forces`` (if asked)         (N, 3)     −∂E/∂pos, eV/Å
        ``stress`` (if asked)         (B, 6)     (1/V) ∂E/∂ε, Voigt, eV/Å³ (NaN if no PBC)
        ============================  =========  =======================================
    """
    grad_enabled = torch.is_grad_enabled()
    dtype = dtype or batch.pos.dtype
    num_graphs = int(batch.num_graphs)
    with torch.enable_grad():
        positions = batch.pos.to(dtype)
        if compute_forces and not positions.requires_grad:
            positions = positions.detach().requires_grad_(True)
        pos, cell = positions, batch.cell.to(dtype).reshape(num_graphs, 3, 3)
        differentiate_by = [positions] if compute_forces else []
        if compute_stress:
            displacement = torch.zeros(num_graphs, 3, 3, dtype=dtype, device=pos.device, requires_grad=True)
            strain = 0.5 * (displacement + displacement.transpose(1, 2))
            pos = pos + (pos @ strain[0] if num_graphs == 1 else torch.einsum("ni,nij->nj", pos, strain[batch.batch]))
            cell = cell + torch.bmm(cell, strain)
            differentiate_by.append(displacement)
        atomic_energies, node_features = atomic_energy_model(batch, edge_vectors(pos, cell, batch))
        energy = torch.zeros(num_graphs, dtype=atomic_energies.dtype, device=atomic_energies.device)
        energy = energy.index_add(0, batch.batch, atomic_energies)
        gradients = derivatives(energy.sum(), differentiate_by, create_graph)

    results: dict[str, Any] = {"energy": energy, "atomic_energies": atomic_energies}
    if compute_forces:
        results["forces"] = -gradients[0]
    if compute_stress:
        results["stress"] = stress_from_strain_derivative(gradients[-1], batch.cell.to(dtype), batch.pbc)
    if not grad_enabled:
        results = {key: value.detach() for key, value in results.items()}
        node_features = {key: value.detach() for key, value in node_features.items()}
    results["node_features"] = node_features
    return results


def derivatives(energy: Tensor, inputs: list[Tensor], create_graph: bool) -> list[Tensor]:
    """∂energy/∂input for each input; zeros where the energy does not depend on it (lone atoms)."""
    if not inputs:
        return []
    if not energy.requires_grad:
        return [torch.zeros_like(tensor) for tensor in inputs]
    gradients = torch.autograd.grad(
        energy, inputs, create_graph=create_graph, allow_unused=True, materialize_grads=True
    )
    return list(gradients)


def stress_from_strain_derivative(energy_derivative: Tensor, cell: Tensor, pbc: Tensor) -> Tensor:
    """(1/V) ∂E/∂ε in Voigt order, (B, 6) eV/Å³, from ∂E/∂ε (B, 3, 3) eV and cells (B, 3, 3) Å.

    NaN where the structure is not periodic or its cell has no volume.
    """
    cell = cell.reshape(-1, 3, 3)
    volume = (cell[:, 0] * torch.linalg.cross(cell[:, 1], cell[:, 2], dim=-1)).sum(dim=-1).abs()  # no LU, unlike det
    has_volume = pbc.reshape(-1, 3).any(dim=1) & (volume > 0)
    safe_volume = torch.where(has_volume, volume, torch.ones_like(volume))
    stress = voigt(energy_derivative) / safe_volume.unsqueeze(-1)
    return torch.where(has_volume.unsqueeze(-1), stress, torch.full_like(stress, float("nan")))
