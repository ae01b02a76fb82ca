"""Student architectures: the shared physics checks, plus what is specific to each."""

from __future__ import annotations

import pytest

from mlip_distill.models import MODEL_NAMES, NequIP, PaiNN, StudentPotential, build_model
from physics_mixin import CUTOFF, StudentPhysicsTests


class TestNequIP(StudentPhysicsTests):
    """l_max = 2 exercises every tensor-product path the architecture allows."""

    def make_model(self, elements: list[int], e0: dict[int, float], zbl: bool = False) -> StudentPotential:
        return NequIP(
            elements, CUTOFF, e0, avg_num_neighbors=20.0, zbl=zbl, channels=8, l_max=2, num_layers=2, radial_hidden=16
        )


class TestNequIPScalarWithZBL(StudentPhysicsTests):
    with_zbl = True

    def make_model(self, elements: list[int], e0: dict[int, float], zbl: bool = False) -> StudentPotential:
        return NequIP(elements, CUTOFF, e0, zbl=zbl, channels=8, l_max=0, num_layers=2, radial_hidden=16)


class TestNequIPAngles(StudentPhysicsTests):
    """Angle terms of a higher order than the features: the l = 2 and 3 messages exist for their norms only."""

    def make_model(self, elements: list[int], e0: dict[int, float], zbl: bool = False) -> StudentPotential:
        return NequIP(
            elements, CUTOFF, e0, avg_num_neighbors=20.0, zbl=zbl, channels=8, l_max=1, num_layers=2,
            radial_hidden=16, angular_order=3,
        )


class TestNequIPScalarAngles(StudentPhysicsTests):
    """Scalar features with angle terms up to P_2."""

    def make_model(self, elements: list[int], e0: dict[int, float], zbl: bool = False) -> StudentPotential:
        return NequIP(
            elements, CUTOFF, e0, avg_num_neighbors=20.0, zbl=zbl, channels=8, l_max=0, num_layers=2,
            radial_hidden=16, angular_order=2,
        )


class TestNequIPBispectrum(StudentPhysicsTests):
    """Scalar features with angle terms up to P_2 and their bispectrum (the si_sevennet student's kind)."""

    def make_model(self, elements: list[int], e0: dict[int, float], zbl: bool = False) -> StudentPotential:
        return NequIP(
            elements, CUTOFF, e0, avg_num_neighbors=20.0, zbl=zbl, channels=8, l_max=0, num_layers=2,
            radial_hidden=16, angular_order=2, bispectrum=True,
        )


class TestPaiNN(StudentPhysicsTests):
    def make_model(self, elements: list[int], e0: dict[int, float], zbl: bool = False) -> StudentPotential:
        return PaiNN(elements, CUTOFF, e0, avg_num_neighbors=20.0, zbl=zbl, channels=16, num_layers=2)


def test_registry_names_every_model():
    assert set(MODEL_NAMES) == {"nequip", "painn"}
    for name in MODEL_NAMES:
        assert build_model(name, elements=[1, 8], cutoff=CUTOFF).name == name


def test_registry_rejects_unknown_name():
    with pytest.raises(ValueError, match="unknown model 'schnet'"):
        build_model("schnet", elements=[1])


def test_missing_e0_is_named():
    with pytest.raises(ValueError, match="E0 missing for element\\(s\\) O"):
        PaiNN([1, 8], CUTOFF, e0={1: -13.6})


def test_nequip_rejects_unsupported_l_max():
    with pytest.raises(ValueError, match="l_max must be 0, 1 or 2"):
        NequIP([1], CUTOFF, l_max=3)


def test_nequip_fused_paths_match_e3nn_modules():
    """The messages, radial weights, element-dependent linear maps and gates NequIP computes
    itself equal e3nn's own modules'."""
    import torch

    torch.manual_seed(0)
    model = NequIP([1, 8], CUTOFF, channels=4, l_max=2, num_layers=3, radial_hidden=8).double()
    num_edges = 7
    basis = torch.rand(num_edges, model.num_basis, dtype=torch.float64)
    for layer, weights in zip(model.layers, model.radial_weights(basis)):
        torch.testing.assert_close(weights, layer.radial(basis))
        x = layer.message.irreps_in1.randn(num_edges, -1, dtype=torch.float64)
        y = layer.message.irreps_in2.randn(num_edges, -1, dtype=torch.float64)
        torch.testing.assert_close(layer.edge_messages(x, y, weights), layer.message(x, y, weights))
        aggregated = layer.message.irreps_out.randn(5, -1, dtype=torch.float64)
        one_hot = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 0, 1]), 2).double()
        torch.testing.assert_close(
            layer.species_linear(aggregated, one_hot, layer.element_linear.weight),
            layer.element_linear(aggregated, one_hot),
        )
        update = layer.gate.irreps_in.randn(5, -1, dtype=torch.float64)
        torch.testing.assert_close(layer.gate_activation(update), layer.gate(update))


