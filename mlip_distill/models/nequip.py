"""NequIP-style E(3)-equivariant interaction network built from e3nn blocks."""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch
from e3nn import o3
from e3nn.math import normalize2mom
from e3nn.nn import FullyConnectedNet, Gate
from torch import Tensor, nn

from mlip_distill.models.base import StudentPotential
from mlip_distill.models.radial import BesselBasis, PolynomialCutoff


MAX_ANGULAR_ORDER = 6


def natural_irreps(channels: int, l_max: int) -> o3.Irreps:
    """``channels`` copies of each l ≤ l_max with the parity of a spherical harmonic, (-1)^l."""
    return o3.Irreps([(channels, (l, (-1) ** l)) for l in range(l_max + 1)])


class EdgeMessages(nn.Module):
    """The "uvu" tensor product of a :class:`InteractionLayer`'s messages, computed path by path.

    Gives what ``product(features, harmonics, weights)`` gives (to float round-off), for an
    ``o3.TensorProduct`` whose second input has multiplicity one and whose every path is
    weighted per edge and per channel. e3nn's generated code is general: it broadcasts every
    path to five dimensions, slices its inputs (each slice costs a zero-filled copy of the whole
    input in the backward pass), forms outer products as batched products of 1-wide matrices,
    and, since e3nn runs it eagerly on torch >= 2.10 instead of through TorchScript, also
    computes outer products that nothing reads (an (E, 32, 1, 3, 3) tensor per call for l = 1).
    Here each path is one or two broadcast multiplications, with the per-edge weights applied on
    whichever side of the coupling is smaller. No parameters: the product's Clebsch–Gordan
    coefficients and path normalisation are kept as (non-persistent) buffers.

    Shapes: ``features`` (E, irreps_in1.dim), ``harmonics`` (E, irreps_in2.dim), ``weights``
    (E, weight_numel) → (E, irreps_out.dim).
    """

    def __init__(self, product: o3.TensorProduct) -> None:
        super().__init__()
        if any(mul != 1 for mul, _ in product.irreps_in2):
            raise ValueError(f"second input must have multiplicity one, got {product.irreps_in2}")
        self.feature_sizes = [mul_ir.dim for mul_ir in product.irreps_in1]
        self.harmonic_sizes = [mul_ir.dim for mul_ir in product.irreps_in2]
        self.paths: list[tuple[int, int, int, int, int]] = []  # (i_in1, i_in2, mul, d_in, d_out)
        for index, instruction in enumerate(product.instructions):
            if instruction.connection_mode != "uvu" or not instruction.has_weight:
                raise ValueError(f"only weighted 'uvu' paths, got {instruction}")
            if instruction.i_out != index:
                raise ValueError("paths must produce the output irreps in order")
            mul, ir_in = product.irreps_in1[instruction.i_in1]
            ir_sh, ir_out = product.irreps_in2[instruction.i_in2].ir, product.irreps_out[instruction.i_out].ir
            coupling = o3.wigner_3j(ir_in.l, ir_sh.l, ir_out.l) * instruction.path_weight
            self.register_buffer(f"coupling_{index}", coupling.to(torch.get_default_dtype()), persistent=False)
            self.paths.append((instruction.i_in1, instruction.i_in2, mul, ir_in.dim, ir_out.dim))

    def forward(self, features: Tensor, harmonics: Tensor, weights: Tensor) -> Tensor:
        return torch.cat(self.path_messages(features, harmonics, weights), dim=1)

    def path_messages(self, features: Tensor, harmonics: Tensor, weights: Tensor) -> list[Tensor]:
        """The messages of each path, (E, mul * d_out) each: :meth:`forward` before the
        concatenation, which a caller that sums them over neighbours can do on atoms instead."""
        num_edges = features.shape[0]
        feature_blocks = torch.split(features, self.feature_sizes, dim=1)
        harmonic_blocks = torch.split(harmonics, self.harmonic_sizes, dim=1)
        weight_blocks = torch.split(weights, [path[2] for path in self.paths], dim=1)
        messages = []
        for index, (i_in1, i_in2, mul, d_in, d_out) in enumerate(self.paths):
            coupling: Tensor = getattr(self, f"coupling_{index}")  # (d_in, d_sh, d_out)
            x = feature_blocks[i_in1].reshape(num_edges, mul, d_in)
            weight = weight_blocks[index].unsqueeze(-1)
            # harmonics coupled to each input component: (E, d_in, d_out)
            coupled = torch.einsum("ej,ijk->eik", harmonic_blocks[i_in2], coupling)
            if d_in == 1:
                message = (x * weight) * coupled
            elif d_out == 1:
                message = (x * coupled.transpose(1, 2)).sum(dim=-1, keepdim=True) * weight
            else:
                message = (x.unsqueeze(-1) * coupled.unsqueeze(1)).sum(dim=2) * weight
            messages.append(message.reshape(num_edges, mul * d_out))
        return messages


