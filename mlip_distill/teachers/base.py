"""The contract every teacher meets: an ASE calculator, a foundation model, DFT, or a student.

A teacher turns one structure into labels. :meth:`Teacher.label` returns a dict with these keys;
a teacher may add more (per-atom features, Hessian-vector products) under their own names.

===================  =========  ==============================================================
key                  shape      meaning
===================  =========  ==============================================================
``energy``           ()         total potential energy, eV
``forces``           (N, 3)     −∂E/∂positions, eV/Å
``stress``           (6,)       Voigt xx, yy, zz, yz, xz, xy, eV/Å³, ASE sign (tensile
                                positive); NaN unless the cell is periodic in all directions
``atomic_energies``  (N,)       per-atom energies summing to ``energy``, eV; NaN when the
                                teacher has no such decomposition
===================  =========  ==============================================================

All arrays are float64. A missing value is NaN, never zero.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import chemical_symbols

#: Edge of the cubic box that holds an isolated atom, Å. No periodic images are used; the box
#: only matters to teachers (plane-wave DFT, graph models) that insist on a cell.
ISOLATED_ATOM_BOX = 20.0


class TeacherError(ValueError):
    """A teacher cannot be built from its spec or cannot label the structures given to it.

    The message is one line (whitespace, newlines included, is collapsed), for the command
    line to print without a traceback.
    """

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


def element_list(numbers: Iterable[int]) -> str:
    """``[14, 1]`` → ``'H, Si'``: symbols in order of atomic number, for error messages."""
    return ", ".join(chemical_symbols[z] for z in sorted({int(z) for z in numbers}))


class Teacher(abc.ABC):
    """A source of labels for structures.

    Attributes
    ----------
    name:
        Short name used in messages and provenance, e.g. ``"emt"``.
    spec:
        The string that rebuilds this teacher with :func:`mlip_distill.teachers.load_teacher`.
    elements:
        Atomic numbers the teacher can label, or ``None`` when any element is accepted.
    version:
        Name and version of the package that computes the labels, e.g. ``"ase 3.29.0"``.
    settings:
        The teacher's parameters (functional, cutoffs, model variant...), JSON-serialisable.
    weights_sha256:
        SHA-256 of the weights file for teachers that have one, else ``None``.
    """

    name: str
    spec: str
    elements: frozenset[int] | None
    version: str
    settings: dict[str, Any]
    weights_sha256: str | None = None

    @abc.abstractmethod
    def label(self, atoms: Atoms) -> dict[str, np.ndarray]:
        """Labels of one structure: the keys, shapes and units in the module docstring."""

    def check_elements(self, numbers: Iterable[int]) -> None:
        """Raise :class:`TeacherError` naming every element in ``numbers`` the teacher lacks."""
        if self.elements is None:
            return
        unsupported = {int(z) for z in numbers} - self.elements
        if unsupported:
            raise TeacherError(
                f"teacher '{self.name}' cannot label {element_list(unsupported)}; "
                f"it supports {element_list(self.elements)}"
            )

    def isolated_atom_energies(self, numbers: Iterable[int]) -> dict[int, float]:
        """Energy in eV of one atom of each element alone, keyed by atomic number.

        These are the default reference energies (E0) that a student subtracts before it
        learns the rest. The atom sits in the middle of an open (non-periodic) box.
        """
        energies = {}
        for z in sorted({int(z) for z in numbers}):
            atom = Atoms(
                numbers=[z],
                positions=[[ISOLATED_ATOM_BOX / 2] * 3],
                cell=[ISOLATED_ATOM_BOX] * 3,
                pbc=False,
            )
            energies[z] = float(self.label(atom)["energy"])
        return energies

    def provenance(self) -> dict[str, Any]:
        """What the label file records about the teacher, so that labels can be reproduced."""
        record = {
            "name": self.name,
            "spec": self.spec,
            "version": self.version,
            "settings": self.settings,
        }
        if self.weights_sha256 is not None:
            record["weights_sha256"] = self.weights_sha256
        return record
