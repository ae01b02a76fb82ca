"""ASE I/O of the data layer: reading, label extraction, validation, writing."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT

from mlip_distill.data.errors import DataError
from mlip_distill.data.io import (
    labels_from_atoms,
    read_structures,
    validate_structure,
    write_structures,
)


def rattled_copper(seed: int = 0) -> Atoms:
    """Eight Cu atoms, rattled, with EMT energy, forces, stress and per-atom energies."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.05, seed=seed)
    atoms.calc = EMT()
    atoms.get_potential_energy()
    atoms.get_forces()
    atoms.get_stress()
    atoms.get_potential_energies()
    return atoms


def assert_one_line(error: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


def test_labels_come_from_the_calculator_results():
    atoms = rattled_copper()
    labels = labels_from_atoms(atoms)
    results = atoms.calc.results
    assert labels["energy"].shape == () and labels["energy"] == results["energy"]
    np.testing.assert_array_equal(labels["forces"], results["forces"])
    np.testing.assert_array_equal(labels["stress"], results["stress"])
    np.testing.assert_array_equal(labels["atomic_energies"], results["energies"])
    assert all(value.dtype == np.float64 for value in labels.values())


def test_labels_come_from_info_and_arrays_and_stress_becomes_voigt():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.info["REF_energy"] = -1.5
    atoms.info["REF_stress"] = np.array([[1.0, 6.0, 5.0], [6.0, 2.0, 4.0], [5.0, 4.0, 3.0]])
    atoms.arrays["REF_forces"] = np.arange(12.0).reshape(4, 3)
    labels = labels_from_atoms(atoms)
    assert labels["energy"] == -1.5
    np.testing.assert_array_equal(labels["stress"], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    np.testing.assert_array_equal(labels["forces"], np.arange(12.0).reshape(4, 3))
    assert labels["atomic_energies"].shape == (4,) and np.isnan(labels["atomic_energies"]).all()


def test_missing_labels_are_nan_not_zero():
    labels = labels_from_atoms(bulk("Cu", "fcc", a=3.6, cubic=True))
    assert labels["forces"].shape == (4, 3) and labels["stress"].shape == (6,)
    assert all(np.isnan(value).all() for value in labels.values())


def test_write_and_read_back_keeps_labels(tmp_path):
    frames = [rattled_copper(seed) for seed in range(2)]
    labels = [labels_from_atoms(atoms) for atoms in frames]
    labels[1]["stress"] = np.full(6, np.nan)
    path = tmp_path / "out.xyz"
    write_structures(path, frames, labels)
    back = read_structures(path)
    assert len(back) == 2
    for atoms, original in zip(back, labels):
        again = labels_from_atoms(atoms)
        for key in original:
            np.testing.assert_allclose(again[key], original[key], atol=1e-7)
    assert "stress" not in back[1].calc.results


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(DataError) as error:
        read_structures(tmp_path / "absent.xyz")
    assert_one_line(error, "absent.xyz: no such file")


def test_unreadable_file_is_a_one_line_error(tmp_path):
    path = tmp_path / "garbage.xyz"
    path.write_text("3\nnot a comment line we can parse\nCu 0 0\nthis is\nnot xyz\n")
    with pytest.raises(DataError) as error:
        read_structures(path)
    assert_one_line(error, "garbage.xyz: cannot read structures")


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("energy", np.array(np.inf), "infinite value in energy"),
        ("forces", np.r_[[[np.nan, 0, 0]], np.zeros((7, 3))], "forces partly NaN (1 of 24 values)"),
        ("forces", np.zeros((7, 3)), "forces have shape (7, 3) but the structure has 8 atoms"),
        ("stress", np.zeros(5), "stress has shape (5,), expected (6,)"),
    ],
)
def test_bad_labels_are_one_line_errors(key, value, problem):
    atoms = rattled_copper()
    labels = labels_from_atoms(atoms)
    labels[key] = value
    with pytest.raises(DataError) as error:
        validate_structure(atoms, labels, "train.xyz: structure 12")
    assert_one_line(error, "train.xyz: structure 12: ", problem)


def test_nan_positions_are_rejected():
    atoms = rattled_copper()
    atoms.positions[3, 1] = np.nan
    with pytest.raises(DataError) as error:
        validate_structure(atoms, labels_from_atoms(atoms), "train.xyz: structure 0")
    assert_one_line(error, "train.xyz: structure 0: positions are not all finite")


def test_atoms_closer_than_the_minimum_distance_across_the_boundary():
    atoms = Atoms("Cu2", positions=[[0.02, 1.0, 1.0], [4.97, 1.0, 1.0]], cell=[5, 5, 5], pbc=True)
    with pytest.raises(DataError) as error:
        validate_structure(atoms, labels_from_atoms(atoms), "train.xyz: structure 4")
    assert_one_line(error, "train.xyz: structure 4: atoms", "0.05 Å apart", "closer than 0.1 Å")
    atoms.pbc = False  # 4.95 Å apart without periodic images
    validate_structure(atoms, labels_from_atoms(atoms), "train.xyz: structure 4")