class ScalarInputMessages(nn.Module):
    """The messages of an :class:`EdgeMessages` whose input is scalars only, summed over each
    atom's neighbours, with one weighting of the features for all paths.

    A scalar feature times ``Y_l`` couples to ``Y_l`` itself (the Clebsch-Gordan coefficients of
    0 x l -> l are the identity over sqrt(2l + 1)), so each path's message is ``x_c w_pc Y_l`` up to
    a constant: one weighting of the features for all paths and one broadcast product per path,
    instead of the general path's several small operations, which is what a call of a small cell
    spends its time on.

    Shapes: ``features`` (E, C), ``harmonics`` (E, D), ``weights`` (E, paths x C), ``centre`` (E,)
    → per path (N, d_p, C), component-major.
    """

    def __init__(self, messages: EdgeMessages, num_harmonics: int) -> None:
        super().__init__()
        if len(messages.feature_sizes) != 1 or any(d_in != 1 for _, _, _, d_in, _ in messages.paths):
            raise ValueError("the first input must be one block of scalars")
        sizes = [d_out for _, _, _, _, d_out in messages.paths]
        if [i_in2 for _, i_in2, _, _, _ in messages.paths] != list(range(len(sizes))) or sum(sizes) != num_harmonics:
            raise ValueError("paths must take the harmonics' blocks once each, in order")
        scale = []
        for index, d_out in enumerate(sizes):
            coupling = getattr(messages, f"coupling_{index}")[0]  # (d_sh, d_out)
            if not torch.allclose(coupling, coupling[0, 0] * torch.eye(d_out, dtype=coupling.dtype)):
                raise ValueError("a scalar-input path whose coupling is not a multiple of the identity")
            scale += [float(coupling[0, 0])] * d_out
        self.channels, self.sizes = messages.paths[0][2], sizes
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.get_default_dtype()), persistent=False)

    def forward(
        self, features: Tensor, harmonics: Tensor, weights: Tensor, centre: Tensor, num_atoms: int
    ) -> list[Tensor]:
        num_edges = features.shape[0]
        weighted = features.unsqueeze(1) * weights.reshape(num_edges, len(self.sizes), self.channels)  # (E, P, C)
        summed = []
        for path, y in enumerate(torch.split(harmonics * self.scale, self.sizes, dim=1)):
            # summed path by path: joining the (E, d, C) products first would copy every edge's messages
            size = y.shape[1] * self.channels
            message = (weighted[:, path, None, :] * y.unsqueeze(-1)).reshape(num_edges, size)
            total = message.new_zeros(num_atoms, size).index_add(0, centre, message)
            summed.append(total.reshape(num_atoms, y.shape[1], self.channels))
        return summed


