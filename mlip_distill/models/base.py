"""The contract every student potential fulfils: species handling, energy terms and outputs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Mapping

import torch
from ase.data import chemical_symbols
from torch import Tensor, nn
from torch_geometric.data import Batch

from mlip_distill.models.conservative import energy_forces_stress
from mlip_distill.models.scale_shift import AtomicEnergyScaleShift, normalise_e0
from mlip_distill.models.zbl import ZBLRepulsion

NUM_ELEMENTS = len(chemical_symbols)


class StudentPotential(nn.Module, ABC):
    """A conservative, per-atom-energy potential for a fixed set of elements.

    ``atomic_energy = scale * network(atom environment) + E0[element] (+ ZBL repulsion)``; the
    network's output is exactly zero for an atom without neighbours, so an isolated atom has
    its E0. Forces and stress are derivatives of the energy (see
    :func:`~mlip_distill.models.conservative.energy_forces_stress`).

    Args:
        elements: atomic numbers the student knows.
        cutoff: neighbour cutoff, Å.
        e0: isolated-atom energy per element, ``{Z: eV}`` (string keys accepted); zeros if None.
        scale: energy scale of the network output, eV.
        avg_num_neighbors: mean neighbour count in the training data; neighbour sums are
            divided by its square root.
        zbl: add ZBL nuclear repulsion at short range.
        learn_scale: make ``scale`` trainable.

    Subclasses implement :meth:`interaction_energies` and :meth:`node_feature_irreps` and list
    their own hyperparameters in :meth:`architecture_hyperparameters`.
    """

    name: str = ""

    def __init__(
        self,
        elements: list[int],
        cutoff: float,
        e0: Mapping[int | str, float] | None = None,
        scale: float = 1.0,
        avg_num_neighbors: float = 1.0,
        zbl: bool = False,
        learn_scale: bool = False,
    ) -> None:
        super().__init__()
        self.elements = sorted({int(z) for z in elements})
        if not self.elements or not all(0 < z < NUM_ELEMENTS for z in self.elements):
            raise ValueError(f"elements must be atomic numbers 1–{NUM_ELEMENTS - 1}, got {list(elements)}")
        self.cutoff = float(cutoff)
        self.e0 = normalise_e0(self.elements, e0)
        self.scale = float(scale)
        self.avg_num_neighbors = float(avg_num_neighbors)
        self.learn_scale = bool(learn_scale)
        species_of_number = torch.full((NUM_ELEMENTS,), -1, dtype=torch.long)
        species_of_number[self.elements] = torch.arange(len(self.elements))
        self.register_buffer("species_of_number", species_of_number, persistent=False)
        self.scale_shift = AtomicEnergyScaleShift(self.elements, self.e0, scale, learn_scale)
        self.zbl = ZBLRepulsion(self.elements, cutoff) if zbl else None

    def set_e0(self, e0: Mapping[int | str, float]) -> None:
        """Replace the per-element E0 (eV), in the buffers and in :meth:`hyperparameters`."""
        self.e0 = normalise_e0(self.elements, e0)
        values = torch.tensor([self.e0[z] for z in self.elements])
        self.scale_shift.e0.copy_(values.to(self.scale_shift.e0))

    @property
    def num_species(self) -> int:
        return len(self.elements)

    @property
    def dtype(self) -> torch.dtype:
        return self.scale_shift.e0.dtype

    def species(self, numbers: Tensor) -> Tensor:
        """Species index (N,) of atomic numbers (N,); ``ValueError`` naming unknown elements."""
        in_table = (numbers > 0) & (numbers < NUM_ELEMENTS)
        species = self.species_of_number[numbers.clamp(0, NUM_ELEMENTS - 1)]
        unknown = ~in_table | (species < 0)
        if bool(unknown.any()):
            names = [
                chemical_symbols[z] if 0 < z < NUM_ELEMENTS else f"Z={z}"
                for z in sorted(set(numbers[unknown].tolist()))
            ]
            known = ", ".join(chemical_symbols[z] for z in self.elements)
            raise ValueError(f"element(s) {', '.join(names)} not known to this student (knows: {known})")
        return species

    @abstractmethod
    def interaction_energies(
        self, species: Tensor, edge_index: Tensor, edge_vectors: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Raw (dimensionless) per-atom energies (N,), zero for atoms without neighbours, and
        node features ``{name: (N, F)}``, from species (N,), edges (2, E) and edge vectors
        (E, 3) Å."""

    @abstractmethod
    def node_feature_irreps(self) -> dict[str, str]:
        """e3nn irreps of each entry of ``node_features``, e.g. ``{"layer_1": "32x0e+32x1o"}``."""

    @abstractmethod
    def architecture_hyperparameters(self) -> dict[str, Any]:
        """The subclass's own constructor arguments."""

    def hyperparameters(self) -> dict[str, Any]:
        """JSON-serialisable constructor arguments: ``build_model(self.name, **them)`` rebuilds
        this architecture."""
        return {
            "elements": list(self.elements),
            "cutoff": self.cutoff,
            "e0": {str(z): value for z, value in self.e0.items()},
            "scale": self.scale,
            "avg_num_neighbors": self.avg_num_neighbors,
            "zbl": self.zbl is not None,
            "learn_scale": self.learn_scale,
            **self.architecture_hyperparameters(),
        }

    def atomic_energies(self, batch: Batch, edge_vectors: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-atom energies (N,) eV and node features, from a batch and its edge vectors (E, 3) Å."""
        return self.atomic_energies_of_species(self.species(batch.numbers), batch.edge_index, edge_vectors)

    def atomic_energies_of_species(
        self, species: Tensor, edge_index: Tensor, edge_vectors: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-atom energies (N,) eV and node features from species indices (N,) (already
        checked, see :meth:`species`), edges (2, E) and edge vectors (E, 3) Å. Free of
        data-dependent Python branches, so that ``torch.export`` can capture it."""
        raw, node_features = self.interaction_energies(species, edge_index, edge_vectors)
        energies = self.scale_shift(raw, species)
        if self.zbl is not None:
            energies = energies + self.zbl(species, edge_index, torch.linalg.norm(edge_vectors, dim=-1))
        return energies, node_features

    def forward(
        self,
        batch: Batch,
        compute_forces: bool = True,
        compute_stress: bool = False,
        create_graph: bool | None = None,
    ) -> dict[str, Any]:
        """Energy and, on request, forces and stress of every structure in ``batch``.

        ``create_graph`` (default: ``self.training``) keeps the graph of forces and stress so
        that a loss on them can be backpropagated, or second derivatives taken.

        Returns:
            ``energy`` (B,) eV, ``atomic_energies`` (N,) eV, ``node_features``
            ``{name: (N, F)}`` (irreps from :meth:`node_feature_irreps`), and if asked
            ``forces`` (N, 3) eV/Å and ``stress`` (B, 6) eV/Å³ (Voigt, ASE sign, NaN without PBC).
        """
        return energy_forces_stress(
            self.atomic_energies,
            batch,
            compute_forces=compute_forces,
            compute_stress=compute_stress,
            create_graph=self.training if create_graph is None else create_graph,
            dtype=self.dtype,
        )
