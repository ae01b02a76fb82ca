"""The CHGNet teacher (``chgnet:0.3.0``): the same labels as CHGNet's own ASE calculator,
physically consistent derivatives, per-atom energies that sum to the energy, invariant atom
features, molecules in a box they do not feel, and a whole file labelled with it."""

from __future__ import annotations

import hashlib
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from scipy.spatial.transform import Rotation

chgnet = pytest.importorskip("chgnet")

from chgnet.model.dynamics import CHGNetCalculator  # noqa: E402

from mlip_distill.data.store import LabelStore  # noqa: E402
from mlip_distill.teachers import (  # noqa: E402
    TeacherError,
    label_file,
    load_teacher,
    probe_vectors,
)
from mlip_distill.teachers.chgnet import CHGNetTeacher  # noqa: E402


def rattled_silicon(seed: int, lattice_constant: float = 5.43) -> Atoms:
    """The 8-atom cubic diamond cell of silicon, atoms displaced by about 0.05 Å."""
    atoms = bulk("Si", "diamond", a=lattice_constant, cubic=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


def rattled_water(seed: int) -> Atoms:
    water = molecule("H2O")
    water.rattle(0.05, seed=seed)
    return water


@pytest.fixture(scope="module")
def teacher() -> CHGNetTeacher:
    model = load_teacher("chgnet:0.3.0")
    assert isinstance(model, CHGNetTeacher)
    return model


def test_labels_equal_chgnets_own_calculator(teacher):
    atoms = rattled_silicon(seed=0)
    labels = teacher.label(atoms)
    atoms.calc = CHGNetCalculator(teacher.model, use_device="cpu")
    assert labels["energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(labels["forces"], atoms.get_forces(), atol=1e-5)
    np.testing.assert_allclose(labels["stress"], atoms.get_stress(), atol=1e-6)
    assert {key: value.dtype for key, value in labels.items()} == dict.fromkeys(labels, np.float64)


@pytest.mark.parametrize("make", [rattled_silicon, rattled_water])
def test_atomic_energies_sum_to_the_energy(teacher, make):
    labels = teacher.label(make(seed=1))
    assert labels["atomic_energies"].sum() == pytest.approx(labels["energy"], abs=1e-4)
    assert np.ptp(labels["atomic_energies"]) > 1e-3  # a real decomposition, not E/N


@pytest.mark.parametrize("make", [rattled_silicon, rattled_water])
def test_forces_are_minus_the_energy_gradient(teacher, make):
    atoms = make(seed=2)
    forces = teacher.label(atoms)["forces"]
    step = 1e-2  # Å; float32 energies need a long step
    for direction in probe_vectors(len(atoms), 2, seed=0, structure_index=0).transpose(1, 0, 2):
        energies = []
        for sign in (1.0, -1.0):
            displaced = atoms.copy()
            displaced.positions += sign * step * direction
            energies.append(float(teacher.label(displaced)["energy"]))
        slope = (energies[0] - energies[1]) / (2 * step)  # dE/dh along the unit direction, eV/Å
        assert slope == pytest.approx(-np.vdot(forces, direction), abs=2e-3)


#: The Voigt order xx, yy, zz, yz, xz, xy as (row, column) of the stress tensor.
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


def numerical_stress(teacher: CHGNetTeacher, atoms: Atoms, step: float) -> np.ndarray:
    """(1/V) ∂E/∂ε by central differences of the energy under strains ±step, as ASE's
    ``calculate_numerical_stress`` takes them: Voigt (6,) eV/Å³, the ASE sign."""
    stress = []
    for i, j in VOIGT:
        energies = []
        for sign in (1.0, -1.0):
            deformation = np.eye(3)
            deformation[i, j] += sign * step
            strained = atoms.copy()
            strained.set_cell(atoms.cell.array @ deformation, scale_atoms=True)
            energies.append(float(teacher.label(strained)["energy"]))
        stress.append((energies[0] - energies[1]) / (2 * step * atoms.get_volume()))
    return np.array(stress)


def test_stress_has_the_ase_sign_and_units(teacher):
    atoms = bulk("Si", "diamond", a=5.25)  # compressed: large, negative stress
    atoms.rattle(0.05, seed=3)
    shear = [[1.0, 0.03, 0.0], [0.0, 1.0, 0.02], [0.0, 0.0, 1.0]]  # off-diagonal stress too
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    stress = teacher.label(atoms)["stress"]
    assert (stress[:3] < -0.01).all()  # compressed: ASE stress is negative
    np.testing.assert_allclose(stress, numerical_stress(teacher, atoms, 2e-3), atol=2e-4)


def test_a_molecule_does_not_feel_its_box(teacher):
    water = rattled_water(seed=4)
    labels = teacher.label(water)
    assert np.isnan(labels["stress"]).all()
    for edge in (20.0, 40.0):  # the same molecule in ever larger periodic boxes
        boxed = water.copy()
        boxed.set_cell([edge] * 3)
        boxed.center()
        boxed.pbc = True
        boxed_labels = teacher.label(boxed)
        assert boxed_labels["energy"] == pytest.approx(labels["energy"], abs=1e-5)
        # CHGNet holds fractional coordinates in float32: ~1e-6 Å of noise in a 40 Å box
        np.testing.assert_allclose(boxed_labels["forces"], labels["forces"], atol=5e-4)
    # A box of the molecule's size would let its images bind to it: the box above is needed.
    tight = water.copy()
    tight.set_cell([4.0] * 3)
    tight.pbc = True
    assert abs(float(teacher.label(tight)["energy"]) - labels["energy"]) > 1e-2


def test_partly_periodic_structures_are_refused(teacher):
    slab = rattled_silicon(seed=5)
    slab.pbc = [True, True, False]
    with pytest.raises(TeacherError, match=r"not structures with pbc \[True, True, False\]"):
        teacher.label(slab)


def test_atom_features_are_invariant_scalars_with_the_advertised_irreps(teacher):
    irreps = teacher.feature_irreps()
    assert irreps == {f"layer_{k}": "64x0e" for k in range(1, 5)}
    atoms = rattled_silicon(seed=6)
    features = teacher.node_features(atoms, ["layer_1", "layer_3", "layer_4"])
    assert all(values.shape == (8, 64) for values in features.values())
    # layer_3 is what CHGNet itself calls the atom features
    own = teacher.model.predict_structure(
        teacher._structure(atoms), task="e", return_atom_feas=True
    )["atom_fea"]
    np.testing.assert_allclose(features["layer_3"], own, atol=1e-6)
    assert not np.allclose(features["layer_3"], features["layer_4"])
    rotated = atoms.copy()
    rotated.set_cell(
        atoms.cell.array @ Rotation.random(random_state=0).as_matrix().T, scale_atoms=True
    )
    rotated_features = teacher.node_features(rotated, ["layer_4"])["layer_4"]
    np.testing.assert_allclose(
        rotated_features, features["layer_4"], atol=1e-4 * np.abs(features["layer_4"]).max()
    )
    with pytest.raises(TeacherError, match="has no node features of layer layer_5"):
        teacher.node_features(atoms, ["layer_5"])


def test_elements_beyond_plutonium_are_refused_before_any_work(teacher):
    assert teacher.elements == frozenset(range(1, 95))
    americium = Atoms("Am2", positions=[[0, 0, 0], [0, 0, 3.0]], cell=[10.0] * 3, pbc=True)
    for ask in (
        lambda: teacher.label(americium),
        lambda: teacher.node_features(americium, ["layer_1"]),
        lambda: teacher.isolated_atom_energies([95]),
    ):
        with pytest.raises(TeacherError, match="'chgnet:0.3.0' cannot label Am"):
            ask()


def test_isolated_atoms_and_provenance(teacher):
    energies = teacher.isolated_atom_energies([14, 8])
    assert set(energies) == {8, 14} and all(np.isfinite(e) and e < 0 for e in energies.values())
    provenance = teacher.provenance()
    weights = Path(chgnet.__file__).parent / "pretrained" / provenance["settings"]["weights"]
    assert provenance["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert provenance["version"] == f"chgnet {chgnet.__version__}"
    assert provenance["settings"]["model"] == "0.3.0"


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [("chgnet:", "expected chgnet:MODEL"), ("chgnet:/tmp/weights.pth.tar", "known models")],
)
def test_bad_chgnet_spec_is_one_line(spec, complaint):
    with pytest.raises(TeacherError) as caught:
        load_teacher(spec)
    assert complaint in str(caught.value) and "\n" not in str(caught.value)


def test_label_file_of_crystals_and_molecules(teacher, tmp_path):
    structures = [rattled_silicon(seed=7), rattled_water(seed=8), bulk("SiC", "zincblende", 4.36)]
    ase.io.write(tmp_path / "in.xyz", structures)
    out = tmp_path / "labels.h5"
    summary = label_file(
        tmp_path / "in.xyz", "chgnet:0.3.0", out, features=("layer_4",), progress=False
    )
    assert (summary.n_labelled, summary.n_failed) == (3, 0)
    with LabelStore(out) as store:
        assert store.feature_layers("teacher") == {"layer_4": "64x0e"}
        assert store.provenance("teacher")["weights_sha256"] == teacher.weights_sha256
        assert set(store.isolated_atoms("teacher")) == {1, 6, 8, 14}
        for i, atoms in enumerate(structures):
            labels = store.labels("teacher", i)
            expected = teacher.label(atoms)
            for key in ("energy", "forces", "stress", "atomic_energies"):
                np.testing.assert_allclose(labels[key], expected[key], rtol=1e-6, atol=1e-6)
            assert labels["features"]["layer_4"].shape == (len(atoms), 64)
