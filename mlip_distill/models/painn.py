"""PaiNN-style network: per-atom scalar and vector features, message and update blocks
(Schütt, Unke and Gastegger, ICML 2021)."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from mlip_distill.models.base import StudentPotential
from mlip_distill.models.radial import BesselBasis, PolynomialCutoff

NORM_EPSILON = 1e-8
"""Added under the square root of vector norms: their gradient is infinite at zero length."""


def mlp(width_in: int, width_hidden: int, width_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width_in, width_hidden), nn.SiLU(), nn.Linear(width_hidden, width_out))


class MessageBlock(nn.Module):
    """Neighbour messages: ``Δs_i = Σ_j φ_s(s_j) W_s(r_ij)``,
    ``Δv_i = Σ_j v_j φ_vv(s_j) W_vv(r_ij) + r̂_ij φ_vs(s_j) W_vs(r_ij)``, sums divided by sqrt(n̄).

    Shapes:
        ``scalars`` (N, F), ``vectors`` (N, 3, F), ``edge_index`` (2, E), ``directions`` (E, 3),
        ``radial_basis`` (E, num_basis), ``envelope`` (E,) → updated (N, F), (N, 3, F).
    """

    def __init__(self, channels: int, num_basis: int, avg_num_neighbors: float) -> None:
        super().__init__()
        self.channels = channels
        self.neighbour_filter = mlp(channels, channels, 3 * channels)
        self.radial_filter = nn.Linear(num_basis, 3 * channels)
        self.neighbour_normalisation = 1.0 / math.sqrt(avg_num_neighbors)

    def forward(
        self,
        scalars: Tensor,
        vectors: Tensor,
        edge_index: Tensor,
        directions: Tensor,
        radial_basis: Tensor,
        envelope: Tensor,
    ) -> tuple[Tensor, Tensor]:
        centre, neighbour = edge_index[0], edge_index[1]
        filters = self.neighbour_filter(scalars)[neighbour] * self.radial_filter(radial_basis)
        filters = filters * (envelope * self.neighbour_normalisation).unsqueeze(-1)
        scalar_message, vector_gate, direction_gate = torch.split(filters, self.channels, dim=-1)
        vector_message = vectors[neighbour] * vector_gate.unsqueeze(1) + directions.unsqueeze(
            -1
        ) * direction_gate.unsqueeze(1)
        scalars = scalars.index_add(0, centre, scalar_message)
        vectors = vectors.index_add(0, centre, vector_message)
        return scalars, vectors


class UpdateBlock(nn.Module):
    """Per-atom mixing of scalar and vector channels: with ``U v`` and ``V v`` two linear maps of
    the vectors and ``a = MLP(s, |V v|)``, ``Δv = a_vv U v`` and ``Δs = a_sv ⟨U v, V v⟩ + a_ss``.

    Shapes: ``scalars`` (N, F), ``vectors`` (N, 3, F) → updated (N, F), (N, 3, F).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.vector_mixing = nn.Linear(channels, 2 * channels, bias=False)
        self.gates = mlp(2 * channels, channels, 3 * channels)

    def forward(self, scalars: Tensor, vectors: Tensor) -> tuple[Tensor, Tensor]:
        u_vectors, v_vectors = torch.split(self.vector_mixing(vectors), self.channels, dim=-1)
        v_norm = torch.sqrt((v_vectors * v_vectors).sum(dim=1) + NORM_EPSILON)
        gates = self.gates(torch.cat([scalars, v_norm], dim=-1))
        vector_gate, scalar_product_gate, scalar_shift = torch.split(gates, self.channels, dim=-1)
        vectors = vectors + vector_gate.unsqueeze(1) * u_vectors
        scalars = scalars + scalar_product_gate * (u_vectors * v_vectors).sum(dim=1) + scalar_shift
        return scalars, vectors


