"""NequIP-style E(3)-equivariant interaction network built from e3nn blocks."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet, Gate
from torch import Tensor, nn

from mlip_distill.models.base import StudentPotential
from mlip_distill.models.e3nn_codegen import prune_unused_einsums
from mlip_distill.models.radial import BesselBasis, PolynomialCutoff


def natural_irreps(channels: int, l_max: int) -> o3.Irreps:
    """``channels`` copies of each l ≤ l_max with the parity of a spherical harmonic, (-1)^l."""
    return o3.Irreps([(channels, (l, (-1) ** l)) for l in range(l_max + 1)])


class InteractionLayer(nn.Module):
    """One message-passing layer.

    ``h_i' = Gate(W_{Z_i} · Σ_j R(r_ij) (x_j ⊗ Y(r̂_ij)) / sqrt(n̄) + SelfConnection(h_i))`` with
    ``x = Linear(h)``, radial weights R from an MLP of a Bessel basis times the cutoff envelope,
    ``W_{Z_i}`` a linear map that depends on the centre atom's element, and a gated
    nonlinearity. Nothing in it has a bias, so an atom with zero features and no neighbours
    keeps zero features.

    Shapes:
        ``features`` (N, irreps_in.dim), ``species_one_hot`` (N, S), ``edge_index`` (2, E),
        ``edge_harmonics`` (E, irreps_sh.dim), ``radial_basis`` (E, num_basis),
        ``envelope`` (E,) → (N, irreps_out.dim).
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_sh: o3.Irreps,
        num_species: int,
        num_basis: int,
        radial_hidden: int,
        avg_num_neighbors: float,
        self_connection: bool,
    ) -> None:
        super().__init__()
        self.irreps_in, self.irreps_out = irreps_in, irreps_out
        self.linear_in = o3.Linear(irreps_in, irreps_in)

        message_irreps, instructions = [], []
        for i_in, (multiplicity, irrep_in) in enumerate(irreps_in):
            for i_sh, (_, irrep_sh) in enumerate(irreps_sh):
                for irrep_message in irrep_in * irrep_sh:
                    if irrep_message in irreps_out:
                        instructions.append((i_in, i_sh, len(message_irreps), "uvu", True))
                        message_irreps.append((multiplicity, irrep_message))
        self.message = o3.TensorProduct(
            irreps_in,
            irreps_sh,
            o3.Irreps(message_irreps),
            instructions,
            shared_weights=False,
            internal_weights=False,
        )
        self.radial = FullyConnectedNet(
            [num_basis, radial_hidden, self.message.weight_numel], torch.nn.functional.silu
        )
        self.neighbour_normalisation = 1.0 / math.sqrt(avg_num_neighbors)

        scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l > 0])
        self.gate = Gate(
            scalars,
            [torch.nn.functional.silu],
            o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps(""),
            [torch.sigmoid] if gated.num_irreps else [],
            gated,
        )
        self.element_linear = o3.FullyConnectedTensorProduct(
            self.message.irreps_out, o3.Irreps(f"{num_species}x0e"), self.gate.irreps_in
        )
        self.self_connection = o3.Linear(irreps_in, self.gate.irreps_in) if self_connection else None

    def forward(
        self,
        features: Tensor,
        species_one_hot: Tensor,
        edge_index: Tensor,
        edge_harmonics: Tensor,
        radial_basis: Tensor,
        envelope: Tensor,
    ) -> Tensor:
        centre, neighbour = edge_index[0], edge_index[1]
        weights = self.radial(radial_basis) * envelope.unsqueeze(-1)
        messages = self.message(self.linear_in(features)[neighbour], edge_harmonics, weights)
        aggregated = torch.zeros(
            features.shape[0], messages.shape[1], dtype=messages.dtype, device=messages.device
        ).index_add(0, centre, messages)
        update = self.element_linear(aggregated * self.neighbour_normalisation, species_one_hot)
        if self.self_connection is not None:
            update = update + self.self_connection(features)
        return self.gate(update)


