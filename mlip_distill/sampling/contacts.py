"""Close contacts: structures with two atoms nearer than a set distance, and their rejection.

A rattle of a dense crystal, a vacancy next to a rattled neighbour or a hot MD frame can put two
atoms almost on top of each other. The teacher's labels there are extreme or meaningless, so
every generator checks its structures with a :class:`CloseContactCheck` and reports how many it
rejected.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ase import Atoms
from ase.neighborlist import neighbor_list

from mlip_distill.sampling.errors import SamplingError

logger = logging.getLogger(__name__)

#: A generator that redraws rejected structures gives up when it has drawn this many times the
#: number of structures it was asked for.
MAX_DRAWS_PER_STRUCTURE = 10


def has_close_contact(atoms: Atoms, min_distance: float) -> bool:
    """Whether two atoms (periodic images included) are closer than ``min_distance`` Å."""
    return len(neighbor_list("d", atoms, min_distance)) > 0


@dataclass
class CloseContactCheck:
    """Counts the structures of one generator that have atoms closer than ``min_distance`` Å.

    ``generator`` names the structures in messages, e.g. ``"rattle-strain"``.
    """

    min_distance: float
    generator: str
    n_checked: int = 0
    n_rejected: int = 0

    def __post_init__(self) -> None:
        if not self.min_distance >= 0:
            raise SamplingError(
                f"min_distance (--min-distance) must be 0 Å or more, not {self.min_distance}"
            )

    def accepts(self, atoms: Atoms) -> bool:
        """Whether ``atoms`` has no close contact; counts it either way."""
        self.n_checked += 1
        if has_close_contact(atoms, self.min_distance):
            self.n_rejected += 1
            return False
        return True

    def give_up_after(self, n_wanted: int, advice: str) -> None:
        """Raise :class:`SamplingError` once ``MAX_DRAWS_PER_STRUCTURE × n_wanted`` structures
        have been checked: the settings reject nearly everything. ``advice`` says what to
        change."""
        max_draws = MAX_DRAWS_PER_STRUCTURE * n_wanted
        if self.n_checked >= max_draws:
            raise SamplingError(
                f"{self.n_rejected} of {max_draws} {self.generator} structures had atoms closer "
                f"than {self.min_distance} Å; {advice}"
            )

    def report(self) -> None:
        """Log a warning with the number rejected, if any were."""
        if self.n_rejected:
            logger.warning(
                "rejected %d of %d %s structures with atoms closer than %g Å",
                self.n_rejected,
                self.n_checked,
                self.generator,
                self.min_distance,
            )
