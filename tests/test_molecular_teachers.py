"""The molecular teachers: GFN2-xTB by tblite (``xtb:GFN2``) and Kohn-Sham DFT by PySCF
(``pyscf:pbe/sto-3g``): the same numbers as the packages' own calculations, forces that are
−dE/dx, free atoms in their ground-state spin, and refusals before any work."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import CalculationFailed
from ase.units import Bohr, Hartree
from threadpoolctl import threadpool_limits

from mlip_distill.data.store import LabelStore
from mlip_distill.teachers import TeacherError, label_file, load_teacher


@pytest.fixture(scope="module", autouse=True)
def one_openmp_thread():
    """tblite and PySCF on one OpenMP thread: on a small, busy CI machine their spinning
    OpenMP threads slow these tests down tenfold; one thread keeps them to seconds."""
    with threadpool_limits(limits=1, user_api="openmp"):
        yield


def rattled_water(seed: int) -> Atoms:
    """A water molecule, atoms displaced by about 0.05 Å, in an open box."""
    water = molecule("H2O", vacuum=5.0)
    water.rattle(0.05, seed=seed)
    return water


def central_difference_forces(teacher, atoms: Atoms, step: float) -> np.ndarray:
    """−dE/dx by central finite differences of the teacher's energy, (N, 3) eV/Å."""
    forces = np.empty((len(atoms), 3))
    for atom in range(len(atoms)):
        for axis in range(3):
            energies = []
            for sign in (1.0, -1.0):
                displaced = atoms.copy()
                displaced.positions[atom, axis] += sign * step
                energies.append(float(teacher.label(displaced)["energy"]))
            forces[atom, axis] = -(energies[0] - energies[1]) / (2.0 * step)
    return forces


class TestXTB:
    tblite_ase = pytest.importorskip("tblite.ase")

    @pytest.fixture(scope="class")
    def teacher(self):
        return load_teacher("xtb:GFN2")

    def test_energy_and_forces_equal_tblites_own_calculator(self, teacher):
        water = rattled_water(seed=0)
        labels = teacher.label(water)
        water.calc = self.tblite_ase.TBLite(method="GFN2-xTB", verbosity=0)
        assert labels["energy"] == pytest.approx(water.get_potential_energy(), abs=1e-8)
        np.testing.assert_allclose(labels["forces"], water.get_forces(), atol=1e-8)
        assert np.isnan(labels["stress"]).all()
        assert labels["atomic_energies"].sum() == pytest.approx(labels["energy"], abs=1e-8)

    def test_forces_are_minus_the_energy_gradient(self, teacher):
        water = rattled_water(seed=1)
        numerical = central_difference_forces(teacher, water, step=1e-4)
        np.testing.assert_allclose(teacher.label(water)["forces"], numerical, atol=1e-4)

    def test_stress_of_a_periodic_cell_is_the_strain_derivative(self, teacher):
        silicon = bulk("Si", "diamond", a=5.43)
        silicon.rattle(0.05, seed=2)
        stress = teacher.label(silicon)["stress"]
        volume, strain_step = silicon.get_volume(), 1e-5
        # one diagonal and one shear component: xx (Voigt 0) and yz (Voigt 3, strain ε_yz)
        for voigt, (i, j) in ((0, (0, 0)), (3, (1, 2))):
            energies = []
            for sign in (1.0, -1.0):
                deformation = np.eye(3)
                deformation[i, j] += sign * strain_step
                strained = silicon.copy()
                strained.set_cell(silicon.cell.array @ deformation, scale_atoms=True)
                energies.append(float(teacher.label(strained)["energy"]))
            derivative = (energies[0] - energies[1]) / (2 * strain_step * volume)
            assert stress[voigt] == pytest.approx(derivative, abs=1e-5)

    def test_unknown_element_is_refused_before_any_work(self, teacher):
        fresh = load_teacher("xtb:GFN2")
        atoms = Atoms(numbers=[104, 1], positions=[[0, 0, 0], [0, 0, 2.0]])
        with pytest.raises(TeacherError, match="cannot label Rf"):
            fresh.label(atoms)
        assert fresh.calculator.atoms is None  # tblite never saw the structure

    def test_scf_failure_raises(self):
        teacher = load_teacher("xtb:GFN2")
        teacher.calculator.set(max_iterations=2)
        with pytest.raises(CalculationFailed, match="SCF not converged"):
            teacher.label(rattled_water(seed=3))

    def test_free_atoms_have_their_ground_state_spin(self, teacher):
        energies = teacher.isolated_atom_energies([8, 1])
        oxygen = Atoms("O")
        oxygen.calc = self.tblite_ase.TBLite(method="GFN2-xTB", verbosity=0, multiplicity=3)
        assert energies[8] == pytest.approx(oxygen.get_potential_energy(), abs=1e-8)
        with pytest.raises(TeacherError, match="no known ground-state spin for a free Ce"):
            teacher.isolated_atom_energies([58])

    def test_label_file_of_rattled_water(self, tmp_path, teacher):
        ase.io.write(tmp_path / "in.xyz", [rattled_water(seed) for seed in range(3)])
        summary = label_file(tmp_path / "in.xyz", "xtb:GFN2", tmp_path / "out.h5", progress=False)
        assert (summary.n_labelled, summary.failures) == (3, [])
        with LabelStore(tmp_path / "out.h5") as store:
            assert store.provenance("teacher") == teacher.provenance()
            assert sorted(store.isolated_atoms("teacher")) == [1, 8]
            stored = store.labels("teacher", 2)
            expected = teacher.label(store.structure(2))
            np.testing.assert_allclose(stored["forces"], expected["forces"], atol=1e-10)

    def test_unknown_method_is_refused_in_one_line(self):
        with pytest.raises(TeacherError, match=r"^teacher spec 'xtb:GFN3': .*xtb:GFN2$"):
            load_teacher("xtb:GFN3")


