"""Vacancies: copies of a (super)cell with a few random atoms removed.

A student trained only on perfect, rattled crystals has never seen an under-coordinated atom;
vacancy structures show it the environments next to a missing neighbour.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from ase import Atoms

from mlip_distill.sampling.contacts import CloseContactCheck
from mlip_distill.sampling.errors import SamplingError
from mlip_distill.sampling.perturb import RandomSource, rattle, seed_cells

#: ``info["config_type"]`` of structures made by :func:`sample_vacancies`.
CONFIG_TYPE = "vacancy"


def vacancy_limit(n_atoms: int, max_vacancies: float) -> int:
    """The largest number of atoms to remove from a structure of ``n_atoms`` atoms.

    ``max_vacancies`` is a count when it is a whole number of 1 or more (``2``: up to two
    vacancies), a fraction of the atoms when it lies between 0 and 1 (``0.05``: up to 5 % of
    the atoms, rounded down, but at least one). At least one atom is always left.
    """
    if 0 < max_vacancies < 1:
        limit = max(1, math.floor(max_vacancies * n_atoms))
    elif max_vacancies >= 1 and float(max_vacancies).is_integer():
        limit = int(max_vacancies)
    else:
        raise SamplingError(
            f"max_vacancies (--max-vacancies) must be a count of 1 or more or a fraction "
            f"between 0 and 1, not {max_vacancies}"
        )
    if limit >= n_atoms:
        raise SamplingError(
            f"max_vacancies (--max-vacancies) {max_vacancies} would remove {limit} of the "
            f"{n_atoms} atoms of a seed; use a larger --supercell or fewer vacancies"
        )
    return limit


def remove_atoms(atoms: Atoms, max_vacancies: float, rng: RandomSource = None) -> Atoms:
    """A copy of ``atoms`` without k of its atoms, k drawn uniformly from 1 to
    :func:`vacancy_limit` and the k atoms chosen at random without repetition.
    k is recorded in ``info["n_vacancies"]``."""
    rng = np.random.default_rng(rng)
    n_vacancies = int(rng.integers(1, vacancy_limit(len(atoms), max_vacancies), endpoint=True))
    copy = atoms.copy()
    del copy[rng.choice(len(atoms), size=n_vacancies, replace=False)]
    copy.info["n_vacancies"] = n_vacancies
    return copy


def sample_vacancies(
    seeds: Sequence[Atoms],
    n_structures: int,
    *,
    max_vacancies: float,
    rattle_sigma: tuple[float, float],
    supercell: tuple[int, int, int] | None,
    min_distance: float,
    rng: RandomSource,
) -> list[Atoms]:
    """``n_structures`` vacancy structures made from ``seeds`` taken in turn.

    Each seed (prepared by :func:`~mlip_distill.sampling.perturb.seed_cells`) loses 1 to
    ``max_vacancies`` random atoms (:func:`remove_atoms`), then is rattled with a Gaussian width
    σ (Å) drawn from ``rattle_sigma`` (:func:`~mlip_distill.sampling.perturb.rattle`;
    ``(0, 0)`` keeps the lattice sites). Structures with atoms closer than ``min_distance`` Å
    are redrawn and their number logged. ``info`` carries ``config_type = "vacancy"``,
    ``n_vacancies``, ``rattle_sigma``, and the seed index as ``source_index`` and ``system_id``.
    """
    bases = seed_cells(seeds, supercell)
    rng = np.random.default_rng(rng)
    check = CloseContactCheck(min_distance, CONFIG_TYPE)
    sampled: list[Atoms] = []
    while len(sampled) < n_structures:
        check.give_up_after(n_structures, f"lower the rattle sigma {rattle_sigma}")
        seed_index = len(sampled) % len(bases)
        atoms = rattle(remove_atoms(bases[seed_index], max_vacancies, rng), rattle_sigma, rng=rng)[0]
        if check.accepts(atoms):
            atoms.info.update(config_type=CONFIG_TYPE, source_index=seed_index, system_id=seed_index)
            sampled.append(atoms)
    check.report()
    return sampled
