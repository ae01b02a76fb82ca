"""Free atoms in their ground-state spin, for the isolated-atom energies of electronic-structure
teachers (xTB, DFT), whose energy of a lone atom depends on how many electrons are unpaired.

The counts are ASE's :data:`ase.data.ground_state_magnetic_moments` (from WebElements: the
number of unpaired electrons of the free atom's ground configuration by Hund's rules, with the
3d/4d/5d exceptions such as Cr 3d⁵4s¹ with 6, Cu 3d¹⁰4s¹ with 1, Pd 4d¹⁰ with 0, Pt 5d⁹6s¹
with 2). Lanthanides La–Lu are left out: their ground states are strongly mixed 4f/5d
multiplets without one good spin (the table gives Ce one unpaired electron, while its ground
level 4f5d6s² ¹G₄ is nominally a singlet), so an energy for them would depend on a choice we
would be making up.
"""

from __future__ import annotations

from collections.abc import Iterable

from ase import Atoms
from ase.data import chemical_symbols, ground_state_magnetic_moments

from mlip_distill.teachers.base import ISOLATED_ATOM_BOX, Teacher, TeacherError

#: Atomic numbers of La to Lu, whose free-atom spin is not offered (module docstring).
LANTHANIDES = frozenset(range(57, 72))

#: The heaviest element with a tabulated ground-state spin offered here (Rn).
HEAVIEST_ELEMENT = 86


def ground_state_unpaired_electrons(z: int) -> int:
    """Number of unpaired electrons (2S, spin multiplicity minus one) of the free atom of atomic
    number ``z`` in its ground state; raises :class:`TeacherError` for lanthanides and elements
    heavier than Rn."""
    if not 1 <= z <= HEAVIEST_ELEMENT or z in LANTHANIDES:
        symbol = chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"
        raise TeacherError(
            f"no known ground-state spin for a free {symbol} atom (known for H to Rn without "
            "the lanthanides); give isolated-atom energies another way"
        )
    return int(round(ground_state_magnetic_moments[z]))


def free_atom(z: int) -> Atoms:
    """One atom of atomic number ``z`` alone in the middle of an open (non-periodic) cubic box
    of edge :data:`~mlip_distill.teachers.base.ISOLATED_ATOM_BOX` Å, whose initial magnetic
    moment (μB) is its ground-state number of unpaired electrons: the spin that
    electronic-structure teachers read from ``Atoms.get_initial_magnetic_moments``."""
    return Atoms(
        numbers=[z],
        positions=[[ISOLATED_ATOM_BOX / 2] * 3],
        cell=[ISOLATED_ATOM_BOX] * 3,
        pbc=False,
        magmoms=[ground_state_unpaired_electrons(z)],
    )


def free_atom_energies(teacher: Teacher, numbers: Iterable[int]) -> dict[int, float]:
    """Energy in eV of each element's free atom in its ground-state spin (:func:`free_atom`),
    keyed by atomic number; the elements are checked against ``teacher`` before any work."""
    elements = sorted({int(z) for z in numbers})
    teacher.check_elements(elements)
    return {z: float(teacher.label(free_atom(z))["energy"]) for z in elements}
