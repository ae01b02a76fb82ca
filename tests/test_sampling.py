"""Sampling: rattle and strain statistics, close-contact rejection, seed specs, sample files."""

from __future__ import annotations

import logging
import re

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

from mlip_distill.data.errors import DataError
from mlip_distill.sampling import (
    SamplingError,
    bulk_crystal,
    has_close_contact,
    rattle,
    sample_file,
    sample_structures,
    seed_structures,
    strain,
)


@pytest.fixture
def copper() -> Atoms:
    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat((4, 4, 4))  # 256 atoms


def displacements(original: Atoms, copy: Atoms) -> np.ndarray:
    return copy.positions - original.positions


def deformation_gradient(original: Atoms, strained: Atoms) -> np.ndarray:
    """F with ``strained.cell = original.cell @ F``."""
    return np.linalg.solve(original.cell.array, strained.cell.array)


# --- rattle -----------------------------------------------------------------------------------


def test_rattle_displacements_are_gaussian_with_the_drawn_sigma(copper):
    copies = rattle(copper, sigma_range=(0.1, 0.1), n=4, rng=1)
    d = np.concatenate([displacements(copper, c) for c in copies])  # 1024 atoms x 3
    assert d.mean() == pytest.approx(0.0, abs=0.01)
    assert d.std() == pytest.approx(0.1, rel=0.05)
    # Mean length of a 3-D Gaussian vector with per-component sigma is sigma * sqrt(8 / pi).
    assert np.linalg.norm(d, axis=1).mean() == pytest.approx(0.1 * np.sqrt(8 / np.pi), rel=0.05)


def test_rattle_draws_one_sigma_per_copy_within_the_range(copper):
    copies = rattle(copper, sigma_range=(0.05, 0.15), n=20, rng=2)
    sigmas = np.array([c.info["rattle_sigma"] for c in copies])
    assert ((sigmas >= 0.05) & (sigmas <= 0.15)).all()
    assert sigmas.std() > 0.01  # drawn, not fixed
    for copy, sigma in zip(copies, sigmas, strict=True):
        assert displacements(copper, copy).std() == pytest.approx(sigma, rel=0.1)
        np.testing.assert_array_equal(copy.cell.array, copper.cell.array)


def test_rattle_leaves_the_input_alone_and_is_reproducible(copper):
    before = copper.positions.copy()
    first = rattle(copper, n=2, rng=7)
    second = rattle(copper, n=2, rng=7)
    np.testing.assert_array_equal(copper.positions, before)
    np.testing.assert_array_equal(first[1].positions, second[1].positions)
    assert not np.allclose(first[0].positions, first[1].positions)


# --- strain -----------------------------------------------------------------------------------


def test_strain_is_symmetric_bounded_and_keeps_fractional_coordinates(copper):
    copies = strain(copper, max_strain=0.02, n=50, rng=3)
    epsilons = np.array([deformation_gradient(copper, c) - np.eye(3) for c in copies])
    np.testing.assert_allclose(epsilons, epsilons.transpose(0, 2, 1), atol=1e-12)
    assert np.abs(epsilons).max() <= 0.02
    assert np.abs(epsilons).max() > 0.018  # the whole range is used
    assert np.abs(epsilons[:, 0, 1]).max() > 0.01  # shear present
    for copy in copies[:5]:
        np.testing.assert_allclose(
            copy.get_scaled_positions(wrap=False),
            copper.get_scaled_positions(wrap=False),
            atol=1e-12,
        )


def test_strain_changes_volume_by_the_determinant(copper):
    (copy,) = strain(copper, max_strain=0.05, rng=4)
    f = deformation_gradient(copper, copy)
    assert copy.get_volume() / copper.get_volume() == pytest.approx(np.linalg.det(f), rel=1e-12)
    assert abs(copy.get_volume() / copper.get_volume() - 1) > 1e-4
    assert abs(copy.get_volume() / copper.get_volume() - 1) < 3 * 0.05 + 0.01


def test_strain_without_shear_only_stretches_the_axes(copper):
    for copy in strain(copper, max_strain=0.03, n=10, rng=5, shear=False):
        epsilon = deformation_gradient(copper, copy) - np.eye(3)
        np.testing.assert_allclose(epsilon - np.diag(np.diag(epsilon)), 0.0, atol=1e-12)


# --- close contacts ---------------------------------------------------------------------------


def test_close_contact_sees_periodic_images():
    pair = Atoms("Cu2", positions=[[0.1, 0, 0], [4.9, 0, 0]], cell=[5.0, 5.0, 5.0], pbc=True)
    assert has_close_contact(pair, 0.5)  # 0.2 Å apart across the boundary
    pair.pbc = False
    assert not has_close_contact(pair, 0.5)


def test_sample_structures_rejects_and_redraws_close_contacts(caplog):
    dimer = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.6]])
    with caplog.at_level(logging.WARNING, logger="mlip_distill.sampling"):
        sampled = sample_structures([dimer], 30, rattle_sigma=(0.1, 0.1), min_distance=0.5)
    assert len(sampled) == 30
    assert all(s.get_distance(0, 1) >= 0.5 for s in sampled)
    (message,) = [r.getMessage() for r in caplog.records]
    n_rejected, n_drawn = map(int, re.search(r"rejected (\d+) of (\d+)", message).groups())
    assert n_rejected > 0 and n_drawn == n_rejected + 30