class SpeciesLinear(nn.Module):
    """``product(features, species_one_hot, weight)`` of an ``o3.FullyConnectedTensorProduct``
    whose second input is the one-hot species (``S x 0e``), as one matrix product per path.

    Such a product is a linear map of the features chosen by the atom's element. e3nn's
    generated code gets there through several reshapes and permutations per path, which
    dominate at the tens of atoms of a small cell. No parameters: ``weight`` is the product's own.

    Shapes: ``features`` (N, irreps_in1.dim), ``species_one_hot`` (N, S), ``weight``
    (weight_numel,) → (N, irreps_out.dim).
    """

    def __init__(self, product: o3.FullyConnectedTensorProduct) -> None:
        super().__init__()
        if len(product.irreps_in2) != 1 or product.irreps_in2[0].ir != o3.Irrep("0e"):
            raise ValueError(f"second input must be one block of scalars, got {product.irreps_in2}")
        self.in_sizes = [mul_ir.dim for mul_ir in product.irreps_in1]
        self.out_irreps = [(mul, ir.dim) for mul, ir in product.irreps_out]
        self.weight_sizes: list[int] = []
        # per output block: (input block, path index, input multiplicity, coefficient)
        self.sources: list[list[tuple[int, int, int, float]]] = [[] for _ in product.irreps_out]
        for index, instruction in enumerate(product.instructions):
            if instruction.connection_mode != "uvw" or not instruction.has_weight:
                raise ValueError(f"only weighted 'uvw' paths, got {instruction}")
            mul_in, ir_in = product.irreps_in1[instruction.i_in1]
            # the Clebsch-Gordan coefficient of l x 0 -> l is 1/sqrt(2l+1) times the identity
            coefficient = instruction.path_weight / math.sqrt(ir_in.dim)
            self.sources[instruction.i_out].append((instruction.i_in1, index, mul_in, coefficient))
            self.weight_sizes.append(math.prod(instruction.path_shape))

    def forward(self, features: Tensor, species_one_hot: Tensor, weight: Tensor) -> Tensor:
        num_atoms, num_species = species_one_hot.shape
        blocks = torch.split(features, self.in_sizes, dim=1)
        path_weights = torch.split(weight, self.weight_sizes)
        outputs = []
        for (mul_out, dim), sources in zip(self.out_irreps, self.sources):
            output = features.new_zeros(num_atoms, dim, mul_out)
            for i_in, index, mul_in, coefficient in sources:
                # (N, dim, mul_in, S): each component's channels, placed in the atom's species column
                x = blocks[i_in].reshape(num_atoms, mul_in, dim).transpose(1, 2)
                x = (x.unsqueeze(-1) * species_one_hot[:, None, None, :]).reshape(num_atoms, dim, mul_in * num_species)
                matrix = path_weights[index].reshape(mul_in * num_species, mul_out) * coefficient
                output = output + x @ matrix
            outputs.append(output.transpose(1, 2).reshape(num_atoms, mul_out * dim))
        return torch.cat(outputs, dim=1)


class GateActivation(nn.Module):
    """What ``gate(x)`` of an ``e3nn.nn.Gate`` gives, as plain splits and products, with the
    gate's own activation modules. Only for a gate whose input is its scalars, gates and gated
    irreps in that order (as :class:`InteractionLayer` builds it); e3nn's version copies each
    block into new tensors through a generated graph.

    Shapes: (N, gate.irreps_in.dim) → (N, gate.irreps_out.dim).
    """

    def __init__(self, gate: Gate) -> None:
        super().__init__()
        order = [index for indices in gate.sc.cut.instructions for index in indices]
        if order != sorted(order):
            raise ValueError(f"gate input {gate.irreps_in} is not scalars, gates, gated in order")
        self.sizes = [gate.irreps_scalars.dim, gate.irreps_gates.dim, gate.irreps_gated.dim]
        self.gated = [(mul, ir.dim) for mul, ir in gate.irreps_gated]
        self.act_scalars, self.act_gates = gate.act_scalars, gate.act_gates

    def forward(self, features: Tensor) -> Tensor:
        scalars, gates, gated = torch.split(features, self.sizes, dim=1)
        scalars = self.act_scalars(scalars)
        if not self.gated:
            return scalars
        gates = torch.split(self.act_gates(gates), [mul for mul, _ in self.gated], dim=1)
        blocks = torch.split(gated, [mul * dim for mul, dim in self.gated], dim=1)
        outputs = [scalars]
        for (mul, dim), block, gate in zip(self.gated, blocks, gates):
            outputs.append((block.reshape(-1, mul, dim) * gate.unsqueeze(-1)).reshape(-1, mul * dim))
        return torch.cat(outputs, dim=1)


