"""Ziegler–Biersack–Littmark (ZBL) universal screened nuclear repulsion, as an energy prior."""

from __future__ import annotations

import torch
from ase.data import covalent_radii
from torch import Tensor, nn

from mlip_distill.models.radial import PolynomialCutoff

COULOMB_CONSTANT = 14.399645  # e²/(4πε0), eV·Å
BOHR_RADIUS = 0.52917721  # Å
ZBL_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
ZBL_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)


class ZBLRepulsion(nn.Module):
    """Per-atom ZBL repulsion energy from a full (both directions) neighbour list.

    ``E_ij = k Z_i Z_j / r φ(r / a_ij)`` with ``a_ij = 0.8854 a_0 / (Z_i^0.23 + Z_j^0.23)``,
    multiplied by a polynomial envelope that reaches zero at ``min(cutoff, R_i + R_j)``
    (covalent radii). Each directed edge gives half of the pair energy to its centre atom.

    Args:
        elements: atomic numbers, in the order of the species indices.
        cutoff: the model's cutoff, Å; the repulsion never reaches beyond it.

    Shapes:
        ``species`` (N,) species index, ``edge_index`` (2, E), ``distances`` (E,) Å
        → (N,) eV.
    """

    def __init__(self, elements: list[int], cutoff: float) -> None:
        super().__init__()
        numbers = torch.tensor([float(z) for z in elements])
        self.register_buffer("atomic_numbers", numbers)
        self.register_buffer("covalent_radii", torch.tensor([float(covalent_radii[z]) for z in elements]))
        self.register_buffer("coefficients", torch.tensor(ZBL_COEFFICIENTS))
        self.register_buffer("exponents", torch.tensor(ZBL_EXPONENTS))
        self.cutoff = float(cutoff)
        self.envelope = PolynomialCutoff(1.0)

    def forward(self, species: Tensor, edge_index: Tensor, distances: Tensor) -> Tensor:
        centre, neighbour = species[edge_index[0]], species[edge_index[1]]
        z_i, z_j = self.atomic_numbers[centre], self.atomic_numbers[neighbour]
        screening_length = 0.8854 * BOHR_RADIUS / (z_i.pow(0.23) + z_j.pow(0.23))
        x = (distances / screening_length).unsqueeze(-1)
        screening = (self.coefficients * torch.exp(-self.exponents * x)).sum(-1)
        pair_energy = COULOMB_CONSTANT * z_i * z_j / distances * screening
        # ZBL is meant for close approach only: switched off at the cutoff alone it would
        # still add eV per atom at equilibrium bond lengths, which the network must then undo.
        switch_radius = (self.covalent_radii[centre] + self.covalent_radii[neighbour]).clamp(max=self.cutoff)
        pair_energy = pair_energy * self.envelope(distances / switch_radius)
        energies = torch.zeros(species.shape[0], dtype=distances.dtype, device=distances.device)
        return energies.index_add(0, edge_index[0], 0.5 * pair_energy)
