"""What teachers give beyond energy and forces: node features, Hessian-vector products, and the
``potential:PATH`` teacher (a saved student teaching another), labelled end to end."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import PropertyNotImplementedError
from e3nn.o3 import Irreps
from torch_geometric.loader import DataLoader

from mlip_distill.calculator import StudentCalculator
from mlip_distill.cli import main
from mlip_distill.data.dataset import GraphDataset
from mlip_distill.data.errors import DataError
from mlip_distill.data.store import LabelStore
from mlip_distill.models import build_model
from mlip_distill.package import read_metadata, save_potential
from mlip_distill.teachers import (
    PotentialTeacher,
    TeacherError,
    label_file,
    load_teacher,
    probe_vectors,
)


def rattled_copper(seed: int, repeat=(1, 1, 1)) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(0.1, seed=seed)
    return atoms


def forces_difference_quotient(teacher, atoms: Atoms, direction: np.ndarray, step: float):
    """−(F(x + step·d) − F(x − step·d)) / (2 step), (N, 3) eV/Å², from the teacher's forces."""
    plus, minus = atoms.copy(), atoms.copy()
    plus.positions += step * direction
    minus.positions -= step * direction
    return -(teacher.label(plus)["forces"] - teacher.label(minus)["forces"]) / (2 * step)


@pytest.fixture(scope="module")
def potential_path(tmp_path_factory):
    """A small random NequIP student for copper, saved as a potential package (float32)."""
    torch.manual_seed(0)
    model = build_model("nequip", elements=[29], cutoff=4.0, channels=4, num_layers=2)
    return save_potential(model, "nequip", tmp_path_factory.mktemp("potential") / "cu-nequip")


@pytest.fixture(scope="module")
def potential_teacher(potential_path):
    return load_teacher(f"potential:{potential_path}")


# --- probes and the finite-difference default ---------------------------------------------------


def test_probes_are_unit_vectors_reproducible_from_seed_and_structure():
    probes = probe_vectors(5, 3, seed=7, structure_index=2)
    assert probes.shape == (5, 3, 3)
    np.testing.assert_allclose(np.linalg.norm(probes, axis=(0, 2)), 1.0, rtol=1e-12)
    np.testing.assert_array_equal(probes, probe_vectors(5, 3, seed=7, structure_index=2))
    assert not np.allclose(probes, probe_vectors(5, 3, seed=7, structure_index=3))
    assert not np.allclose(probes, probe_vectors(5, 3, seed=8, structure_index=2))


def test_emt_hessian_vector_products_match_a_finite_difference_hessian():
    teacher = load_teacher("emt")
    atoms = rattled_copper(seed=1)
    n_coordinates = 3 * len(atoms)
    columns = [
        forces_difference_quotient(teacher, atoms, unit.reshape(-1, 3), step=2e-4).ravel()
        for unit in np.eye(n_coordinates)
    ]
    hessian = np.stack(columns, axis=1)  # (3N, 3N) eV/Å², column j = ∂(−F)/∂x_j
    probes = probe_vectors(len(atoms), 2, seed=0, structure_index=0)
    products = teacher.hessian_vector_products(atoms, probes)
    assert products.shape == (4, 2, 3)
    for k in range(2):
        expected = (hessian @ probes[:, k].ravel()).reshape(-1, 3)
        np.testing.assert_allclose(products[:, k], expected, atol=2e-5 * np.abs(expected).max())
    # H is symmetric: v1·(H v2) = v2·(H v1)
    assert np.vdot(probes[:, 0], products[:, 1]) == pytest.approx(
        np.vdot(probes[:, 1], products[:, 0]), rel=1e-5
    )


def test_finite_difference_step_is_a_teacher_setting():
    from ase.calculators.emt import EMT

    from mlip_distill.teachers import ASECalculatorTeacher

    teacher = ASECalculatorTeacher(EMT(), name="emt", hvp_step=1e-2)
    assert teacher.hvp_method() == (
        "central finite differences of the forces, step 0.01 Å along a unit probe"
    )
    with pytest.raises(ValueError, match="hvp_step"):
        ASECalculatorTeacher(EMT(), name="emt", hvp_step=0.0)


