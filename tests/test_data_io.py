"""ASE I/O of the data layer: reading, label extraction, validation, writing."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.io.extxyz import key_val_str_to_dict

from mlip_distill.data.errors import DataError
from mlip_distill.data.io import (
    _parse_comment_line,
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


def same(a, b) -> bool:
    """Equal values of equal types (arrays: equal dtype, shape and values); NaN equals NaN."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
            a, b, equal_nan=a.dtype.kind == "f"
        )
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b or (a != a and b != b)


def outcome(parse, line: str):
    try:
        return parse(line)
    except Exception as exc:  # the parsers must fail alike
        return type(exc)


@pytest.mark.parametrize(
    "line",
    [
        # plain pairs, read by the fast path
        'Lattice="7.2 -0.05 0.0 0.0 3.6 0.02 0.0 0.02 3.6" Properties=species:S:1:pos:R:3 '
        'pbc="T T T"',
        'energy=-12.5 stress="1 2 3 2 5 6 3 6 9" free_energy=-12 config_type=rattle system_id=3',
        'uid=007 UID=12 flag=T flags="T F T" truth=true n=+4 x=.5 y=3. z=1e3 big=' + "9" * 30,
        'nested="a=b" d="1, 2" arr="_JSON [1, 2]" name="with space" o=nan p="inf -inf" q=٣ '
        'm=1.2.3 n=1-2 s=" " a=1 a=2',
        'Lattice="1 2 3"', "stress=5",
        # lines ASE reads its own way
        "w='single quoted' b=[1,2] c={1 2}", "e=a\\ b", 'f=a=b g=a"b"', 'j="_JSON {\\"a\\": 1}"',
        'k="" m=1', "bare x=1", "", "   ", "a plain comment, no pairs", "a = b", "a= b",
    ],
)
def test_comment_lines_are_read_as_ase_reads_them(line):
    assert same(outcome(_parse_comment_line, line), outcome(key_val_str_to_dict, line))


def test_read_structures_gives_what_ase_reads(tmp_path):
    frames = [rattled_copper(seed) for seed in range(2)]
    frames[0].info.update(config_type="rattle", system_id=4, temperature=300.0, tag="a b")
    frames[1].info.update(flags=[True, False], spins=np.array([1.5, 2.0]))
    water = molecule("H2O")
    water.info["config_type"] = "IsolatedAtom?"
    frames.append(water)
    path = tmp_path / "frames.xyz"
    ase.io.write(path, frames, format="extxyz")
    ours, theirs = read_structures(path), ase.io.read(path, ":", format="extxyz")
    assert len(ours) == len(theirs) == 3
    for mine, reference in zip(ours, theirs):
        assert mine == reference
        assert same(mine.info, reference.info)
        assert same(*(atoms.calc.results if atoms.calc else {} for atoms in (mine, reference)))
        assert same(dict(mine.arrays), dict(reference.arrays))


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