def test_sample_structures_gives_up_when_nearly_everything_is_rejected():
    dimer = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.2]])
    with pytest.raises(SamplingError, match="closer than 0.5"):
        sample_structures([dimer], 5, rattle_sigma=(0.001, 0.001), min_distance=0.5)


# --- sample_structures ------------------------------------------------------------------------


def test_sample_structures_cycles_seeds_and_tags_them():
    seeds = [bulk("Cu", "fcc", a=3.61, cubic=True), bulk("Al", "fcc", a=4.05, cubic=True)]
    sampled = sample_structures(seeds, 5, supercell=(2, 2, 2), seed=1)
    assert [s.info["source_index"] for s in sampled] == [0, 1, 0, 1, 0]
    assert {s.info["config_type"] for s in sampled} == {"rattle-strain"}
    assert [s.get_chemical_formula() for s in sampled[:2]] == ["Cu32", "Al32"]
    assert all(not np.allclose(s.cell.array, np.eye(3) * 7.22) for s in sampled[::2])


def test_sample_structures_is_reproducible_from_its_seed():
    seeds = [bulk("Cu", "fcc", a=3.61)]
    a, b = sample_structures(seeds, 3, seed=11), sample_structures(seeds, 3, seed=11)
    c = sample_structures(seeds, 3, seed=12)
    np.testing.assert_array_equal(a[2].positions, b[2].positions)
    assert not np.allclose(a[2].positions, c[2].positions)


def test_sample_structures_drops_the_seed_labels():
    seed = bulk("Cu", "fcc", a=3.61, cubic=True)
    seed.calc = SinglePointCalculator(seed, energy=-1.0, forces=np.zeros((4, 3)))
    seed.info["REF_energy"] = -1.0
    seed.arrays["REF_forces"] = np.zeros((4, 3))
    (sampled,) = sample_structures([seed], 1)
    assert sampled.calc is None
    assert "REF_energy" not in sampled.info and "REF_forces" not in sampled.arrays


def test_molecules_are_rattled_but_not_strained():
    water = molecule("H2O")
    for sampled in sample_structures([water], 4, rattle_sigma=(0.05, 0.05)):
        # Rattling alone moves atoms by ~0.08 Å; a strain of a 1 Å molecule would not change
        # the cell, which stays zero.
        np.testing.assert_array_equal(sampled.cell.array, 0.0)
        assert 0.01 < np.abs(sampled.positions - water.positions).max() < 0.5


# --- seeds ------------------------------------------------------------------------------------


def test_bulk_spec_grammar():
    crystal = bulk_crystal("bulk:Cu:fcc:a=3.61:cubic:2x2x2")
    assert crystal.get_chemical_formula() == "Cu32"
    np.testing.assert_allclose(crystal.cell.lengths(), [7.22] * 3)
    assert crystal.pbc.all()
    reordered = bulk_crystal("bulk:Cu:2x2x2:cubic:a=3.61:fcc")
    np.testing.assert_allclose(reordered.positions, crystal.positions)
    assert len(bulk_crystal("bulk:Cu")) == 1  # primitive cell, reference lattice constant
    magnesium = bulk_crystal("bulk:Mg:hcp:a=3.2:c=5.2:1x1x2")
    np.testing.assert_allclose(magnesium.cell.cellpar()[[0, 2]], [3.2, 10.4])
    assert bulk_crystal("bulk:NaCl:rocksalt:a=5.64").get_chemical_formula() == "ClNa"


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("bulk:Cu:foo", "cannot read 'foo'"),
        ("bulk:Cu:fcc:a=big", "is not a number"),
        ("bulk::fcc", "no element"),
        ("bulk:Xx:fcc:a=3", "'Xx' is not an element"),
        ("bulk:Si:fcc", "lattice constant"),
        ("bulk:Cu:hcp:a=2.5:cubic", "cubic"),
        ("bulk:Cu:0x1x1", "at least 1"),
        ("no/such/file.xyz", "neither an existing file nor a bulk spec"),
    ],
)
def test_bad_seed_spec_is_one_line(spec, complaint):
    with pytest.raises(SamplingError) as caught:
        seed_structures(spec)
    message = str(caught.value)
    assert complaint in message and spec in message and "\n" not in message


def test_seed_structures_reads_every_frame_of_a_file(tmp_path):
    path = tmp_path / "seeds.xyz"
    ase.io.write(path, [bulk("Cu", "fcc", a=3.61), molecule("H2O")])
    seeds = seed_structures(str(path))
    assert [s.get_chemical_formula() for s in seeds] == ["Cu", "H2O"]
    (tmp_path / "broken.xyz").write_text("not a structure\n")
    with pytest.raises(DataError):
        seed_structures(tmp_path / "broken.xyz")


def test_sample_file_writes_extxyz(tmp_path):
    out = tmp_path / "sampled.xyz"
    assert sample_file("bulk:Cu:fcc:a=3.61:cubic", out, 6, supercell=(2, 1, 1), seed=3) == 6
    structures = ase.io.read(out, ":")
    assert len(structures) == 6 and all(len(s) == 8 for s in structures)
    assert {s.info["config_type"] for s in structures} == {"rattle-strain"}
    assert {s.info["source_index"] for s in structures} == {0}
    assert [p.name for p in tmp_path.iterdir()] == ["sampled.xyz"]  # no partial file left
