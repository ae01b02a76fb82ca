"""When does an MD run stop being physical? Checks applied after every step of a run.

A run fails at the first step where
- the energy or the temperature is not finite;
- the temperature, averaged over a window, leaves a band around the target (a run whose
  temperature runs away is never called stable);
- two atoms of a species pair come closer than a fraction of the shortest distance of that pair
  in the teacher's run at the same temperature (atoms falling into each other);
- in a molecule, a bond of the starting structure is longer than its starting length plus a
  threshold (the criterion of Fu et al., "Forces are not enough", 2023: 0.5 Å).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.neighborlist import natural_cutoffs, neighbor_list

from .structure import pair_name, shortest_distances


@dataclass(frozen=True)
class StabilityCriteria:
    """Thresholds of :class:`StabilityMonitor`.

    Attributes:
        temperature_band: allowed relative deviation of the window-averaged temperature from the
            target (0.5: between 0.5 and 1.5 times the target).
        temperature_window_fs: averaging window of the temperature, fs.
        min_distance_fraction: fail below this fraction of the teacher's shortest distance per
            species pair.
        max_bond_stretch: molecules: fail when a starting bond is longer than its starting
            length plus this, Å.
        check_interval: steps between the distance checks (the temperature is checked every step).
    """

    temperature_band: float = 0.5
    temperature_window_fs: float = 100.0
    min_distance_fraction: float = 0.75
    max_bond_stretch: float = 0.5
    check_interval: int = 10


def starting_bonds(atoms: Atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bonds of a molecule: atom pairs closer than 1.2 times the sum of their covalent radii
    (ASE's natural cutoffs; C-H at 1.09 Å is just above the bare sum, 1.07 Å).

    Returns:
        ``first`` (K,), ``second`` (K,) atom indices with first < second, and lengths (K,) in Å.
    """
    first, second, lengths = neighbor_list("ijd", atoms, natural_cutoffs(atoms, mult=1.2))
    keep = first < second
    return first[keep], second[keep], lengths[keep]


class StabilityMonitor:
    """Checks one run against :class:`StabilityCriteria`; records the shortest distance per
    species pair it saw (the teacher's run provides the reference of the student's).

    Args:
        atoms: the starting structure (bonds of molecules are taken from it).
        target_temperature: K.  timestep_fs: MD time step, fs.
        reference_shortest: shortest distance per species pair (Å) in the teacher's run at this
            temperature; None skips the distance criterion (for the teacher's own run).
        lower_bound: also fail when the temperature falls below the band (thermostatted runs;
            an NVE run started at a potential-energy minimum settles at about half its start).
    """

    def __init__(
        self,
        atoms: Atoms,
        target_temperature: float,
        timestep_fs: float,
        criteria: StabilityCriteria = StabilityCriteria(),
        reference_shortest: dict[tuple[int, int], float] | None = None,
        lower_bound: bool = True,
    ) -> None:
        self.criteria = criteria
        self.target = float(target_temperature)
        self.window = deque(maxlen=max(1, round(criteria.temperature_window_fs / timestep_fs)))
        self.windows_seen = 0
        self.reference_shortest = reference_shortest
        self.lower_bound = lower_bound
        self.shortest_seen: dict[tuple[int, int], float] = shortest_distances(atoms)
        self.bonds = starting_bonds(atoms) if not atoms.pbc.any() else None

    def __call__(self, atoms: Atoms, step: int, temperature: float, energy: float) -> str | None:
        """The reason the run failed at ``step`` (temperature in K, energy in eV), or None."""
        if not (np.isfinite(temperature) and np.isfinite(energy)):
            return f"energy {energy} eV, temperature {temperature} K"
        reason = self._temperature(temperature)
        if reason is None and step % self.criteria.check_interval == 0:
            reason = self._distances(atoms)
        return reason

    def _temperature(self, temperature: float) -> str | None:
        self.window.append(temperature)
        if len(self.window) < self.window.maxlen:
            return None
        self.windows_seen += 1
        mean = float(np.mean(self.window))
        band = self.criteria.temperature_band
        if mean > (1 + band) * self.target:
            return f"temperature ran away: {mean:.0f} K averaged over {self.criteria.temperature_window_fs:g} fs"
        # A structure started near its minimum gives about half its kinetic energy to the potential
        # energy at first; the lower bound applies once a whole window has passed after the first.
        if self.lower_bound and self.windows_seen > self.window.maxlen and mean < (1 - band) * self.target:
            return f"temperature fell to {mean:.0f} K averaged over {self.criteria.temperature_window_fs:g} fs"
        return None

    def _distances(self, atoms: Atoms) -> str | None:
        shortest = shortest_distances(atoms)
        for pair, distance in shortest.items():
            self.shortest_seen[pair] = min(self.shortest_seen[pair], distance)
            if self.reference_shortest is not None:
                limit = self.criteria.min_distance_fraction * self.reference_shortest[pair]
                if distance < limit:
                    return f"{pair_name(pair)} atoms {distance:.2f} Å apart (limit {limit:.2f} Å)"
        if self.bonds is not None:
            first, second, lengths = self.bonds
            stretch = np.linalg.norm(atoms.positions[first] - atoms.positions[second], axis=1) - lengths
            worst = int(np.argmax(stretch))
            if stretch[worst] > self.criteria.max_bond_stretch:
                return (f"bond {first[worst]}-{second[worst]} stretched by {stretch[worst]:.2f} Å "
                        f"(limit {self.criteria.max_bond_stretch:g} Å)")
        return None
