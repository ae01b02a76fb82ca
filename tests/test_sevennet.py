"""The SevenNet-0 teacher (``sevennet:7net-0``): the same labels as sevenn's own ASE calculator,
physically consistent derivatives, node features with their irreps, exact Hessian-vector
products, and a whole file labelled with them."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_stress
from e3nn.o3 import Irreps
from scipy.spatial.transform import Rotation

sevenn = pytest.importorskip("sevenn")

from sevenn.calculator import SevenNetCalculator  # noqa: E402

from mlip_distill.data.store import LabelStore  # noqa: E402
from mlip_distill.teachers import (  # noqa: E402
    TeacherError,
    label_file,
    load_teacher,
    probe_vectors,
)
from mlip_distill.teachers.sevennet import SevenNetTeacher  # noqa: E402


def rattled_silicon(seed: int, lattice_constant: float = 5.43) -> Atoms:
    """The 8-atom cubic diamond cell of silicon, atoms displaced by about 0.05 Å."""
    atoms = bulk("Si", "diamond", a=lattice_constant, cubic=True)
    atoms.rattle(0.05, seed=seed)
    return atoms


@pytest.fixture(scope="module")
def teacher() -> SevenNetTeacher:
    sevennet = load_teacher("sevennet:7net-0")
    assert isinstance(sevennet, SevenNetTeacher)
    return sevennet


@pytest.fixture(scope="module")
def sevenn_calculator() -> SevenNetCalculator:
    with warnings.catch_warnings():  # that it runs without a GPU tensor-product accelerator
        warnings.simplefilter("ignore", UserWarning)
        return SevenNetCalculator("7net-0", device="cpu")


def test_labels_equal_sevenns_own_calculator(teacher, sevenn_calculator):
    atoms = rattled_silicon(seed=0)
    labels = teacher.label(atoms)
    atoms.calc = sevenn_calculator
    assert labels["energy"] == pytest.approx(atoms.get_potential_energy(), abs=1e-5)
    np.testing.assert_allclose(labels["forces"], atoms.get_forces(), atol=1e-5)
    np.testing.assert_allclose(labels["stress"], atoms.get_stress(), atol=1e-6)
    np.testing.assert_allclose(labels["atomic_energies"], atoms.get_potential_energies(), atol=1e-5)
    assert labels["atomic_energies"].sum() == pytest.approx(labels["energy"], abs=1e-4)
    assert {key: value.dtype for key, value in labels.items()} == dict.fromkeys(labels, np.float64)


def test_forces_are_minus_the_energy_gradient(teacher):
    atoms = rattled_silicon(seed=1)
    forces = teacher.label(atoms)["forces"]
    step = 1e-2  # Å; float32 energies need a long step
    for direction in probe_vectors(len(atoms), 2, seed=0, structure_index=0).transpose(1, 0, 2):
        energies = []
        for sign in (1.0, -1.0):
            displaced = atoms.copy()
            displaced.positions += sign * step * direction
            energies.append(float(teacher.label(displaced)["energy"]))
        slope = (energies[0] - energies[1]) / (2 * step)  # dE/dh along the unit direction, eV/Å
        assert slope == pytest.approx(-np.vdot(forces, direction), abs=1e-3)


def test_stress_has_the_ase_sign_and_units(teacher, sevenn_calculator):
    atoms = rattled_silicon(seed=2, lattice_constant=5.30)  # compressed: large, negative stress
    shear = [[1.0, 0.02, 0.0], [0.0, 1.0, 0.01], [0.0, 0.0, 1.0]]  # off-diagonal stress too
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    stress = teacher.label(atoms)["stress"]
    atoms.calc = sevenn_calculator  # the same energies as the teacher (test above)
    numerical = calculate_numerical_stress(atoms, eps=2e-3)
    assert (stress[:3] < -0.01).all()  # compressed: ASE stress is negative
    np.testing.assert_allclose(stress, numerical, atol=1e-4)


def test_node_features_have_the_advertised_irreps_and_rotate_with_them(teacher):
    irreps = teacher.feature_irreps()
    assert irreps["layer_1"] == "128x0e+64x1e+32x2e" and irreps["layer_5"] == "128x0e"
    assert list(irreps) == [f"layer_{k}" for k in range(1, 6)]
    atoms = rattled_silicon(seed=3)
    features = teacher.node_features(atoms, ["layer_1", "layer_5"])
    assert features["layer_1"].shape == (8, Irreps(irreps["layer_1"]).dim)
    assert features["layer_5"].shape == (8, Irreps(irreps["layer_5"]).dim)
    rotation = Rotation.random(random_state=0).as_matrix()
    rotated = atoms.copy()
    rotated.set_cell(atoms.cell.array @ rotation.T, scale_atoms=True)  # x → R x
    wigner = Irreps(irreps["layer_1"]).D_from_matrix(torch.as_tensor(rotation)).numpy()
    np.testing.assert_allclose(
        teacher.node_features(rotated, ["layer_1"])["layer_1"],
        features["layer_1"] @ wigner.T,
        atol=1e-4 * np.abs(features["layer_1"]).max(),
    )
    with pytest.raises(TeacherError, match="has no node features of layer layer_9"):
        teacher.node_features(atoms, ["layer_9"])


def test_hessian_vector_products_match_finite_differences_of_the_forces(teacher):
    atoms = rattled_silicon(seed=4)
    probes = probe_vectors(len(atoms), 2, seed=1, structure_index=0)
    products = teacher.hessian_vector_products(atoms, probes)
    assert products.shape == (8, 2, 3) and products.dtype == np.float64
    # The pass ran in training mode; that must change nothing but sevenn's create_graph.
    assert not teacher.model.training
    train_mode_layers = (torch.nn.Dropout, torch.nn.modules.batchnorm._BatchNorm)
    assert not any(isinstance(module, train_mode_layers) for module in teacher.model.modules())
    step = 3e-3  # Å: long enough for float32 forces, short enough for O(step²) truncation
    for k in range(2):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions += step * probes[:, k]
        minus.positions -= step * probes[:, k]
        difference = -(teacher.label(plus)["forces"] - teacher.label(minus)["forces"]) / (2 * step)
        np.testing.assert_allclose(products[:, k], difference, atol=1e-3 * np.abs(difference).max())
    # H is symmetric: v1·(H v2) = v2·(H v1)
    assert np.vdot(probes[:, 0], products[:, 1]) == pytest.approx(
        np.vdot(probes[:, 1], products[:, 0]), rel=1e-5
    )


def test_elements_outside_the_type_map_are_refused_before_any_work(teacher):
    assert len(teacher.elements) == 89 and 86 not in teacher.elements
    radon = Atoms("Rn2", positions=[[0, 0, 0], [0, 0, 3.0]], cell=[10.0] * 3, pbc=True)
    probes = probe_vectors(2, 1, seed=0, structure_index=0)
    for ask in (
        lambda: teacher.label(radon),
        lambda: teacher.node_features(radon, ["layer_1"]),
        lambda: teacher.hessian_vector_products(radon, probes),
        lambda: teacher.isolated_atom_energies([86]),
    ):
        with pytest.raises(TeacherError, match="'sevennet:7net-0' cannot label Rn"):
            ask()


def test_isolated_atoms_and_provenance(teacher):
    energies = teacher.isolated_atom_energies([14, 8])
    assert set(energies) == {8, 14} and all(np.isfinite(e) and e < 0 for e in energies.values())
    provenance = teacher.provenance()
    shipped = Path(sevenn.__file__).parent / "pretrained_potentials"
    checkpoint = shipped / provenance["settings"]["checkpoint"]
    assert provenance["weights_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert provenance["version"] == "sevenn 0.13.0"
    assert provenance["settings"]["model"] == "7net-0"


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("sevennet:", "expected sevennet:MODEL"),
        ("sevennet:/tmp/my_checkpoint.pth", "not a pretrained SevenNet model"),
    ],
)
def test_bad_sevennet_spec_is_one_line(spec, complaint):
    with pytest.raises(TeacherError) as caught:
        load_teacher(spec)
    assert complaint in str(caught.value) and "\n" not in str(caught.value)


def test_label_file_with_features_and_products(teacher, tmp_path):
    structures = [
        rattled_silicon(seed=5), bulk("Si", "diamond", a=5.5), bulk("SiC", "zincblende", a=4.36)
    ]
    structures[1].rattle(0.03, seed=6)
    ase.io.write(tmp_path / "in.xyz", structures)
    out = tmp_path / "labels.h5"
    summary = label_file(
        tmp_path / "in.xyz", load_teacher("sevennet:7net-0"), out, features=("layer_1",),
        hvp_probes=1, progress=False,
    )
    assert (summary.n_labelled, summary.n_failed) == (3, 0)
    with LabelStore(out) as store:
        assert store.feature_layers("teacher") == {"layer_1": "128x0e+64x1e+32x2e"}
        assert store.hvp_probes("teacher") == 1
        assert store.provenance("teacher")["weights_sha256"] == teacher.weights_sha256
        assert set(store.isolated_atoms("teacher")) == {6, 14}
        for i, atoms in enumerate(structures):
            labels = store.labels("teacher", i)
            expected = teacher.label(atoms)
            for key in ("energy", "forces", "stress", "atomic_energies"):
                np.testing.assert_allclose(labels[key], expected[key], rtol=1e-6, atol=1e-6)
            assert labels["features"]["layer_1"].shape == (len(atoms), 480)
            np.testing.assert_allclose(
                labels["hvp_hv"], teacher.hessian_vector_products(atoms, labels["hvp_v"]),
                rtol=1e-5, atol=1e-5,
            )
