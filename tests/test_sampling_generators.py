"""Vacancies, rattle–relax–repeat and teacher MD: what their structures are, and their rejections."""

from __future__ import annotations

import logging
import re

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from mlip_distill.sampling import (
    CloseContactCheck,
    SamplingError,
    boltzmann_weights,
    parse_supercell,
    rattle_relax,
    remove_atoms,
    sample_vacancies,
    teacher_md,
    vacancy_limit,
)
from mlip_distill.teachers import Teacher, load_teacher

CUBIC_COPPER = bulk("Cu", "fcc", a=3.61, cubic=True)  # 4 atoms; 2x2x2 is 32


@pytest.fixture(scope="module")
def emt():
    return load_teacher("emt")


def rejection_counts(caplog) -> dict[str, tuple[int, int]]:
    """{generator: (rejected, checked)} from the warnings of the close-contact checks."""
    counts = {}
    for record in caplog.records:
        match = re.search(r"rejected (\d+) of (\d+) (\S+) structures", record.getMessage())
        if match:
            counts[match[3]] = (int(match[1]), int(match[2]))
    return counts


# --- vacancies --------------------------------------------------------------------------------


def test_vacancy_structures_lose_k_distinct_atoms_of_the_supercell():
    sampled = sample_vacancies(
        [CUBIC_COPPER], 30, max_vacancies=3, rattle_sigma=(0.0, 0.0), supercell=(2, 2, 2),
        min_distance=0.5, rng=1,
    )
    supercell = CUBIC_COPPER.repeat((2, 2, 2))
    sites = {tuple(np.round(p, 6)) for p in supercell.positions}
    removed_sets = set()
    for atoms in sampled:
        k = atoms.info["n_vacancies"]
        assert 1 <= k <= 3 and len(atoms) == 32 - k
        remaining = [tuple(np.round(p, 6)) for p in atoms.positions]
        assert len(set(remaining)) == len(remaining)  # no atom twice
        assert set(remaining) <= sites  # only lattice sites, unrattled
        removed_sets.add(frozenset(sites - set(remaining)))
        assert atoms.info["config_type"] == "vacancy" and atoms.info["source_index"] == 0
    assert {a.info["n_vacancies"] for a in sampled} == {1, 2, 3}
    assert len(removed_sets) == 30  # no two structures miss the same atoms


def test_vacancy_structures_are_rattled():
    (atoms,) = sample_vacancies(
        [CUBIC_COPPER], 1, max_vacancies=1, rattle_sigma=(0.1, 0.1), supercell=(2, 2, 2),
        min_distance=0.5, rng=2,
    )
    sites = CUBIC_COPPER.repeat((2, 2, 2)).positions
    nearest = np.linalg.norm(atoms.positions[:, None] - sites[None], axis=-1).min(axis=1)
    assert 0.05 < nearest.mean() < 0.3


@pytest.mark.parametrize(
    ("n_atoms", "max_vacancies", "limit"),
    [(32, 2, 2), (32, 2.0, 2), (32, 0.1, 3), (32, 0.01, 1), (2, 1, 1)],
)
def test_vacancy_limit_reads_a_count_or_a_fraction(n_atoms, max_vacancies, limit):
    assert vacancy_limit(n_atoms, max_vacancies) == limit


@pytest.mark.parametrize(("n_atoms", "max_vacancies"), [(32, 1.5), (32, 0), (32, -1), (4, 4)])
def test_bad_vacancy_limit_names_the_option(n_atoms, max_vacancies):
    with pytest.raises(SamplingError, match="--max-vacancies"):
        vacancy_limit(n_atoms, max_vacancies)


def test_remove_atoms_leaves_the_input_alone():
    supercell = CUBIC_COPPER.repeat((2, 2, 2))
    smaller = remove_atoms(supercell, 0.25, rng=3)
    assert len(supercell) == 32 and 1 <= 32 - len(smaller) <= 8


def test_supercell_spec():
    assert parse_supercell("2x1x3") == (2, 1, 3)
    for bad in ("2x2", "0x1x1", "axbxc"):
        with pytest.raises(SamplingError, match="--supercell"):
            parse_supercell(bad)


