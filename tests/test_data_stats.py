"""Dataset statistics: E0 (isolated atoms, least squares), scales, neighbours, the table."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

from mlip_distill.data.errors import DataError
from mlip_distill.data.stats import (
    DatasetStatistics,
    compute_statistics,
    format_statistics,
    statistics_for_file,
)
from mlip_distill.data.store import LabelStore

E0 = {29: -3.25, 79: -1.5}  # eV, the per-element constants the synthetic energies are built from


@pytest.fixture
def alloy_store(tmp_path):
    """CuAu structures of random composition whose energy is a sum of E0 plus 0.1 meV noise."""
    rng = np.random.default_rng(0)
    frames, labels = [], []
    for _ in range(12):
        atoms = bulk("Cu", "fcc", a=3.8, cubic=True).repeat((2, 1, 1))
        atoms.numbers = rng.choice([29, 79], size=len(atoms))
        energy = sum(E0[z] for z in atoms.numbers) + rng.normal(scale=1e-4)
        frames.append(atoms)
        labels.append({"energy": np.array(energy), "forces": rng.normal(size=(len(atoms), 3))})
    path = tmp_path / "labels.h5"
    with LabelStore(path, "a") as store:
        store.set_labels("teacher", store.append(frames), labels)
    return path, labels


def test_least_squares_recovers_the_per_element_energies(alloy_store):
    path, labels = alloy_store
    with pytest.warns(UserWarning, match="no isolated-atom energy for Cu, Au: E0 fitted"):
        stats = compute_statistics(path, "teacher", cutoff=3.0)
    assert stats.e0_method == "least squares"
    assert stats.e0.keys() == E0.keys()
    for z, value in E0.items():
        assert stats.e0[z] == pytest.approx(value, abs=1e-4)
    assert stats.energy_rms_per_atom < 1e-4
    forces = np.concatenate([label["forces"] for label in labels])
    assert stats.force_rms == pytest.approx(np.sqrt(np.mean(forces**2)), rel=1e-12)
    assert stats.n_with_energy == stats.n_with_forces == 12 and stats.n_with_stress == 0


def test_isolated_atom_energies_take_precedence(alloy_store):
    path, _ = alloy_store
    with LabelStore(path, "a") as store:
        store.set_isolated_atoms("teacher", {29: -3.0, 79: -1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        stats = compute_statistics(path, "teacher", cutoff=3.0)
    assert stats.e0 == {29: -3.0, 79: -1.0}
    assert stats.e0_method == "isolated atoms"
    # each atom is then 0.25 (Cu) or 0.5 eV (Au) below its E0
    assert -0.5 < stats.energy_mean_per_atom < -0.25


def test_missing_isolated_atoms_are_fitted_with_the_known_held_fixed(alloy_store):
    path, _ = alloy_store
    with LabelStore(path, "a") as store:
        store.set_isolated_atoms("teacher", {29: E0[29]})
    with pytest.warns(UserWarning, match="no isolated-atom energy for Au"):
        stats = compute_statistics(path, "teacher", cutoff=3.0)
    assert stats.e0[29] == E0[29]
    assert stats.e0[79] == pytest.approx(E0[79], abs=1e-4)
    assert stats.e0_method == "isolated atoms and least squares"


def test_perfect_fcc_crystal_has_twelve_neighbours_and_no_forces(tmp_path):
    crystal = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    crystal.calc = EMT()
    crystal.get_potential_energy()
    write(tmp_path / "fcc.xyz", crystal)
    # first shell at a/sqrt(2) = 2.55 Å, second at a = 3.61 Å
    with pytest.warns(UserWarning, match="source 'reference': no isolated-atom energy for Cu"):
        stats = statistics_for_file(tmp_path / "fcc.xyz", cutoff=3.0)
        beyond_second_shell = statistics_for_file(tmp_path / "fcc.xyz", cutoff=4.0)
    assert stats.mean_neighbours == 12.0 and beyond_second_shell.mean_neighbours == 18.0
    assert stats.force_rms < 1e-10
    assert stats.element_counts == {29: 32} and stats.size_histogram == {32: 1}
    assert stats.energy_rms_per_atom < 1e-12  # one structure: E0 absorbs its energy


def test_statistics_round_trip_through_json_and_print(alloy_store):
    path, _ = alloy_store
    with pytest.warns(UserWarning):
        stats = statistics_for_file(path, cutoff=3.0)
    assert stats.source == "teacher"
    assert DatasetStatistics.from_dict(json.loads(json.dumps(stats.as_dict()))) == stats
    table = format_statistics(stats)
    assert "Statistics (source 'teacher', cutoff 3 Å)" in table
    assert "Cu" in table and "Au" in table and "force RMS" in table


def test_file_without_labels_has_structure_statistics_only(tmp_path):
    write(tmp_path / "plain.xyz", [bulk("Cu", "fcc", a=3.61, cubic=True)] * 2)
    stats = statistics_for_file(tmp_path / "plain.xyz", cutoff=3.0)
    assert stats.source is None and stats.e0 == {} and np.isnan(stats.force_rms)
    assert stats.n_structures == 2 and stats.mean_neighbours == 12.0
    assert "no labels" in format_statistics(stats)


def test_file_of_isolated_atoms_only_is_an_error(tmp_path):
    atom = Atoms("Cu", positions=[[0, 0, 0]])
    atom.info["energy"] = -0.5
    write(tmp_path / "atoms.xyz", atom)
    with pytest.raises(DataError, match="atoms.xyz: holds no structures besides isolated atoms"):
        statistics_for_file(tmp_path / "atoms.xyz")
