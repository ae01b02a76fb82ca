"""Teachers: the ASE-calculator wrapper, spec parsing, and labelling whole files into a store."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.lj import LennardJones
from ase.calculators.singlepoint import SinglePointCalculator

from mlip_distill.data.store import LabelStore
from mlip_distill.teachers import (
    ASECalculatorTeacher,
    TeacherError,
    label_file,
    load_teacher,
)


def rattled_copper(seed: int = 0, scale: float = 1.0) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61 * scale, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.05, seed=seed)
    return atoms


class FailsOnMarkedStructures(EMT):
    """EMT that raises, like an unconverged SCF, on structures of config_type "unconverged"."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        if atoms is not None and atoms.info.get("config_type") == "unconverged":
            raise RuntimeError("SCF did not converge")
        super().calculate(atoms, properties, system_changes)


# --- the ASE calculator teacher ---------------------------------------------------------------


def test_emt_labels_equal_the_calculator_numbers():
    atoms = rattled_copper()
    labels = load_teacher("emt").label(atoms)
    reference = atoms.copy()
    reference.calc = EMT()
    np.testing.assert_allclose(labels["energy"], reference.get_potential_energy(), rtol=1e-12)
    np.testing.assert_allclose(labels["forces"], reference.get_forces(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(labels["stress"], reference.get_stress(), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(labels["atomic_energies"], reference.get_potential_energies())
    assert labels["forces"].shape == (32, 3) and labels["stress"].shape == (6,)
    assert labels["atomic_energies"].sum() == pytest.approx(float(labels["energy"]))
    assert atoms.calc is None  # the caller's structure is left alone


def test_compressed_copper_has_negative_stress_in_voigt_order():
    teacher = load_teacher("emt")
    compressed = bulk("Cu", "fcc", a=3.61 * 0.97, cubic=True)
    stress = teacher.label(compressed)["stress"]
    assert (stress[:3] < 0).all()  # ASE sign: compression is negative
    np.testing.assert_allclose(stress[3:], 0.0, atol=1e-10)  # cubic symmetry: no shear
    # Stretching x only: xx is the most tensile component.
    stretched = bulk("Cu", "fcc", a=3.61, cubic=True)
    stretched.set_cell(stretched.cell.array @ np.diag([1.02, 1.0, 1.0]), scale_atoms=True)
    stress = teacher.label(stretched)["stress"]
    assert stress[0] > 0 and stress[0] > stress[1] and stress[1] == pytest.approx(stress[2])


def test_a_molecule_has_no_stress():
    labels = load_teacher("emt").label(molecule("CH4"))
    assert np.isnan(labels["stress"]).all() and np.isfinite(labels["forces"]).all()


def test_forces_are_minus_the_energy_gradient():
    teacher = load_teacher("emt")
    atoms = rattled_copper(seed=3)
    forces = teacher.label(atoms)["forces"]
    step = 1e-4
    for atom, axis in [(0, 0), (5, 1), (17, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += step
        minus.positions[atom, axis] -= step
        gradient = (teacher.label(plus)["energy"] - teacher.label(minus)["energy"]) / (2 * step)
        assert forces[atom, axis] == pytest.approx(-gradient, abs=1e-6)


def test_isolated_atom_energy_is_the_calculator_energy_of_a_lone_atom():
    energies = load_teacher("emt").isolated_atom_energies([29, 29, 13])
    lone_copper = Atoms("Cu", positions=[[0, 0, 0]], pbc=False)
    lone_copper.calc = EMT()
    assert sorted(energies) == [13, 29]
    assert energies[29] == pytest.approx(lone_copper.get_potential_energy())


def test_calculator_without_per_atom_energies_gives_nan():
    class NoPerAtomEnergies(LennardJones):
        implemented_properties = ["energy", "forces", "stress"]

    teacher = ASECalculatorTeacher(NoPerAtomEnergies(sigma=2.3, epsilon=0.4), name="lj")
    labels = teacher.label(rattled_copper())
    assert np.isnan(labels["atomic_energies"]).all() and labels["atomic_energies"].shape == (32,)
    assert np.isfinite(labels["stress"]).all()


def test_provenance_names_the_teacher():
    provenance = load_teacher("emt").provenance()
    assert provenance["name"] == "emt" and provenance["spec"] == "emt"
    assert provenance["version"].startswith("ase 3.")
    assert isinstance(provenance["settings"], dict)
    assert "weights_sha256" not in provenance  # EMT has no weights


# --- elements ---------------------------------------------------------------------------------


def test_emt_refuses_silicon_naming_it():
    teacher = load_teacher("emt")
    assert teacher.elements == {13, 29, 47, 79, 28, 46, 78, 1, 6, 7, 8}
    with pytest.raises(TeacherError, match=r"cannot label Si; it supports H, C, N, O, Al"):
        teacher.check_elements([29, 14, 29])
    teacher.check_elements([29, 8])
    with pytest.raises(TeacherError, match="cannot label Si, Fe"):
        teacher.label(Atoms("FeSiCu", positions=np.eye(3) * 2.5))


def test_unsupported_element_is_refused_before_any_labelling(tmp_path):
    calls = []

    class CountingEMT(EMT):
        def calculate(self, *args, **kwargs):
            calls.append(1)
            super().calculate(*args, **kwargs)

    teacher = ASECalculatorTeacher(CountingEMT(), name="emt", elements=load_teacher("emt").elements)
    structures = [rattled_copper(), bulk("Si", "diamond", a=5.43)]
    ase.io.write(tmp_path / "in.xyz", structures)
    with pytest.raises(TeacherError, match="cannot label Si"):
        label_file(tmp_path / "in.xyz", teacher, tmp_path / "out.h5", progress=False)
    assert calls == []
    assert not (tmp_path / "out.h5").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in.xyz"]


# --- specs ------------------------------------------------------------------------------------


def test_unknown_spec_is_refused_in_one_line():
    with pytest.raises(TeacherError) as caught:
        load_teacher("foo")
    assert str(caught.value) == (
        "unknown teacher spec 'foo': expected 'emt' or 'package.module:Class(kwargs)'"
    )


def test_class_spec_with_keyword_arguments_builds_lennard_jones():
    teacher = load_teacher("ase.calculators.lj:LennardJones(sigma=2.3, epsilon=0.4)")
    atoms = rattled_copper()
    reference = atoms.copy()
    reference.calc = LennardJones(sigma=2.3, epsilon=0.4)
    labels = teacher.label(atoms)
    np.testing.assert_allclose(labels["energy"], reference.get_potential_energy(), rtol=1e-12)
    np.testing.assert_allclose(labels["forces"], reference.get_forces(), atol=1e-12)
    assert teacher.name == "LennardJones" and teacher.elements is None
    assert teacher.settings["sigma"] == 2.3 and teacher.settings["epsilon"] == 0.4
    assert teacher.provenance()["spec"] == "ase.calculators.lj:LennardJones(sigma=2.3, epsilon=0.4)"
    assert teacher.version.startswith("ase ")
    default = load_teacher("ase.calculators.lj:LennardJones")
    assert default.settings["sigma"] == 1.0


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("ase.calculators.lj:LennardJones(2.3)", "key=value"),
        ("ase.calculators.lj:LennardJones(sigma=os.getcwd())", "key=value"),
        ("ase.calculators.lj:LennardJones(sigma=)", "cannot read arguments"),
        ("no_such_package.module:Calculator", "cannot import 'no_such_package.module'"),
        ("ase.calculators.lj:NoSuchClass", "has no 'NoSuchClass'"),
        ("ase.calculators.lj:LennardJones(sigam=2.3)", "LennardJones has no option sigam"),
        (
            "mlip_distill.teachers.ase_calculator:ASECalculatorTeacher(name='x')",
            "ASECalculatorTeacher(...) failed",
        ),
        ("ase.atoms:Atoms", "neither an ASE calculator nor a Teacher"),
    ],
)
def test_bad_class_spec_is_refused_in_one_line(spec, complaint):
    with pytest.raises(TeacherError) as caught:
        load_teacher(spec)
    assert complaint in str(caught.value) and "\n" not in str(caught.value)


# --- labelling files --------------------------------------------------------------------------


def test_label_file_writes_teacher_labels_provenance_and_isolated_atoms(tmp_path):
    structures = [rattled_copper(seed) for seed in range(3)]
    ase.io.write(tmp_path / "in.xyz", structures)
    summary = label_file(tmp_path / "in.xyz", "emt", tmp_path / "out.h5", progress=False)
    assert (summary.n_labelled, summary.n_failed, summary.failures) == (3, 0, [])
    assert summary.out_path == tmp_path / "out.h5" and summary.seconds > 0
    teacher = load_teacher("emt")
    with LabelStore(tmp_path / "out.h5") as store:
        assert len(store) == 3 and store.sources() == ["teacher"]
        for i in range(3):
            stored = store.labels("teacher", i)
            expected = teacher.label(store.structure(i))
            for key in ("energy", "forces", "stress", "atomic_energies"):
                np.testing.assert_allclose(stored[key], expected[key], rtol=1e-12, atol=1e-14)
        assert store.provenance("teacher") == teacher.provenance()
        assert store.isolated_atoms("teacher") == teacher.isolated_atom_energies([29])


def test_teacher_failure_is_recorded_and_skipped(tmp_path):
    structures = [rattled_copper(seed) for seed in range(3)]
    structures[1].info["config_type"] = "unconverged"
    ase.io.write(tmp_path / "in.xyz", structures)
    teacher = ASECalculatorTeacher(FailsOnMarkedStructures(), name="flaky-emt")
    summary = label_file(tmp_path / "in.xyz", teacher, tmp_path / "out.h5", progress=False)
    assert (summary.n_labelled, summary.n_failed) == (2, 1)
    assert summary.failures == [(1, "RuntimeError: SCF did not converge")]
    with LabelStore(tmp_path / "out.h5") as store:
        assert len(store) == 3  # the structure stays, unlabelled
        assert store.has_label("teacher", "energy").tolist() == [True, False, True]
        assert np.isnan(store.labels("teacher", 1)["forces"]).all()


def test_relabelling_in_place_leaves_no_stale_labels_on_failures(tmp_path):
    structures = [rattled_copper(seed) for seed in range(2)]
    structures[0].info["config_type"] = "unconverged"
    ase.io.write(tmp_path / "in.xyz", structures)
    store_path = tmp_path / "labels.h5"
    label_file(tmp_path / "in.xyz", "emt", store_path, progress=False)
    flaky = ASECalculatorTeacher(FailsOnMarkedStructures(), name="flaky-emt")
    summary = label_file(store_path, flaky, store_path, progress=False)
    assert summary.failures == [(0, "RuntimeError: SCF did not converge")]
    with LabelStore(store_path) as store:
        assert store.has_label("teacher", "energy").tolist() == [False, True]
        assert store.provenance("teacher")["name"] == "flaky-emt"


def test_reference_labels_in_the_input_are_kept_next_to_the_teacher(tmp_path):
    structures = [rattled_copper(seed) for seed in range(2)]
    dft_energies = [-1.5, -2.5]
    dft_forces = [np.full((32, 3), 0.1), np.full((32, 3), -0.2)]
    for atoms, energy, forces in zip(structures, dft_energies, dft_forces, strict=True):
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    lone_copper = Atoms("Cu", positions=[[0, 0, 0]])
    lone_copper.calc = SinglePointCalculator(lone_copper, energy=-0.3)
    ase.io.write(tmp_path / "dft.xyz", [*structures, lone_copper])

    summary = label_file(tmp_path / "dft.xyz", "emt", tmp_path / "out.h5", progress=False)
    assert summary.n_labelled == 2
    with LabelStore(tmp_path / "out.h5") as store:
        assert store.sources() == ["reference", "teacher"]
        assert len(store) == 2  # the lone atom is a reference E0, not a structure
        for i in range(2):
            reference = store.labels("reference", i)
            assert float(reference["energy"]) == dft_energies[i]
            np.testing.assert_array_equal(reference["forces"], dft_forces[i])
            assert np.isnan(reference["stress"]).all()
            assert float(store.labels("teacher", i)["energy"]) != dft_energies[i]
        assert store.isolated_atoms("reference") == {29: -0.3}
        assert store.provenance("reference")["imported_from"] == [str(tmp_path / "dft.xyz")]


def test_label_store_in_place_and_into_a_copy(tmp_path):
    ase.io.write(tmp_path / "in.xyz", [rattled_copper(seed) for seed in range(2)])
    store_path = tmp_path / "labels.h5"
    label_file(tmp_path / "in.xyz", "emt", store_path, progress=False)
    lj_spec = "ase.calculators.lj:LennardJones(sigma=2.3, epsilon=0.4)"

    label_file(store_path, lj_spec, store_path, source="lj", progress=False)
    with LabelStore(store_path) as store:
        assert store.sources() == ["lj", "teacher"] and len(store) == 2
        assert store.provenance("lj")["spec"] == lj_spec

    copy_path = tmp_path / "copy.h5"
    summary = label_file(store_path, lj_spec, copy_path, source="lj2", progress=False)
    assert summary.n_labelled == 2
    with LabelStore(copy_path) as copy, LabelStore(store_path) as original:
        assert copy.sources() == ["lj", "lj2", "teacher"]
        assert original.sources() == ["lj", "teacher"]
        np.testing.assert_array_equal(
            copy.labels("lj2", 1)["forces"], copy.labels("lj", 1)["forces"]
        )
    with pytest.raises(ValueError, match="already exists"):
        label_file(store_path, lj_spec, copy_path, source="lj3", progress=False)


def test_appending_a_second_file_labels_only_the_new_structures(tmp_path):
    ase.io.write(tmp_path / "first.xyz", [rattled_copper(0)])
    ase.io.write(tmp_path / "second.xyz", [rattled_copper(1), rattled_copper(2)])
    out = tmp_path / "out.h5"
    label_file(tmp_path / "first.xyz", "emt", out, progress=False)
    summary = label_file(tmp_path / "second.xyz", "emt", out, progress=False)
    assert summary.n_labelled == 2
    with LabelStore(out) as store:
        assert len(store) == 3 and store.has_label("teacher", "forces").all()
