"""Physics every student potential must pass, written once and inherited per architecture.

A test module subclasses :class:`StudentPhysicsTests` and implements ``make_model``; pytest
collects the subclass (its name starts with ``Test``). The checks run in float64 on small,
randomly initialised models, so they test the architecture, not a fit.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from e3nn import o3
from torch_geometric.data import Batch

from mlip_distill.data.graph import atoms_to_graph
from mlip_distill.models import StudentPotential, build_model

CUTOFF = 4.0
ELEMENTS = [29, 79]
E0 = {29: -3.5, 79: -2.25}


def rattled_alloy(seed: int = 0) -> Atoms:
    """Eight-atom Cu–Au crystal in a triclinic cell, rattled; many periodic images within the cutoff."""
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True) * (2, 1, 1)
    atoms.numbers[[1, 6]] = 79
    shear = np.eye(3) + rng.uniform(-0.08, 0.08, size=(3, 3))
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
    return atoms


def copper_crystal(seed: int = 1) -> Atoms:
    """Rattled four-atom fcc copper, cubic cell."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def alloy_cluster(seed: int = 2) -> Atoms:
    """Six-atom Cu–Au cluster without periodicity."""
    rng = np.random.default_rng(seed)
    positions = np.array(
        [[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5], [2.5, 2.5, 0], [1.2, 1.3, 2.0]], dtype=float
    )
    positions += rng.normal(scale=0.1, size=positions.shape)
    return Atoms("Cu4Au2", positions=positions, pbc=False)


def random_rotation(seed: int, proper: bool = True) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if (np.linalg.det(q) > 0) != proper:
        q[:, 0] *= -1
    return q


def voigt_to_matrix(stress: np.ndarray) -> np.ndarray:
    xx, yy, zz, yz, xz, xy = stress
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def batch_of(*structures: Atoms) -> Batch:
    return Batch.from_data_list([atoms_to_graph(atoms, CUTOFF, dtype=torch.float64) for atoms in structures])