def test_emt_has_no_node_features():
    teacher = load_teacher("emt")
    assert teacher.feature_irreps() == {} and teacher.node_features(rattled_copper(0), []) == {}
    refusal = "teacher 'emt' has no node features of layer layer_1; it has none"
    with pytest.raises(TeacherError, match=refusal):
        teacher.node_features(rattled_copper(0), ["layer_1"])


# --- the potential teacher ----------------------------------------------------------------------


def test_potential_teacher_labels_like_the_student_calculator_in_float64(
    potential_path, potential_teacher
):
    assert isinstance(potential_teacher, PotentialTeacher)
    atoms = rattled_copper(seed=2, repeat=(2, 1, 1))
    labels = potential_teacher.label(atoms)
    reference = atoms.copy()
    reference.calc = StudentCalculator(potential_path, dtype="float64")
    assert float(labels["energy"]) == pytest.approx(reference.get_potential_energy(), rel=1e-12)
    np.testing.assert_allclose(labels["forces"], reference.get_forces(), atol=1e-12)
    np.testing.assert_allclose(labels["stress"], reference.get_stress(), atol=1e-12)
    assert labels["atomic_energies"].sum() == pytest.approx(float(labels["energy"]), rel=1e-12)
    provenance = potential_teacher.provenance()
    assert provenance["spec"] == f"potential:{potential_path}"
    assert provenance["weights_sha256"] == read_metadata(potential_path)["weights_sha256"]
    assert provenance["settings"]["dtype"] == "float64"


def test_potential_hessian_vector_products_equal_differences_of_its_forces(potential_teacher):
    atoms = rattled_copper(seed=3, repeat=(2, 1, 1))
    probes = probe_vectors(len(atoms), 2, seed=1, structure_index=0)
    products = potential_teacher.hessian_vector_products(atoms, probes)
    assert products.shape == (8, 2, 3)
    for k in range(2):
        expected = forces_difference_quotient(potential_teacher, atoms, probes[:, k], step=1e-4)
        np.testing.assert_allclose(products[:, k], expected, atol=1e-6 * np.abs(expected).max())
    assert potential_teacher.hvp_method().startswith("exact")


def test_potential_node_features_have_the_advertised_irreps(potential_teacher):
    irreps = potential_teacher.feature_irreps()
    assert list(irreps) == ["layer_1", "layer_2"]
    atoms = rattled_copper(seed=4)
    features = potential_teacher.node_features(atoms, ["layer_2", "layer_1"])
    for layer, values in features.items():
        assert values.shape == (len(atoms), Irreps(irreps[layer]).dim)
        assert values.dtype == np.float64
    refusal = "has no node features of layer layer_7; it has layer_1, layer_2"
    with pytest.raises(TeacherError, match=refusal):
        potential_teacher.node_features(atoms, ["layer_7"])


def test_potential_teacher_refuses_elements_it_was_not_trained_on(potential_teacher, tmp_path):
    with pytest.raises(TeacherError, match="cannot label Au; it supports Cu"):
        potential_teacher.label(bulk("Au", "fcc", a=4.08))
    ase.io.write(tmp_path / "in.xyz", [rattled_copper(0), bulk("Ag", "fcc", a=4.09)])
    with pytest.raises(TeacherError, match="cannot label Ag"):
        label_file(tmp_path / "in.xyz", potential_teacher, tmp_path / "out.h5", progress=False)
    assert not (tmp_path / "out.h5").exists()


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("potential:", "expected potential:PATH"),
        ("potential:/no/such/folder", "no such potential package"),
    ],
)
def test_bad_potential_spec_is_one_line(spec, complaint):
    with pytest.raises(TeacherError) as caught:
        load_teacher(spec)
    assert complaint in str(caught.value) and "\n" not in str(caught.value)


# --- labelling files with features and Hessian-vector products ---------------------------------


