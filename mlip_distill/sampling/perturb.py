"""New structures from seeds: random displacements (rattle) and random cell strains.

Rattled and strained copies of a crystal or molecule sample the basin around its minimum, the
region a student must get right first. Every function takes a ``numpy.random.Generator`` or an
integer seed, so a run is reproducible.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import ase.io
import numpy as np
from ase import Atoms

from mlip_distill.sampling.contacts import CloseContactCheck
from mlip_distill.sampling.errors import SamplingError
from mlip_distill.sampling.seeds import seed_structures

#: ``info["config_type"]`` of structures made by :func:`sample_structures`.
CONFIG_TYPE = "rattle-strain"

RandomSource = np.random.Generator | int | None


def rattle(
    atoms: Atoms,
    sigma_range: tuple[float, float] = (0.05, 0.15),
    n: int = 1,
    rng: RandomSource = None,
) -> list[Atoms]:
    """``n`` copies of ``atoms``, each atom displaced by a Gaussian vector.

    Each copy draws its own width σ (Å) uniformly from ``sigma_range``; every Cartesian
    component of every displacement then has standard deviation σ, so the mean displacement
    length is σ·√(8/π) ≈ 1.6 σ. σ is recorded in ``info["rattle_sigma"]``.
    """
    rng = np.random.default_rng(rng)
    low, high = sigma_range
    if not 0 <= low <= high:
        raise SamplingError(f"rattle (--rattle) sigma range {sigma_range} Å must satisfy 0 <= low <= high")
    copies = []
    for _ in range(n):
        sigma = rng.uniform(low, high)
        copy = atoms.copy()
        copy.positions += rng.normal(0.0, sigma, size=(len(copy), 3))
        copy.info["rattle_sigma"] = float(sigma)
        copies.append(copy)
    return copies


def strain(
    atoms: Atoms,
    max_strain: float = 0.01,
    n: int = 1,
    rng: RandomSource = None,
    shear: bool = True,
) -> list[Atoms]:
    """``n`` copies of ``atoms`` with the cell and positions deformed by a random strain.

    The strain ε is a symmetric 3×3 tensor whose components are drawn uniformly from
    [−max_strain, max_strain]: the diagonal stretches or compresses each axis (changing the
    volume by about tr ε), the off-diagonal shears it (only when ``shear``). Cell rows and
    positions are both multiplied by (1 + ε), so fractional coordinates are unchanged.
    """
    rng = np.random.default_rng(rng)
    if max_strain < 0:
        raise SamplingError(f"strain (--strain) {max_strain} must not be negative")
    copies = []
    for _ in range(n):
        epsilon = np.diag(rng.uniform(-max_strain, max_strain, size=3))
        if shear:
            upper = np.triu(rng.uniform(-max_strain, max_strain, size=(3, 3)), k=1)
            epsilon += upper + upper.T
        deformation = np.eye(3) + epsilon
        copy = atoms.copy()
        copy.set_cell(copy.cell.array @ deformation, scale_atoms=False)
        copy.positions = copy.positions @ deformation
        copies.append(copy)
    return copies


def sample_structures(
    seeds: Sequence[Atoms],
    n_structures: int,
    rattle_sigma: tuple[float, float] = (0.05, 0.15),
    max_strain: float = 0.01,
    supercell: tuple[int, int, int] | None = None,
    min_distance: float = 0.5,
    seed: RandomSource = 0,
) -> list[Atoms]:
    """``n_structures`` strained and rattled copies of ``seeds``, taken in turn.

    The seeds are prepared by :func:`seed_cells` (``supercell`` repeats, labels dropped). A copy
    is strained (fully periodic seeds only; see :func:`strain`), then rattled (:func:`rattle`).
    Copies with two atoms closer than ``min_distance`` Å are rejected and redrawn; the number
    rejected is logged. Every structure carries ``info["config_type"] = "rattle-strain"`` and
    ``info["source_index"]``, the index of its seed in ``seeds``; ``info["system_id"]`` is the
    same index, so that a label store groups the copies of one seed as conformers of one system.

    Raises :class:`SamplingError` when there are no seeds or too many draws are rejected.
    """
    bases = seed_cells(seeds, supercell)
    rng = np.random.default_rng(seed)
    check = CloseContactCheck(min_distance, CONFIG_TYPE)
    sampled: list[Atoms] = []
    while len(sampled) < n_structures:
        check.give_up_after(
            n_structures, f"lower the rattle sigma {rattle_sigma} or min_distance"
        )
        seed_index = len(sampled) % len(bases)
        atoms = bases[seed_index]
        if atoms.pbc.all():
            atoms = strain(atoms, max_strain, rng=rng)[0]
        atoms = rattle(atoms, rattle_sigma, rng=rng)[0]
        if check.accepts(atoms):
            atoms.info.update(
                config_type=CONFIG_TYPE, source_index=seed_index, system_id=seed_index
            )
            sampled.append(atoms)
    check.report()
    return sampled


def sample_file(
    seeds: str,
    out_path: str | Path,
    n_structures: int,
    rattle_sigma: tuple[float, float] = (0.05, 0.15),
    max_strain: float = 0.01,
    supercell: tuple[int, int, int] | None = None,
    min_distance: float = 0.5,
    seed: int = 0,
) -> int:
    """Sample structures from ``seeds`` (a file or a ``bulk:`` spec, see
    :func:`~mlip_distill.sampling.seeds.seed_structures`) into the extxyz file ``out_path``;
    returns the number written. The file appears only once complete."""
    structures = sample_structures(
        seed_structures(seeds),
        n_structures,
        rattle_sigma=rattle_sigma,
        max_strain=max_strain,
        supercell=supercell,
        min_distance=min_distance,
        seed=seed,
    )
    write_extxyz(structures, out_path)
    return len(structures)


def write_extxyz(structures: Sequence[Atoms], out_path: str | Path) -> None:
    """Write ``structures`` to the extxyz file ``out_path``, which appears only once complete."""
    out_path = Path(out_path)
    descriptor, partial_path = tempfile.mkstemp(
        prefix=f".{out_path.name}.", suffix=".partial", dir=out_path.parent
    )
    os.close(descriptor)
    try:
        ase.io.write(partial_path, structures, format="extxyz")
        os.replace(partial_path, out_path)
    finally:
        Path(partial_path).unlink(missing_ok=True)


def seed_cells(
    seeds: Sequence[Atoms], supercell: tuple[int, int, int] | None = None
) -> list[Atoms]:
    """The seeds every generator starts from: each repeated ``supercell`` times along its
    lattice vectors (when given) and stripped of its labels (:func:`bare_copy`).

    Raises :class:`SamplingError` when there are no seeds.
    """
    if not seeds:
        raise SamplingError("no seed structures to sample from")
    return [bare_copy(atoms.repeat(supercell) if supercell else atoms) for atoms in seeds]


def bare_copy(atoms: Atoms) -> Atoms:
    """Only numbers, positions, cell and periodicity: the energies, forces, reference labels
    (``info``/``arrays``), constraints and velocities of the original do not describe a new
    structure."""
    return Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