# --- close contacts ---------------------------------------------------------------------------


def test_close_contact_check_counts_and_reports(caplog):
    check = CloseContactCheck(1.0, "vacancy")
    near = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.7]])
    far = Atoms("H2", positions=[[0, 0, 0], [0, 0, 1.5]])
    assert [check.accepts(a) for a in (near, far, near)] == [False, True, False]
    with caplog.at_level(logging.WARNING, logger="mlip_distill.sampling"):
        check.report()
    assert rejection_counts(caplog) == {"vacancy": (2, 3)}
    with pytest.raises(SamplingError, match="--min-distance"):
        CloseContactCheck(-1.0, "vacancy")


def test_vacancy_generator_reports_its_rejections(caplog):
    chain = Atoms("H3", positions=[[0, 0, 0], [0, 0, 0.6], [0, 0, 1.2]])  # 0.6 Å apart
    with caplog.at_level(logging.WARNING, logger="mlip_distill.sampling"):
        sampled = sample_vacancies(
            [chain], 10, max_vacancies=1, rattle_sigma=(0.05, 0.05), supercell=None,
            min_distance=0.8, rng=4,
        )
    n_rejected, n_checked = rejection_counts(caplog)["vacancy"]
    assert n_rejected > 0 and n_checked == n_rejected + 10
    assert all(a.get_distance(0, 1) >= 0.8 for a in sampled)  # only the end atoms survive


def test_md_drops_frames_with_close_contacts_and_says_how_many(caplog, emt):
    with caplog.at_level(logging.WARNING, logger="mlip_distill.sampling"):
        frames = teacher_md(
            [CUBIC_COPPER], emt, [1000.0], frames=10, interval=5, equilibration=30,
            timestep_fs=2.0, supercell=(2, 2, 2), min_distance=2.2, rng=0,
        )
    n_rejected, n_checked = rejection_counts(caplog)["md-1000K"]
    assert n_checked == 10 and 0 < n_rejected < 10  # nearest neighbours are 2.55 Å apart at rest
    assert len(frames) == 10 - n_rejected


# --- rattle–relax–repeat ----------------------------------------------------------------------


def test_boltzmann_weights_prefer_low_energies():
    energies = [0.10, 0.0, 0.05]  # eV/atom
    weights = boltzmann_weights(energies, temperature=300.0)
    assert weights.sum() == pytest.approx(1.0)
    assert weights[1] > weights[2] > weights[0]
    k_b_t = 8.617333e-5 * 300.0  # eV
    assert weights[2] / weights[1] == pytest.approx(np.exp(-0.05 / k_b_t), rel=1e-5)
    np.testing.assert_allclose(boltzmann_weights(energies, 1e9), 1 / 3, rtol=1e-5)
    choices = np.random.default_rng(0).choice(3, size=2000, p=boltzmann_weights(energies, 600.0))
    counts = np.bincount(choices, minlength=3)
    assert counts[1] > counts[2] > counts[0]


def test_relaxed_frames_are_lower_in_teacher_energy_than_their_rattled_start(emt):
    frames = rattle_relax(
        [CUBIC_COPPER], emt, 12, rattle_sigma=(0.1, 0.1), steps=3, fmax=0.01,
        temperature=300.0, optimizer="FIRE", supercell=(2, 2, 2), min_distance=0.5, rng=5,
    )
    assert len(frames) == 12
    assert {f.info["config_type"] for f in frames} == {"relax"}
    assert all(len(f) == 32 and f.calc is None for f in frames)
    trajectories: dict[int, list[Atoms]] = {}
    for frame in frames:
        trajectories.setdefault(frame.info["relax_trajectory"], []).append(frame)
    assert len(trajectories) == 3  # four frames each: the rattled start and three steps
    for trajectory in trajectories.values():
        assert [f.info["relax_step"] for f in trajectory] == [0, 1, 2, 3]
        start, end = (emt.label(f)["energy"] for f in (trajectory[0], trajectory[-1]))
        assert end < start - 0.1  # eV, for 32 atoms rattled by 0.1 Å


