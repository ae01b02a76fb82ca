"""validate_structures (all structures at once) accepts and refuses exactly what
validate_structure (one by one) does, with the same message for the first bad structure."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms

from mlip_distill.data.errors import DataError
from mlip_distill.data.io import (
    clean_labels,
    labels_from_atoms,
    validate_structure,
    validate_structures,
)


def random_structure(rng: np.random.Generator) -> tuple[Atoms, dict]:
    """A structure that is often, but not always, valid: random size, periodicity and cell
    (skewed, sometimes thin), sometimes two atoms within 0.1 Å of each other's periodic
    image, sometimes labels partly NaN, infinite or of the wrong shape."""
    n = int(rng.choice([1, 2, 5, 8, 70]))
    cell = np.diag(rng.uniform(3.0, 9.0, 3)) + rng.uniform(-2.5, 2.5, (3, 3))
    if rng.random() < 0.1:
        cell[2] = [0.0, 0.0, rng.uniform(0.1, 0.3)]  # a width near 2 × 0.1 Å
    pbc = [[True] * 3, [False] * 3, [True, True, False]][int(rng.choice(3, p=[0.6, 0.3, 0.1]))]
    fractional = rng.random((n, 3))
    atoms = Atoms(numbers=[14] * n, scaled_positions=fractional, cell=cell, pbc=pbc)
    if n > 1 and rng.random() < 0.4:
        # atom 1 next to an image of atom 0, often across the cell
        shift = rng.integers(-1, 2, 3) if all(pbc) else np.zeros(3)
        atoms.positions[1] = atoms.positions[0] + shift @ cell + rng.normal(0.0, 0.06, 3)
    labels = labels_from_atoms(atoms)
    draw = rng.random()
    if draw < 0.1:
        labels["forces"] = rng.normal(size=(n, 3))
        labels["forces"][0, 0] = np.nan
    elif draw < 0.15:
        labels["energy"] = np.array(np.inf)
    elif draw < 0.2:
        labels["atomic_energies"] = np.zeros(n + 1)
    elif draw < 0.35:
        labels["energy"] = np.array(-3.0 * n)
        labels["stress"] = rng.normal(size=6)
    return atoms, labels


def complaint(check, *args) -> str | None:
    try:
        check(*args)
    except DataError as exc:
        return str(exc)
    return None


def test_one_by_one_and_at_once_agree_on_every_structure():
    rng = np.random.default_rng(0)
    outcomes = set()
    for k in range(400):
        atoms, labels = random_structure(rng)
        where = f"in.xyz: structure {k}"
        expected = complaint(validate_structure, atoms, labels, where)
        assert complaint(validate_structures, [atoms], [labels], [where]) == expected
        outcomes.add(expected.split(": ", 2)[-1].split()[0] if expected else "valid")
    # every kind of structure was drawn: valid ones, close atoms, bad labels
    assert {"valid", "atoms", "forces", "infinite", "atomic_energies"} <= outcomes


def test_the_first_bad_structure_of_many_is_named():
    rng = np.random.default_rng(1)
    drawn = [random_structure(rng) for _ in range(300)]
    where = [f"in.xyz: structure {k}" for k in range(300)]
    messages = [complaint(validate_structure, a, l, w) for (a, l), w in zip(drawn, where)]
    first = next(message for message in messages if message)
    atoms, labels = zip(*drawn)
    assert complaint(validate_structures, atoms, labels, where) == first
    valid = [k for k, message in enumerate(messages) if message is None]
    assert len(valid) > 100
    validate_structures([atoms[k] for k in valid], [labels[k] for k in valid], where[:len(valid)])


def test_close_periodic_images_are_found_in_a_skewed_cell():
    cell = [[4.0, 0.0, 0.0], [3.9, 4.0, 0.0], [0.0, 0.0, 4.0]]  # strongly sheared
    atoms = Atoms("Si2", positions=[[0.1, 0.1, 1.0], [0.1, 0.1, 1.0]], cell=cell, pbc=True)
    atoms.positions[1] += np.array(cell[0]) + np.array(cell[1]) + [0.05, 0.02, 0.0]
    with pytest.raises(DataError, match="atoms 0 and 1 are 0.0[0-9]* Å apart"):
        validate_structures([atoms], [labels_from_atoms(atoms)], ["cell"])


def test_clean_labels_flags_what_check_labels_would_refuse_or_reshape():
    n_atoms = [2, 2, 2, 2]
    good = {"energy": np.array(-1.0), "forces": np.zeros((2, 3))}
    labels = [
        good,
        {**good, "stress": np.zeros((3, 3))},  # reshaped to Voigt by check_labels
        {**good, "forces": np.array([[0.0, 0.0, np.nan], [0.0, 0.0, 0.0]])},
        {**good, "charges": np.zeros(2)},
    ]
    assert clean_labels(labels, n_atoms).tolist() == [True, False, False, False]