class PaiNN(StudentPotential):
    """PaiNN-style student: ``num_layers`` message + update blocks on scalar and vector
    features, then a per-atom energy read out from the scalars.

    The update block changes the scalars of an atom even without neighbours, so the readout of
    an isolated atom of each element (run through the same blocks) is subtracted: an isolated
    atom has exactly its E0.

    Args (besides those of :class:`~mlip_distill.models.base.StudentPotential`):
        channels: F, features per atom in each of the scalar and vector channels.
        num_layers: message + update blocks.
        num_basis: Bessel functions in the radial basis.
        trainable_basis: learn the Bessel frequencies.
        cutoff_power: p of the polynomial cutoff envelope.

    ``node_features``: ``layer_1`` … ``layer_{num_layers}``, ``[s, v]`` after each block, with
    irreps ``Fx0e+Fx1o`` (vectors in x, y, z order per channel).
    """

    name = "painn"

    def __init__(
        self,
        elements: list[int],
        cutoff: float = 5.0,
        e0: Mapping[int | str, float] | None = None,
        scale: float = 1.0,
        avg_num_neighbors: float = 1.0,
        zbl: bool = False,
        learn_scale: bool = False,
        channels: int = 32,
        num_layers: int = 3,
        num_basis: int = 16,
        trainable_basis: bool = False,
        cutoff_power: int = 6,
    ) -> None:
        super().__init__(elements, cutoff, e0, scale, avg_num_neighbors, zbl, learn_scale)
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.channels, self.num_layers = int(channels), int(num_layers)
        self.num_basis, self.trainable_basis = int(num_basis), bool(trainable_basis)
        self.cutoff_power = int(cutoff_power)

        self.embedding = nn.Embedding(self.num_species, channels)
        self.radial_basis = BesselBasis(cutoff, num_basis, trainable_basis)
        self.envelope = PolynomialCutoff(cutoff, cutoff_power)
        self.messages = nn.ModuleList(
            [MessageBlock(channels, num_basis, self.avg_num_neighbors) for _ in range(num_layers)]
        )
        self.updates = nn.ModuleList([UpdateBlock(channels) for _ in range(num_layers)])
        self.readout = mlp(channels, channels // 2, 1)

    def architecture_hyperparameters(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "num_layers": self.num_layers,
            "num_basis": self.num_basis,
            "trainable_basis": self.trainable_basis,
            "cutoff_power": self.cutoff_power,
        }

    def node_feature_irreps(self) -> dict[str, str]:
        irreps = f"{self.channels}x0e+{self.channels}x1o"
        return {f"layer_{index + 1}": irreps for index in range(self.num_layers)}

    def isolated_atom_readout(self) -> Tensor:
        """Raw readout (S,) of a lone atom of each element: the blocks with no neighbours."""
        scalars = self.embedding.weight
        vectors = scalars.new_zeros(self.num_species, 3, self.channels)
        for update in self.updates:
            scalars, vectors = update(scalars, vectors)
        return self.readout(scalars).squeeze(-1)

    def interaction_energies(
        self, species: Tensor, edge_index: Tensor, edge_vectors: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        distances = torch.linalg.norm(edge_vectors, dim=-1)
        directions = edge_vectors / distances.unsqueeze(-1)
        radial_basis = self.radial_basis(distances)
        envelope = self.envelope(distances)

        scalars = self.embedding(species)
        vectors = scalars.new_zeros(scalars.shape[0], 3, self.channels)
        node_features: dict[str, Tensor] = {}
        for index, (message, update) in enumerate(zip(self.messages, self.updates)):
            scalars, vectors = message(scalars, vectors, edge_index, directions, radial_basis, envelope)
            scalars, vectors = update(scalars, vectors)
            node_features[f"layer_{index + 1}"] = torch.cat(
                [scalars, vectors.transpose(1, 2).reshape(scalars.shape[0], 3 * self.channels)], dim=-1
            )
        raw = self.readout(scalars).squeeze(-1) - self.isolated_atom_readout()[species]
        return raw, node_features