class TestPySCF:
    pyscf = pytest.importorskip("pyscf")

    @pytest.fixture(scope="class")
    def teacher(self):
        return load_teacher("pyscf:pbe/sto-3g")

    def direct_energy_and_gradient(self, atoms: Atoms) -> tuple[float, np.ndarray]:
        """PBE/STO-3G of a closed-shell molecule run by PySCF alone, Hartree and Hartree/Bohr."""
        from pyscf import dft, gto

        mol = gto.M(
            atom=[(int(z), tuple(p)) for z, p in zip(atoms.numbers, atoms.positions)],
            unit="Angstrom", basis="sto-3g", verbose=0,
        )
        kohn_sham = dft.RKS(mol)
        kohn_sham.xc, kohn_sham.conv_tol = "pbe", 1e-10
        return kohn_sham.kernel(), kohn_sham.nuc_grad_method().kernel()

    def test_energy_equals_a_direct_pyscf_run(self, teacher):
        water = rattled_water(seed=0)
        water.pbc = False
        labels = teacher.label(water)
        energy, gradient = self.direct_energy_and_gradient(water)
        assert labels["energy"] == pytest.approx(energy * Hartree, abs=1e-6)
        # PySCF's default gradient leaves out the grid response, worth about 1e-3 eV/Å here
        np.testing.assert_allclose(labels["forces"], -gradient * Hartree / Bohr, atol=5e-3)
        assert np.isnan(labels["stress"]).all() and np.isnan(labels["atomic_energies"]).all()

    def test_forces_are_minus_the_energy_gradient(self, teacher):
        water = rattled_water(seed=1)
        water.pbc = False
        numerical = central_difference_forces(teacher, water, step=1e-3)
        np.testing.assert_allclose(teacher.label(water)["forces"], numerical, atol=1e-3)

    def test_periodic_structure_is_refused(self, teacher):
        water = rattled_water(seed=2)
        water.pbc = True
        with pytest.raises(TeacherError, match="molecules only.*periodic along xyz"):
            teacher.label(water)

    def test_scf_failure_raises(self):
        from mlip_distill.teachers.dft import PySCFTeacher

        with pytest.raises(TeacherError, match="SCF not converged in 2 cycles"):
            PySCFTeacher(xc="pbe", basis="sto-3g", max_cycle=2).label(molecule("H2O"))

    def test_free_oxygen_is_a_triplet(self, teacher):
        from pyscf import dft, gto

        energy = teacher.isolated_atom_energies([8])[8]
        kohn_sham = dft.UKS(gto.M(atom="O 0 0 0", basis="sto-3g", spin=2, verbose=0))
        kohn_sham.xc, kohn_sham.conv_tol = "pbe", 1e-10
        assert energy == pytest.approx(kohn_sham.kernel() * Hartree, abs=1e-5)

    @pytest.mark.parametrize(
        "spec, message",
        [
            ("pyscf:pbe", "expected pyscf:FUNCTIONAL/BASIS"),
            ("pyscf:pbx/sto-3g", "does not know the functional 'pbx'"),
            ("pyscf:pbe/sto-4g", "does not know the basis set 'sto-4g'"),
        ],
    )
    def test_bad_spec_is_refused_in_one_line(self, spec, message):
        with pytest.raises(TeacherError, match=message) as refusal:
            load_teacher(spec)
        assert "\n" not in str(refusal.value)
