"""Rattle–relax–repeat: partial relaxations with the teacher, from Boltzmann-chosen parents.

Each round picks a parent (at first a seed, later the end of an earlier relaxation), rattles
it and relaxes it for a few optimiser steps with the teacher, keeping every frame: the rattled
start, the frames on the way down, and the partly relaxed end, which joins the parents. Parents
are chosen with Boltzmann weights of their teacher energy per atom (:func:`boltzmann_weights`),
so that the search stays near low-energy structures while the temperature lets it wander.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from ase import Atoms, units
from ase.optimize import BFGS, FIRE

from mlip_distill.sampling.contacts import CloseContactCheck
from mlip_distill.sampling.errors import SamplingError
from mlip_distill.sampling.perturb import RandomSource, bare_copy, rattle, seed_cells
from mlip_distill.teachers.base import Teacher

#: ``info["config_type"]`` of frames made by :func:`rattle_relax`.
CONFIG_TYPE = "relax"

#: The ASE optimisers a relaxation can use, by the name given in a sampling plan.
OPTIMIZERS = {"FIRE": FIRE, "BFGS": BFGS}


def boltzmann_weights(energies_per_atom: Sequence[float], temperature: float) -> np.ndarray:
    """Probabilities ∝ exp(−(e − e_min) / (k_B T)) of structures with energies per atom e (eV).

    Args:
        energies_per_atom: (P,) teacher energy of each candidate divided by its atom count, eV.
        temperature: T in K; higher T flattens the weights towards uniform.

    Returns:
        (P,) float64, summing to 1. The lowest energy has the largest weight.
    """
    energies = np.asarray(energies_per_atom, dtype=np.float64)
    weights = np.exp(-(energies - energies.min()) / (units.kB * temperature))
    return weights / weights.sum()


def check_relax_settings(steps: int, fmax: float, temperature: float, optimizer: str) -> None:
    """Raise :class:`SamplingError` naming the first setting of :func:`rattle_relax` that
    cannot work."""
    if steps < 1:
        raise SamplingError(f"relax_steps (--relax-steps) must be 1 or more, not {steps}")
    if not fmax > 0:
        raise SamplingError(f"relax_fmax (--relax-fmax) must be above 0 eV/Å, not {fmax}")
    if not temperature > 0:
        raise SamplingError(
            f"relax_temperature (--relax-temperature) must be above 0 K, not {temperature}"
        )
    if optimizer not in OPTIMIZERS:
        raise SamplingError(
            f"relax_optimizer (--relax-optimizer) must be one of {', '.join(OPTIMIZERS)}, "
            f"not '{optimizer}'"
        )


@dataclass
class _Parent:
    """A structure to rattle and relax from, with its teacher energy per atom (eV)."""

    atoms: Atoms
    energy_per_atom: float
    seed_index: int


def rattle_relax(
    seeds: Sequence[Atoms],
    teacher: Teacher,
    n_frames: int,
    *,
    rattle_sigma: tuple[float, float],
    steps: int,
    fmax: float,
    temperature: float,
    optimizer: str,
    supercell: tuple[int, int, int] | None,
    min_distance: float,
    rng: RandomSource,
) -> list[Atoms]:
    """``n_frames`` frames of rattle–relax–repeat rounds (see the module docstring).

    Args:
        seeds: the first parents, prepared by :func:`~mlip_distill.sampling.perturb.seed_cells`.
        teacher: gives the energies (eV) and forces (eV/Å) the optimiser follows.
        rattle_sigma: range of the Gaussian displacement width σ, Å (see
            :func:`~mlip_distill.sampling.perturb.rattle`).
        steps: optimiser steps per relaxation; a round yields up to ``steps + 1`` frames.
        fmax: a relaxation stops early once no atom feels a force above this, eV/Å.
        temperature: of the Boltzmann parent choice, K (:func:`boltzmann_weights`).
        optimizer: a key of :data:`OPTIMIZERS`.
        min_distance: a rattled start with atoms closer than this (Å) is not relaxed, a frame
            with such atoms is dropped; their number is logged.

    Every frame's ``info`` carries ``config_type = "relax"``, ``relax_trajectory`` (the round
    it comes from, from 0), ``relax_step`` (0: the rattled start) and the seed index it
    descends from as ``source_index`` and ``system_id``.
    """
    check_relax_settings(steps, fmax, temperature, optimizer)
    rng = np.random.default_rng(rng)
    calculator = teacher.ase_calculator()
    parents = [
        _Parent(atoms, float(teacher.label(atoms)["energy"]) / len(atoms), index)
        for index, atoms in enumerate(seed_cells(seeds, supercell))
    ]
    check = CloseContactCheck(min_distance, CONFIG_TYPE)
    frames: list[Atoms] = []
    n_trajectories = 0
    while len(frames) < n_frames:
        check.give_up_after(n_frames, f"lower the rattle sigma {rattle_sigma}")
        weights = boltzmann_weights([p.energy_per_atom for p in parents], temperature)
        parent = parents[rng.choice(len(parents), p=weights)]
        atoms = rattle(parent.atoms, rattle_sigma, rng=rng)[0]
        if not check.accepts(atoms):
            continue
        atoms.calc = calculator
        relaxation = OPTIMIZERS[optimizer](atoms, logfile=None)
        for step, _ in enumerate(relaxation.irun(fmax=fmax, steps=steps)):
            if step > 0 and not check.accepts(atoms):
                continue
            frame = bare_copy(atoms)
            frame.info.update(
                config_type=CONFIG_TYPE,
                relax_trajectory=n_trajectories,
                relax_step=step,
                source_index=parent.seed_index,
                system_id=parent.seed_index,
            )
            frames.append(frame)
        energy_per_atom = atoms.get_potential_energy() / len(atoms)
        parents.append(_Parent(bare_copy(atoms), energy_per_atom, parent.seed_index))
        n_trajectories += 1
    check.report()
    return frames[:n_frames]