class StudentPhysicsTests:
    """Inherit and implement :meth:`make_model` to run every physics check on an architecture.

    Set ``with_zbl`` to run the checks with the ZBL repulsion prior switched on.
    """

    with_zbl: bool = False

    def make_model(self, elements: list[int], e0: dict[int, float], zbl: bool = False) -> StudentPotential:
        """A fresh, small student in the default dtype, cutoff :data:`CUTOFF`."""
        raise NotImplementedError

    @pytest.fixture(scope="class")
    def model(self) -> StudentPotential:
        torch.manual_seed(0)
        return self.make_model(ELEMENTS, E0, zbl=self.with_zbl).double().eval()

    @staticmethod
    def evaluate(model: StudentPotential, *structures: Atoms, stress: bool = False) -> dict[str, np.ndarray]:
        output = model(batch_of(*structures), compute_forces=True, compute_stress=stress)
        return {key: value.detach().numpy() for key, value in output.items() if key != "node_features"}

    def energy_at(self, model: StudentPotential, batch: Batch, positions: torch.Tensor, cell: torch.Tensor) -> float:
        """Energy with the graph's edges kept fixed and positions / cell replaced."""
        batch.pos, batch.cell = positions, cell
        return float(model(batch, compute_forces=False)["energy"].detach().sum())

    def test_output_keys_and_shapes(self, model):
        structures = [rattled_alloy(), alloy_cluster()]
        output = model(batch_of(*structures), compute_forces=True, compute_stress=True)
        n_atoms = sum(len(atoms) for atoms in structures)
        assert set(output) == {"energy", "atomic_energies", "forces", "stress", "node_features"}
        assert output["energy"].shape == (2,)
        assert output["atomic_energies"].shape == (n_atoms,)
        assert output["forces"].shape == (n_atoms, 3)
        assert output["stress"].shape == (2, 6)
        assert all(value.dtype == torch.float64 for key, value in output.items() if key != "node_features")
        assert torch.isfinite(output["stress"][0]).all() and torch.isnan(output["stress"][1]).all()
        torch.testing.assert_close(
            output["energy"], torch.stack([output["atomic_energies"][:8].sum(), output["atomic_energies"][8:].sum()])
        )
        irreps = model.node_feature_irreps()
        assert set(irreps) == set(output["node_features"])
        for name, features in output["node_features"].items():
            assert features.shape == (n_atoms, o3.Irreps(irreps[name]).dim)
        assert "forces" not in model(batch_of(structures[0]), compute_forces=False)

    def test_energy_depends_on_geometry(self, model):
        atoms = rattled_alloy()
        moved = atoms.copy()
        moved.positions[0] += [0.15, -0.1, 0.05]
        energy, energy_moved = self.evaluate(model, atoms, moved)["energy"]
        assert abs(energy - energy_moved) > 1e-4
        assert np.abs(self.evaluate(model, atoms)["forces"]).max() > 1e-3

    @pytest.mark.parametrize("proper", [True, False], ids=["rotation", "rotoreflection"])
    def test_rotation_invariance_and_equivariance(self, model, proper):
        atoms, cluster = rattled_alloy(), alloy_cluster()
        rotation = random_rotation(3, proper)
        turned, turned_cluster = atoms.copy(), cluster.copy()
        turned.set_cell(atoms.cell.array @ rotation.T)
        turned.positions = atoms.positions @ rotation.T
        turned_cluster.positions = cluster.positions @ rotation.T
        before = self.evaluate(model, atoms, cluster, stress=True)
        after = self.evaluate(model, turned, turned_cluster, stress=True)
        np.testing.assert_allclose(after["energy"], before["energy"], rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(after["forces"], before["forces"] @ rotation.T, atol=1e-10)
        stress_turned = rotation @ voigt_to_matrix(before["stress"][0]) @ rotation.T
        np.testing.assert_allclose(voigt_to_matrix(after["stress"][0]), stress_turned, atol=1e-10)

    def test_translation_invariance(self, model):
        atoms, cluster = rattled_alloy(), alloy_cluster()
        shifted, shifted_cluster = atoms.copy(), cluster.copy()
        shifted.positions += [0.7, -1.3, 2.1]
        shifted_cluster.positions += [10.0, -3.0, 0.5]
        before = self.evaluate(model, atoms, cluster)
        after = self.evaluate(model, shifted, shifted_cluster)
        np.testing.assert_allclose(after["energy"], before["energy"], rtol=1e-10)
        np.testing.assert_allclose(after["forces"], before["forces"], atol=1e-10)

    def test_permutation_invariance(self, model):
        atoms = rattled_alloy()
        order = np.random.default_rng(4).permutation(len(atoms))
        before = self.evaluate(model, atoms, stress=True)
        after = self.evaluate(model, atoms[order], stress=True)
        np.testing.assert_allclose(after["energy"], before["energy"], rtol=1e-10)
        np.testing.assert_allclose(after["forces"], before["forces"][order], atol=1e-10)
        np.testing.assert_allclose(after["stress"], before["stress"], atol=1e-10)

    @pytest.mark.parametrize("structure", [rattled_alloy, alloy_cluster])
    def test_forces_are_energy_gradient(self, model, structure):
        batch = batch_of(structure())
        forces = model(batch)["forces"].detach()
        positions, cell = batch.pos.clone(), batch.cell.clone()
        step = 1e-4
        for atom, direction in [(0, 0), (1, 2), (3, 1), (5, 0), (5, 2)]:
            displaced = []
            for sign in (1.0, -1.0):
                moved = positions.clone()
                moved[atom, direction] += sign * step
                displaced.append(self.energy_at(model, batch, moved, cell))
            numerical = -(displaced[0] - displaced[1]) / (2 * step)
            assert numerical == pytest.approx(float(forces[atom, direction]), rel=1e-6, abs=1e-8)

    def test_stress_is_strain_derivative(self, model):
        batch = batch_of(rattled_alloy())
        stress = model(batch, compute_stress=True)["stress"].detach()[0]
        positions, cell = batch.pos.clone(), batch.cell.clone()
        volume = float(torch.linalg.det(cell[0]).abs())
        step = 1e-5
        for component, (row, column) in enumerate([(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]):
            strained = []
            for sign in (1.0, -1.0):
                strain = torch.zeros(3, 3, dtype=torch.float64)
                strain[row, column] = strain[column, row] = sign * step
                deformation = torch.eye(3, dtype=torch.float64) + strain
                strained.append(self.energy_at(model, batch, positions @ deformation, cell @ deformation))
            # a shear strain of `step` enters both ε_ab and ε_ba
            multiplicity = 1 if row == column else 2
            numerical = (strained[0] - strained[1]) / (2 * step) / volume / multiplicity
            assert numerical == pytest.approx(float(stress[component]), rel=1e-6, abs=1e-9)

    def test_compressed_crystal_has_negative_stress(self):
        repulsion_only = self.make_model([29], {29: 0.0}, zbl=True).double().eval()
        with torch.no_grad():
            repulsion_only.scale_shift.scale.zero_()
        compressed = bulk("Cu", "fcc", a=3.0, cubic=True)
        stress = self.evaluate(repulsion_only, compressed, stress=True)["stress"][0]
        assert (stress[:3] < 0).all()
        np.testing.assert_allclose(stress[3:], 0.0, atol=1e-10)

    def test_energy_smooth_at_cutoff(self, model):
        e0_sum = E0[29] + E0[79]
        energies, forces = [], []
        for distance in CUTOFF + np.array([-2e-2, -1e-2, -1e-3, -1e-5, 1e-5, 1e-2]):
            dimer = Atoms("CuAu", positions=[[0, 0, 0], [distance, 0, 0]])
            output = self.evaluate(model, dimer)
            energies.append(output["energy"][0] - e0_sum)
            forces.append(output["forces"][0, 0])
        # 1e-3 and 1e-5 Å inside the cutoff the energy may already be below the float64 resolution of E0
        assert abs(energies[0]) > abs(energies[1]) > abs(energies[2]) >= abs(energies[3])
        np.testing.assert_allclose(energies[3:], 0.0, atol=1e-12)
        np.testing.assert_allclose(forces[3:], 0.0, atol=1e-10)
        assert abs(energies[2]) < 1e-6 and abs(forces[2]) < 1e-4

    @pytest.mark.parametrize("repeat", [(2, 1, 1), (2, 2, 2)])
    def test_extensivity(self, model, repeat):
        atoms = rattled_alloy()
        copies = int(np.prod(repeat))
        unit = self.evaluate(model, atoms, stress=True)
        supercell = self.evaluate(model, atoms * repeat, stress=True)
        np.testing.assert_allclose(supercell["energy"], copies * unit["energy"], rtol=1e-10)
        np.testing.assert_allclose(supercell["forces"], np.tile(unit["forces"], (copies, 1)), atol=1e-10)
        np.testing.assert_allclose(supercell["stress"], unit["stress"], atol=1e-10)

    def test_wrapped_and_unwrapped_images_agree(self, model):
        atoms = rattled_alloy()
        unwrapped = atoms.copy()
        unwrapped.positions[[0, 3, 5]] += np.array([[1, 0, 0], [-1, 2, 0], [0, -1, -1]]) @ atoms.cell.array
        wrapped = self.evaluate(model, atoms, stress=True)
        outside = self.evaluate(model, unwrapped, stress=True)
        for key in ("energy", "forces", "stress"):
            np.testing.assert_allclose(outside[key], wrapped[key], atol=1e-10)

    def test_structures_in_a_batch_are_independent(self, model):
        structures = [rattled_alloy(), alloy_cluster(), copper_crystal()]
        together = self.evaluate(model, *structures, stress=True)
        start = 0
        for index, atoms in enumerate(structures):
            alone = self.evaluate(model, atoms, stress=True)
            np.testing.assert_allclose(together["energy"][index], alone["energy"][0], rtol=1e-12)
            np.testing.assert_allclose(together["forces"][start : start + len(atoms)], alone["forces"], atol=1e-12)
            np.testing.assert_allclose(together["stress"][index], alone["stress"][0], atol=1e-12, equal_nan=True)
            start += len(atoms)

    @pytest.mark.parametrize("symbol", ["Cu", "Au"])
    def test_isolated_atom_has_its_e0(self, model, symbol):
        for atoms in (Atoms(symbol, positions=[[0.3, 0.1, 0.0]]), Atoms(symbol, cell=[8.0] * 3, pbc=True)):
            output = self.evaluate(model, atoms)
            assert output["energy"][0] == pytest.approx(E0[atoms.numbers[0]], abs=1e-12)
            np.testing.assert_array_equal(output["forces"], 0.0)

    def test_float32_by_default(self):
        model = self.make_model(ELEMENTS, E0)
        assert all(parameter.dtype == torch.float32 for parameter in model.parameters())
        graph = atoms_to_graph(rattled_alloy(), CUTOFF, dtype=torch.float32)
        output = model(Batch.from_data_list([graph]), compute_stress=True)
        assert output["energy"].dtype == output["forces"].dtype == output["stress"].dtype == torch.float32

    def test_unknown_element_raises(self):
        copper_only = self.make_model([29], {29: 0.0})
        with pytest.raises(ValueError, match=r"element\(s\) Au not known to this student \(knows: Cu\)"):
            copper_only(batch_of(alloy_cluster()))

    def test_rebuilds_from_hyperparameters(self, model):
        hyperparameters = json.loads(json.dumps(model.hyperparameters()))
        rebuilt = build_model(model.name, **hyperparameters).double().eval()
        rebuilt.load_state_dict(model.state_dict())
        batch = batch_of(rattled_alloy())
        torch.testing.assert_close(rebuilt(batch)["energy"], model(batch)["energy"])

    def test_forces_under_no_grad_and_training_graph(self, model):
        batch = batch_of(alloy_cluster())
        with torch.no_grad():
            output = model(batch, compute_stress=True)
        assert not output["forces"].requires_grad and output["forces"].abs().max() > 0
        model.train()
        try:
            forces = model(batch)["forces"]
            assert forces.requires_grad
            (forces**2).sum().backward()
            assert any(p.grad is not None and p.grad.abs().max() > 0 for p in model.parameters())
        finally:
            model.zero_grad(set_to_none=True)
            model.eval()

    def test_hessian_vector_product_matches_force_differences(self, model):
        batch = batch_of(alloy_cluster())
        direction = torch.randn(batch.pos.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
        batch.pos.requires_grad_(True)
        forces = model(batch, create_graph=True)["forces"]
        (hessian_times_direction,) = torch.autograd.grad(-(forces * direction).sum(), batch.pos)
        step = 1e-5
        displaced_forces = []
        for sign in (1.0, -1.0):
            displaced = batch_of(alloy_cluster())
            displaced.pos = batch.pos.detach() + sign * step * direction
            displaced_forces.append(model(displaced)["forces"])
        numerical = -(displaced_forces[0] - displaced_forces[1]) / (2 * step)
        torch.testing.assert_close(hessian_times_direction, numerical, rtol=1e-5, atol=1e-7)