def test_label_command_stores_features_and_products(
    potential_path, potential_teacher, tmp_path, capsys
):
    ase.io.write(tmp_path / "in.xyz", [rattled_copper(seed) for seed in range(3)])
    out = tmp_path / "labels.h5"
    status = main(
        [
            "label", str(tmp_path / "in.xyz"), "--teacher", f"potential:{potential_path}",
            "--out", str(out), "--features", "layer_1", "--hvp-probes", "2", "--seed", "5",
        ]
    )
    assert status == 0, capsys.readouterr().err
    irreps = potential_teacher.feature_irreps()["layer_1"]
    with LabelStore(out) as store:
        assert store.feature_layers("teacher") == {"layer_1": irreps}
        assert store.hvp_probes("teacher") == 2
        provenance = store.provenance("teacher")
        assert provenance["features"] == ["layer_1"]
        assert (provenance["hvp_probes"], provenance["hvp_seed"]) == (2, 5)
        assert provenance["hvp_method"] == potential_teacher.hvp_method()
        for i in range(3):
            atoms, labels = store.structure(i), store.labels("teacher", i)
            probes = probe_vectors(4, 2, seed=5, structure_index=i)
            np.testing.assert_array_equal(labels["hvp_v"], probes)
            products = potential_teacher.hessian_vector_products(atoms, probes)
            np.testing.assert_allclose(labels["hvp_hv"], products, rtol=1e-10, atol=1e-12)
            features = potential_teacher.node_features(atoms, ["layer_1"])["layer_1"]
            np.testing.assert_allclose(
                labels["features"]["layer_1"], features, rtol=1e-10, atol=1e-12
            )
    dataset = GraphDataset(out, "teacher", cutoff=4.0, features=("layer_1",), hessian=True)
    batch = next(iter(DataLoader(dataset, batch_size=3)))
    assert batch.features_layer_1.shape == (12, Irreps(irreps).dim)
    assert batch.hvp_v.shape == batch.hvp_hv.shape == (12, 2, 3)


def test_relabelling_without_extras_forgets_the_old_ones(potential_teacher, tmp_path):
    ase.io.write(tmp_path / "in.xyz", [rattled_copper(seed) for seed in range(2)])
    out = tmp_path / "labels.h5"
    label_file(
        tmp_path / "in.xyz", potential_teacher, out, features=["layer_2"], hvp_probes=1,
        progress=False,
    )
    label_file(out, "emt", out, progress=False)
    with LabelStore(out) as store:
        labels = store.labels("teacher", 1)
        assert np.isfinite(labels["forces"]).all()
        assert np.isnan(labels["features"]["layer_2"]).all() and np.isnan(labels["hvp_hv"]).all()
        assert "hvp_probes" not in store.provenance("teacher")


def test_extras_the_teacher_or_the_store_cannot_take_fail_before_labelling(tmp_path):
    ase.io.write(tmp_path / "in.xyz", [rattled_copper(0)])
    out = tmp_path / "labels.h5"
    with pytest.raises(TeacherError, match="teacher 'emt' has no node features of layer layer_1"):
        label_file(tmp_path / "in.xyz", "emt", out, features=["layer_1"], progress=False)
    assert not out.exists()
    label_file(tmp_path / "in.xyz", "emt", out, hvp_probes=2, progress=False)
    with pytest.raises(DataError, match="holds 2 Hessian-vector probes per structure, not 1"):
        label_file(tmp_path / "in.xyz", "emt", out, hvp_probes=1, progress=False)
    with LabelStore(out) as store:
        assert len(store) == 1  # the failed run appended nothing


def test_every_teacher_runs_md_through_an_ase_calculator(potential_teacher):
    emt = load_teacher("emt")
    assert emt.ase_calculator() is emt.calculator  # native speed for ASE teachers
    atoms = rattled_copper(seed=4)
    labels = potential_teacher.label(atoms)
    atoms.calc = potential_teacher.ase_calculator()
    assert atoms.get_potential_energy() == pytest.approx(float(labels["energy"]), abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), labels["forces"], atol=1e-10)
    np.testing.assert_allclose(atoms.get_stress(), labels["stress"], atol=1e-10)  # periodic: stress too
    molecule = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.4]])
    molecule.calc = potential_teacher.ase_calculator()
    molecule.get_forces()
    with pytest.raises(PropertyNotImplementedError):  # no cell, no stress: never a made-up one
        molecule.get_stress()