class InteractionLayer(nn.Module):
    """One message-passing layer.

    ``h_i' = Gate(W_{Z_i} · Σ_j R(r_ij) (x_j ⊗ Y(r̂_ij)) u(r_ij) / sqrt(n̄) + SelfConnection(h_i))``
    with ``x = Linear(h)``, radial weights R from an MLP (``radial``) of a Bessel basis, the
    cutoff envelope u, ``W_{Z_i}`` a linear map that depends on the centre atom's element, and a
    gated nonlinearity. Nothing in it has a bias, so an atom with zero features and no
    neighbours keeps zero features.

    With ``angular_order`` L > 0, the squared norm of every channel of each l > 0 block of the
    summed messages, ``|Σ_j m_ij|² / sqrt(2l + 1)``, joins the scalars that enter ``W_{Z_i}``:
    for the neighbours' scalars these are ``Σ_jk R(r_ij) R(r_ik) P_l(cos θ_jik)``, the angles at
    the centre atom itself, which messages alone reach only through a further layer (and, in
    the last layer, never). Messages of orders the layer's output does not hold (every l > 0 in
    the last layer, l_max < l ≤ L in all) are formed from the neighbours' scalars alone, for
    their norms; ``irreps_sh`` then goes up to L, and only its l ≤ l_max part meets features of
    l > 0.

    With ``bispectrum`` (scalar input only), also each channel's triple products of its summed
    messages A, ``Σ_m (l1 l2 l3; m1 m2 m3) A_{l1 m1} A_{l2 m2} A_{l3 m3}`` (Wigner 3j symbols;
    1 ≤ l1 ≤ l2 ≤ l3 ≤ L, l1 + l2 + l3 even): sums over triples of neighbours, 4-body terms with
    the centre as in SNAP's bispectrum or MACE's correlation order 3, formed per atom.

    The caller evaluates ``radial`` and multiplies the harmonics by ``u / sqrt(n̄)`` (the
    messages are linear in both), once per call for all layers.

    Shapes:
        ``features`` (N, irreps_in.dim), ``species_one_hot`` (N, S), ``edge_index`` (2, E),
        ``edge_harmonics`` (E, irreps_sh.dim) times ``u / sqrt(n̄)``, ``radial_weights``
        (E, message.weight_numel) → (N, irreps_out.dim).
    """

    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_sh: o3.Irreps,
        num_species: int,
        num_basis: int,
        radial_hidden: int,
        self_connection: bool,
        l_max: int,
        angular_order: int = 0,
        bispectrum: bool = False,
    ) -> None:
        super().__init__()
        self.irreps_in, self.irreps_out = irreps_in, irreps_out
        self.linear_in = o3.Linear(irreps_in, irreps_in)

        message_irreps, instructions = [], []
        for i_in, (multiplicity, irrep_in) in enumerate(irreps_in):
            for i_sh, (_, irrep_sh) in enumerate(irreps_sh):
                for irrep_message in irrep_in * irrep_sh:
                    feature = irrep_message in irreps_out and irrep_sh.l <= l_max
                    # a scalar times Y_l gives Y_l's irrep: no other path makes it
                    for_norm = irrep_in.l == 0 and 0 < irrep_sh.l <= angular_order and irrep_message not in irreps_out
                    if feature or for_norm:
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
        self.edge_messages = EdgeMessages(self.message)
        every_harmonic = self.message.irreps_out.dim == irreps_sh.dim * irreps_in.dim
        self.scalar_messages = (
            ScalarInputMessages(self.edge_messages, irreps_sh.dim) if irreps_in.lmax == 0 and every_harmonic else None
        )
        # evaluated by NequIP.radial_weights, for all layers at once
        self.radial = FullyConnectedNet(
            [num_basis, radial_hidden, self.message.weight_numel], torch.nn.functional.silu
        )

        scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l > 0])
        self.gate = Gate(
            scalars,
            [torch.nn.functional.silu],
            o3.Irreps(f"{gated.num_irreps}x0e") if gated.num_irreps else o3.Irreps(""),
            [torch.sigmoid] if gated.num_irreps else [],
            gated,
        )
        # (offset, multiplicity, dimension) of each l > 0 block of the messages whose norms join the scalars
        self.invariant_blocks: list[tuple[int, int, int]] = []
        if angular_order > 0:
            for (mul, ir), block in zip(self.message.irreps_out, self.message.irreps_out.slices()):
                if ir.l > 0:
                    self.invariant_blocks.append((block.start, mul, ir.dim))
        num_invariants = sum(mul for _, mul, _ in self.invariant_blocks)
        # (l1, l2, l3) of the bispectrum: coupled to a scalar, l1 + l2 + l3 even for harmonics' parity
        self.triples = [
            (l1, l2, l3)
            for l1 in range(1, angular_order + 1)
            for l2 in range(l1, angular_order + 1)
            for l3 in range(l2, min(l1 + l2, angular_order) + 1)
            if (l1 + l2 + l3) % 2 == 0
        ] if bispectrum else []
        if self.triples and self.scalar_messages is None:
            raise ValueError("the bispectrum is formed from the messages of scalar features only")
        for index, (l1, l2, l3) in enumerate(self.triples):
            self.register_buffer(f"wigner_{index}", o3.wigner_3j(l1, l2, l3).to(torch.get_default_dtype()), persistent=False)
        num_invariants += len(self.triples) * irreps_in.num_irreps
        linear_in = self.message.irreps_out + o3.Irreps(f"{num_invariants}x0e") if num_invariants else self.message.irreps_out
        self.element_linear = o3.FullyConnectedTensorProduct(
            linear_in, o3.Irreps(f"{num_species}x0e"), self.gate.irreps_in
        )
        self.species_linear = SpeciesLinear(self.element_linear)
        self.gate_activation = GateActivation(self.gate)
        self.self_connection = o3.Linear(irreps_in, self.gate.irreps_in) if self_connection else None

    def forward(
        self,
        features: Tensor,
        species_one_hot: Tensor,
        edge_index: Tensor,
        edge_harmonics: Tensor,
        radial_weights: Tensor,
    ) -> Tensor:
        centre, neighbour = edge_index[0], edge_index[1]
        neighbour_features = torch.index_select(self.linear_in(features), 0, neighbour)
        num_atoms = features.shape[0]
        if self.scalar_messages is not None:
            aggregated = self.scalar_aggregate(neighbour_features, edge_harmonics, radial_weights, centre, num_atoms)
        else:
            messages = self.edge_messages.path_messages(neighbour_features, edge_harmonics, radial_weights)
            # summed over neighbours path by path, then joined: the join then copies atoms, not edges
            aggregated = torch.cat(
                [message.new_zeros(num_atoms, message.shape[1]).index_add(0, centre, message) for message in messages],
                dim=1,
            )
            if self.invariant_blocks:
                aggregated = torch.cat([aggregated, self.norms(aggregated)], dim=1)
        update = self.species_linear(aggregated, species_one_hot, self.element_linear.weight)
        if self.self_connection is not None:
            update = update + self.self_connection(features)
        return self.gate_activation(update)

    def scalar_aggregate(
        self, features: Tensor, harmonics: Tensor, weights: Tensor, centre: Tensor, num_atoms: int
    ) -> Tensor:
        """The summed messages and their norms as :meth:`forward` joins them, through
        :class:`ScalarInputMessages`: (N, message dim + number of l > 0 channels)."""
        blocks = self.scalar_messages(features, harmonics, weights, centre, num_atoms)  # (N, d_p, C) each
        # e3nn's layout is channel-major within a block
        joined = [block.transpose(1, 2).reshape(num_atoms, block.shape[1] * block.shape[2]) for block in blocks]
        norms = [block.square().sum(dim=1) / math.sqrt(block.shape[1]) for block in blocks if block.shape[1] > 1]
        by_order = {(block.shape[1] - 1) // 2: block for block in blocks} if self.triples else {}
        triples = []
        for index, (l1, l2, l3) in enumerate(self.triples):
            first, second, third = by_order[l1], by_order[l2], by_order[l3]
            # (N, d1 d2, C) outer products of each channel, coupled to l3 by one batched matrix product
            # (faster here, with the double backward of training, than one (N C, d1 d2) product)
            outer = (first.unsqueeze(2) * second.unsqueeze(1)).reshape(num_atoms, -1, first.shape[2])
            coupled = getattr(self, f"wigner_{index}").reshape(-1, third.shape[1]).T @ outer
            triples.append((coupled * third).sum(dim=1))
        return torch.cat(joined + norms + triples if self.invariant_blocks else joined, dim=1)

    def norms(self, aggregated: Tensor) -> Tensor:
        """Per-channel squared norms of the l > 0 blocks of the summed messages over sqrt(2l + 1),
        (N, message dim) → (N, number of l > 0 channels)."""
        num_atoms = aggregated.shape[0]
        return torch.cat(
            [
                aggregated[:, start : start + mul * dim].reshape(num_atoms, mul, dim).square().sum(dim=-1) / math.sqrt(dim)
                for start, mul, dim in self.invariant_blocks
            ],
            dim=1,
        )


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
        angular_order: highest order L of the angle terms ``P_l(cos θ)`` at each atom that every
            layer gets as scalars (the norms of its summed l > 0 messages; 0: none, else l_max to 6;
            see :class:`InteractionLayer`).
        bispectrum: with ``l_max`` 0 and ``angular_order`` ≥ 2, every layer also gets the triple
            products of its summed messages (4-body terms; see :class:`InteractionLayer`).

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
        angular_order: int = 0,
        bispectrum: bool = False,
    ) -> None:
        super().__init__(elements, cutoff, e0, scale, avg_num_neighbors, zbl, learn_scale)
        if not 0 <= l_max <= 2:
            raise ValueError(f"l_max must be 0, 1 or 2, got {l_max}")
        if angular_order != 0 and not max(l_max, 1) <= angular_order <= MAX_ANGULAR_ORDER:
            raise ValueError(
                f"angular_order must be 0 or from max(l_max, 1) = {max(l_max, 1)} to {MAX_ANGULAR_ORDER}, got {angular_order}"
            )
        if bispectrum and (l_max != 0 or angular_order < 2):
            raise ValueError(f"bispectrum needs l_max 0 and angular_order 2 or more, got l_max {l_max}, angular_order {angular_order}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be at least 1, got {num_layers}")
        self.channels, self.l_max, self.num_layers = int(channels), int(l_max), int(num_layers)
        self.num_basis, self.trainable_basis = int(num_basis), bool(trainable_basis)
        self.radial_hidden, self.cutoff_power = int(radial_hidden), int(cutoff_power)
        self.angular_order = int(angular_order)
        self.bispectrum = bool(bispectrum)

        self.embedding = nn.Embedding(self.num_species, channels)
        # rows of the identity rather than one_hot, which reads the largest species back to the host on a CPU
        self.register_buffer("species_one_hot", torch.eye(self.num_species), persistent=False)
        self.radial_basis = BesselBasis(cutoff, num_basis, trainable_basis)
        self.envelope = PolynomialCutoff(cutoff, cutoff_power)
        irreps_sh = o3.Irreps.spherical_harmonics(max(l_max, self.angular_order))
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
                    self_connection=index > 0,
                    l_max=l_max,
                    angular_order=self.angular_order,
                    bispectrum=self.bispectrum,
                )
            )
            irreps_in = irreps_out
        self.layers = nn.ModuleList(layers)
        self.readout = nn.Sequential(
            nn.Linear(channels, channels // 2, bias=False),
            nn.SiLU(),
            nn.Linear(channels // 2, 1, bias=False),
        )

    def architecture_hyperparameters(self) -> dict[str, Any]:
        return {
            "channels": self.channels,
            "l_max": self.l_max,
            "num_layers": self.num_layers,
            "num_basis": self.num_basis,
            "trainable_basis": self.trainable_basis,
            "radial_hidden": self.radial_hidden,
            "cutoff_power": self.cutoff_power,
            "angular_order": self.angular_order,
            "bispectrum": self.bispectrum,
        }

    def node_feature_irreps(self) -> dict[str, str]:
        return {f"layer_{index + 1}": str(layer.irreps_out) for index, layer in enumerate(self.layers)}

    def radial_weights(self, radial_basis: Tensor) -> list[Tensor]:
        """``[layer.radial(radial_basis) for layer in self.layers]``, (E, weight_numel) each, to
        float round-off, with one matrix product for the first layer of every radial MLP (they
        share their input) and the scale factors of e3nn's layers applied to the (small) weight
        matrices instead of the (E, hidden) activations."""
        radials = [layer.radial for layer in self.layers]
        first = torch.cat([r[0].weight / math.sqrt(r[0].h_in * r[0].var_in) for r in radials], dim=1)
        # The same normalised SiLU in every layer; its normalisation constant goes into the
        # second matrices rather than over the (E, hidden) activations.
        activation = radials[0][0].act
        activation_scale = 1.0
        if isinstance(activation, normalize2mom):
            activation, activation_scale = activation.f, (1.0 if activation._is_id else activation.cst)
        hidden = activation(radial_basis @ first)
        chunks = torch.split(hidden, [r[0].h_out for r in radials], dim=1)
        return [
            chunk
            @ (r[1].weight * (activation_scale * math.sqrt(r[0].var_out * r[1].var_out / (r[1].h_in * r[1].var_in))))
            for r, chunk in zip(radials, chunks)
        ]

    def interaction_energies(
        self, species: Tensor, edge_index: Tensor, edge_vectors: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        distances = torch.linalg.norm(edge_vectors, dim=-1)
        radial_basis = self.radial_basis(distances)
        # Messages are linear in the harmonics: the envelope and the neighbour normalisation
        # are applied to them once, for every layer.
        edge_scale = self.envelope(distances) / math.sqrt(self.avg_num_neighbors)
        edge_harmonics = self.spherical_harmonics(edge_vectors) * edge_scale.unsqueeze(-1)
        species_one_hot = self.species_one_hot[species].to(edge_vectors.dtype)

        features = self.embedding(species)
        node_features: dict[str, Tensor] = {}
        for index, (layer, weights) in enumerate(zip(self.layers, self.radial_weights(radial_basis))):
            features = layer(features, species_one_hot, edge_index, edge_harmonics, weights)
            node_features[f"layer_{index + 1}"] = features
        return self.readout(features).squeeze(-1), node_features
