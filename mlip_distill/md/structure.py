"""Structure of MD frames per species pair: radial distribution functions g(r) of periodic
systems, distributions of interatomic distances of molecules, and shortest contacts."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations_with_replacement
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

from ..data.graph import neighbour_list


def species_pairs(numbers: np.ndarray) -> list[tuple[int, int]]:
    """Every unordered pair of atomic numbers (Z_a <= Z_b) that has at least one atom pair in
    a structure with these ``numbers`` (a pair of one element needs two atoms of it)."""
    counts = {int(z): int(n) for z, n in zip(*np.unique(numbers, return_counts=True))}
    return [(a, b) for a, b in combinations_with_replacement(sorted(counts), 2) if a != b or counts[a] > 1]


def pair_name(pair: tuple[int, int]) -> str:
    """``"C-H"``-style label of a species pair."""
    return f"{chemical_symbols[pair[0]]}-{chemical_symbols[pair[1]]}"


def all_distances(atoms: Atoms) -> np.ndarray:
    """(N, N) distances in Å, minimum-image when ``atoms`` is periodic."""
    return atoms.get_all_distances(mic=bool(atoms.pbc.any()))


def shortest_distances(atoms: Atoms) -> dict[tuple[int, int], float]:
    """The shortest distance (Å) between two atoms of each species pair (see :func:`species_pairs`)."""
    distances = all_distances(atoms)
    np.fill_diagonal(distances, np.inf)
    numbers = atoms.numbers
    return {
        (a, b): float(distances[np.ix_(numbers == a, numbers == b)].min())
        for a, b in species_pairs(numbers)
    }


def distribution_unit(periodic: bool) -> str:
    """What :func:`pair_distribution` gives: g(r) for periodic systems, a density for molecules."""
    return "g(r)" if periodic else "density of distances (1/Å)"


@dataclass
class PairDistribution:
    """Per species pair, a histogram of interatomic distances averaged over frames.

    ``periodic``: ``curves`` are radial distribution functions g(r) (dimensionless, tending to 1
    at large r in a liquid). Molecules: probability densities of the distance (1/Å, integrating to
    the fraction of pairs closer than ``r_max``).

    Attributes:
        r: (B,) bin centres, Å.  curves: ``{"Cu-Cu": (B,)}``.
    """

    r: np.ndarray
    curves: dict[str, np.ndarray]
    periodic: bool

    @property
    def unit(self) -> str:
        return distribution_unit(self.periodic)


def pair_distribution(frames: Sequence[Atoms], r_max: float, bin_width: float = 0.05) -> PairDistribution:
    """Radial distribution functions (periodic frames) or distance densities (molecules) per
    species pair, averaged over ``frames`` (same atoms in each; Å).

    Periodic: g_ab(r) = V n_ab(r) / (N_a (N_b - δ_ab) 4π r² Δr), with n_ab counting, for every
    atom of a, the atoms of b (all periodic images) in the shell; r_max may exceed half the cell.
    Molecules: the histogram of the N_ab distances of the pair divided by N_ab Δr.
    """
    if not frames:
        raise ValueError("pair_distribution needs at least one frame")
    edges = np.arange(0.0, r_max + bin_width / 2, bin_width)
    r = 0.5 * (edges[1:] + edges[:-1])
    numbers = frames[0].numbers
    pairs = species_pairs(numbers)
    periodic = bool(frames[0].pbc.any())
    totals = {pair: np.zeros(len(r)) for pair in pairs}
    for atoms in frames:
        centre_z, neighbour_z, distances = _pair_distances(atoms, r_max)
        for a, b in pairs:
            in_pair = ((centre_z == a) & (neighbour_z == b)) | ((centre_z == b) & (neighbour_z == a))
            totals[(a, b)] += np.histogram(distances[in_pair], bins=edges)[0]
    curves = {}
    for (a, b), counts in totals.items():
        n_a, n_b = int((numbers == a).sum()), int((numbers == b).sum())
        if periodic:
            # _pair_distances gives each pair from both ends: a-b shells counted from a and from b.
            shell_volumes = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
            ends = 1 if a == b else 2
            ideal = n_a * (n_b - (a == b)) / frames[0].get_volume() * shell_volumes * ends
            curves[pair_name((a, b))] = counts / (len(frames) * ideal)
        else:
            n_pairs = n_a * (n_a - 1) / 2 if a == b else n_a * n_b
            curves[pair_name((a, b))] = counts / (2 * len(frames) * n_pairs * bin_width)
    return PairDistribution(r, curves, periodic)


def _pair_distances(atoms: Atoms, r_max: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Atomic numbers of both ends and the distance (Å) of every ordered pair closer than ``r_max``
    (both directions of each pair; periodic images included)."""
    positions = atoms.positions
    i, j, shifts = neighbour_list(positions, atoms.cell.array, atoms.pbc, r_max)
    vectors = positions[j] - positions[i] + shifts @ atoms.cell.array
    return atoms.numbers[i], atoms.numbers[j], np.linalg.norm(vectors, axis=1)


def distribution_mae(student: PairDistribution, teacher: PairDistribution) -> float:
    """Mean over species pairs and bins of |student - teacher| (unit of the curves)."""
    if student.curves.keys() != teacher.curves.keys() or len(student.r) != len(teacher.r):
        raise ValueError("pair distributions of different species pairs or bins")
    return float(np.mean([np.abs(student.curves[k] - teacher.curves[k]).mean() for k in teacher.curves]))