def test_relax_settings_are_checked(emt):
    common = dict(rattle_sigma=(0.1, 0.1), steps=2, fmax=0.05, temperature=300.0,
                  optimizer="FIRE", supercell=None, min_distance=0.5, rng=0)
    for option, value in [("optimizer", "LBFGS"), ("steps", 0), ("fmax", 0.0), ("temperature", 0.0)]:
        with pytest.raises(SamplingError, match=f"--relax-{option}"):
            rattle_relax([CUBIC_COPPER], emt, 2, **{**common, option: value})


# --- teacher MD -------------------------------------------------------------------------------


def test_md_frames_are_tagged_counted_and_hotter_ones_move_further(emt):
    seeds = [CUBIC_COPPER, CUBIC_COPPER.copy()]
    frames = teacher_md(
        seeds, emt, [300.0, 1000.0], frames=5, interval=5, equilibration=30, timestep_fs=2.0,
        supercell=(2, 2, 2), min_distance=0.5, rng=6,
    )
    by_type: dict[str, list[Atoms]] = {}
    for frame in frames:
        by_type.setdefault(frame.info["config_type"], []).append(frame)
    assert sorted(by_type) == ["md-1000K", "md-300K"]
    for config_type, temperature in [("md-300K", 300.0), ("md-1000K", 1000.0)]:
        tagged = by_type[config_type]
        assert len(tagged) == 5
        assert {f.info["temperature"] for f in tagged} == {temperature}
        assert [f.info["source_index"] for f in tagged] == [0, 0, 0, 1, 1]  # shared in turn
        assert [f.info["md_step"] for f in tagged] == [5, 10, 15, 5, 10]
    lattice = CUBIC_COPPER.repeat((2, 2, 2)).positions

    def mean_displacement(tagged: list[Atoms]) -> float:
        return float(np.mean([np.linalg.norm(f.positions - lattice, axis=1).mean() for f in tagged]))

    assert mean_displacement(by_type["md-1000K"]) > 1.3 * mean_displacement(by_type["md-300K"])


@pytest.mark.parametrize(
    ("setting", "option"),
    [
        ({"temperatures": [0.0]}, "--md-temperatures"),
        ({"frames": 0}, "--md-frames"),
        ({"interval": 0}, "--md-interval"),
        ({"equilibration": -1}, "--md-equilibration"),
        ({"timestep_fs": 0.0}, "--md-timestep"),
    ],
)
def test_md_settings_are_checked(emt, setting, option):
    arguments = dict(temperatures=[300.0], frames=2, interval=2, equilibration=0, timestep_fs=1.0,
                     supercell=None, min_distance=0.5, rng=0)
    with pytest.raises(SamplingError, match=option):
        teacher_md([CUBIC_COPPER], emt, **{**arguments, **setting})


class LatticeSprings(Teacher):
    """Not an ASE calculator: each atom tied to its site by a spring of 1 eV/Å², E = ½ Σ |x − x₀|²."""

    name = spec = "springs"
    elements = None
    version = "test"
    settings: dict = {}

    def __init__(self, sites: np.ndarray) -> None:
        self.sites = sites

    def label(self, atoms: Atoms) -> dict[str, np.ndarray]:
        offsets = atoms.positions - self.sites
        return {"energy": np.asarray(0.5 * (offsets**2).sum()), "forces": -offsets,
                "stress": np.full(6, np.nan), "atomic_energies": np.full(len(atoms), np.nan)}


def test_any_teacher_drives_relaxations_and_md():
    supercell = CUBIC_COPPER.repeat((2, 2, 2))
    springs = LatticeSprings(supercell.positions)
    frames = rattle_relax(
        [supercell], springs, 3, rattle_sigma=(0.1, 0.1), steps=2, fmax=0.01, temperature=300.0,
        optimizer="BFGS", supercell=None, min_distance=0.5, rng=7,
    )
    energies = [springs.label(f)["energy"] for f in frames]
    assert energies[2] < energies[0]
    (frame,) = teacher_md([supercell], springs, [300.0], frames=1, interval=5, equilibration=5,
                          timestep_fs=1.0, supercell=None, min_distance=0.5, rng=8)
    assert 0 < np.abs(frame.positions - supercell.positions).max() < 1.0