@pytest.mark.parametrize("l_max, angular_order", [(0, 0), (2, 0), (0, 1), (0, 2), (1, 2), (2, 2), (0, 3), (1, 4)])
def test_one_layer_sees_the_angle_at_an_atom_only_with_angle_terms(l_max, angular_order):
    """A bent triatomic whose outer atoms are beyond the cutoff of each other: one layer of
    messages alone sums pair terms around the centre, so the energy cannot depend on the angle;
    the norms of the summed l > 0 messages make it depend on the angle."""
    import numpy as np
    import torch
    from ase import Atoms
    from torch_geometric.data import Batch

    from mlip_distill.data.graph import atoms_to_graph

    torch.manual_seed(0)
    model = NequIP([1], 1.5, channels=4, l_max=l_max, num_layers=1, radial_hidden=8, angular_order=angular_order)
    energies = []
    for angle in (100.0, 130.0, 160.0):  # outer atoms 1.53-1.97 Å apart, beyond the 1.5 Å cutoff
        half = np.radians(angle / 2)
        atoms = Atoms("H3", positions=[[0, 0, 0], [np.sin(half), np.cos(half), 0], [-np.sin(half), np.cos(half), 0]])
        batch = Batch.from_data_list([atoms_to_graph(atoms, 1.5, dtype=torch.float64)])
        energies.append(float(model.double()(batch, compute_forces=False)["energy"].detach().sum()))
    spread = max(energies) - min(energies)
    assert (spread > 1e-6) == (angular_order > 0), energies


def test_nequip_rejects_angular_order_below_l_max():
    with pytest.raises(ValueError, match="angular_order must be 0 or from max\\(l_max, 1\\) = 2 to 6, got 1"):
        NequIP([1], CUTOFF, l_max=2, angular_order=1)


def test_angle_terms_are_three_body_and_the_bispectrum_four_body():
    """A layer's invariants of one atom as functions of which of its neighbours are there: the
    norms of the summed messages are sums over pairs of neighbours (3-body with the centre), so
    their third inclusion-exclusion difference vanishes; the bispectrum's triple products are sums
    over triples (4-body): not zero at the third difference, zero at the fourth."""
    import itertools

    import torch

    torch.manual_seed(0)
    model = NequIP([1], CUTOFF, channels=4, l_max=0, num_layers=1, radial_hidden=8, angular_order=3, bispectrum=True)
    layer = model.double().layers[0]
    features = torch.randn(4, 4, dtype=torch.float64)
    harmonics = torch.randn(4, layer.message.irreps_in2.dim, dtype=torch.float64)
    weights = torch.randn(4, layer.message.weight_numel, dtype=torch.float64)
    num_norms = sum(mul for _, mul, _ in layer.invariant_blocks)

    def difference(neighbours: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Σ over subsets T of the neighbours of (-1)^(n - |T|) times the norms and the triple products."""
        norms = triples = 0.0
        for size in range(len(neighbours) + 1):
            for subset in itertools.combinations(neighbours, size):
                index = torch.tensor(subset, dtype=torch.long)
                centre = torch.zeros(len(subset), dtype=torch.long)
                invariants = layer.scalar_aggregate(features[index], harmonics[index], weights[index], centre, 1)[0]
                sign = (-1) ** (len(neighbours) - size)
                norms = norms + sign * invariants[layer.message.irreps_out.dim :][:num_norms]
                triples = triples + sign * invariants[layer.message.irreps_out.dim + num_norms :]
        return norms, triples

    norms, triples = difference((0, 1, 2))
    assert triples.numel() == 4 * len(layer.triples) == 16
    assert norms.abs().max() < 1e-12 and triples.abs().max() > 1e-3
    _, triples = difference((0, 1, 2, 3))
    assert triples.abs().max() < 1e-12


@pytest.mark.parametrize("l_max, angular_order", [(1, 2), (0, 1), (0, 0)])
def test_bispectrum_needs_scalar_features_and_angle_terms(l_max, angular_order):
    with pytest.raises(ValueError, match=f"bispectrum needs l_max 0 and angular_order 2 or more, got l_max {l_max}, "):
        NequIP([1], CUTOFF, l_max=l_max, angular_order=angular_order, bispectrum=True)


@pytest.mark.parametrize("l_max, angular_order", [(0, 2), (0, 1), (1, 0), (2, 2), (0, 4)])
def test_scalar_input_messages_match_the_path_by_path_sums(l_max, angular_order):
    """Layers whose input is scalars sum all their messages in one product; the result (messages
    and their norms) equals the path-by-path sums of EdgeMessages."""
    import torch

    torch.manual_seed(0)
    model = NequIP([1, 8], CUTOFF, channels=4, l_max=l_max, num_layers=2, radial_hidden=8, angular_order=angular_order).double()
    layer = model.layers[0]
    assert layer.scalar_messages is not None
    num_edges, num_atoms = 11, 5
    features = torch.randn(num_edges, 4, dtype=torch.float64)
    harmonics = torch.randn(num_edges, layer.message.irreps_in2.dim, dtype=torch.float64)
    weights = torch.randn(num_edges, layer.message.weight_numel, dtype=torch.float64)
    centre = torch.randint(0, num_atoms, (num_edges,))
    messages = layer.edge_messages(features, harmonics, weights)
    summed = messages.new_zeros(num_atoms, messages.shape[1]).index_add(0, centre, messages)
    if layer.invariant_blocks:
        summed = torch.cat([summed, layer.norms(summed)], dim=1)
    torch.testing.assert_close(layer.scalar_aggregate(features, harmonics, weights, centre, num_atoms), summed)