class NequIP(StudentPotential):
    """NequIP-style student: equivariant features up to ``l_max`` refined by ``num_layers``
    interaction layers, then a per-atom energy read out from the scalars.

    The first layer has no self-connection: its input is the element embedding, which would
    otherwise give an atom without neighbours a non-zero energy. The last layer produces only
    scalars, since only they reach the energy.

    Args (besides those of :class:`~mlip_distill.models.base.StudentPotential`):
        channels: multiplicity of every irrep of the hidden features.
        l_max: highest rotation order of the features and spherical harmonics (0–2).
        num_layers: interaction layers.
        num_basis: Bessel functions in the radial basis.
        trainable_basis: learn the Bessel frequencies.
        radial_hidden: width of the radial MLP's hidden layer.
        cutoff_power: p of the polynomial cutoff envelope.

    ``node_features``: ``layer_1`` … ``layer_{num_layers}``, the features after each layer.
    """

    name = "nequip"

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
        l_max: int = 1,
        num_layers: int = 3,
        num_basis: int = 8,
        trainable_basis: bool = False,
        radial_hidden: int = 64,
        cutoff_power: int = 6,
    ) -> None:
        super().__init__(elements, cutoff, e0, scale, avg_num_neighbors, zbl, learn_scale)
        if not 0 <= l_max <= 2:
            raise ValueError(f"l_max must be 0, 1 or 2, got {l_max}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.channels, self.l_max, self.num_layers = int(channels), int(l_max), int(num_layers)
        self.num_basis, self.trainable_basis = int(num_basis), bool(trainable_basis)
        self.radial_hidden, self.cutoff_power = int(radial_hidden), int(cutoff_power)

        self.embedding = nn.Embedding(self.num_species, channels)
        self.radial_basis = BesselBasis(cutoff, num_basis, trainable_basis)
        self.envelope = PolynomialCutoff(cutoff, cutoff_power)
        irreps_sh = o3.Irreps.spherical_harmonics(l_max)
        self.spherical_harmonics = o3.SphericalHarmonics(irreps_sh, normalize=True, normalization="component")

        scalars = o3.Irreps(f"{channels}x0e")
        hidden = natural_irreps(channels, l_max)
        layers = []
        irreps_in = scalars
        for index in range(num_layers):
            irreps_out = scalars if index == num_layers - 1 else hidden
            layers.append(
                InteractionLayer(
                    irreps_in,
                    irreps_out,
                    irreps_sh,
                    self.num_species,
                    num_basis,
                    radial_hidden,
                    self.avg_num_neighbors,
                    self_connection=index > 0,
                )
            )
            irreps_in = irreps_out
        self.layers = nn.ModuleList(layers)
        self.readout = nn.Sequential(
            nn.Linear(channels, channels // 2, bias=False),
            nn.SiLU(),
            nn.Linear(channels // 2, 1, bias=False),
        )
        prune_unused_einsums(self)

    def architecture_hyperparameters(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "l_max": self.l_max,
            "num_layers": self.num_layers,
            "num_basis": self.num_basis,
            "trainable_basis": self.trainable_basis,
            "radial_hidden": self.radial_hidden,
            "cutoff_power": self.cutoff_power,
        }

    def node_feature_irreps(self) -> dict[str, str]:
        return {f"layer_{index + 1}": str(layer.irreps_out) for index, layer in enumerate(self.layers)}

    def interaction_energies(
        self, species: Tensor, edge_index: Tensor, edge_vectors: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        distances = torch.linalg.norm(edge_vectors, dim=-1)
        edge_harmonics = self.spherical_harmonics(edge_vectors)
        radial_basis = self.radial_basis(distances)
        envelope = self.envelope(distances)
        species_one_hot = torch.nn.functional.one_hot(species, self.num_species).to(edge_vectors.dtype)

        features = self.embedding(species)
        node_features: dict[str, Tensor] = {}
        for index, layer in enumerate(self.layers):
            features = layer(features, species_one_hot, edge_index, edge_harmonics, radial_basis, envelope)
            node_features[f"layer_{index + 1}"] = features
        return self.readout(features).squeeze(-1), node_features
