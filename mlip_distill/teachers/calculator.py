"""Any teacher as an ASE calculator, so that ASE's optimisers and thermostats can drive it."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # base.py imports this module
    from mlip_distill.teachers.base import Teacher


class TeacherCalculator(Calculator):
    """Energy (eV), forces (eV/Å) and, where the teacher gives it, stress (eV/Å³, ASE's sign and
    Voigt order) from :meth:`Teacher.label`, for relaxations, MD and timing (what
    :meth:`Teacher.ase_calculator` gives for a teacher without a calculator of its own).

    Works for every teacher (an ASE calculator's, a potential package's, DFT), at the cost of
    the labels the teacher computes besides these two.
    """

    implemented_properties = ["energy", "forces", "stress"]

    def __init__(self, teacher: Teacher) -> None:
        super().__init__()
        self.teacher = teacher

    def calculate(
        self,
        atoms: Atoms | None = None,
        properties: list[str] | None = None,
        system_changes: list[str] = all_changes,
    ) -> None:
        super().calculate(atoms, properties, system_changes)
        labels = self.teacher.label(self.atoms)
        self.results = {"energy": float(labels["energy"]), "forces": labels["forces"]}
        stress = labels.get("stress")
        if stress is not None and np.isfinite(stress).all():
            self.results["stress"] = np.asarray(stress, dtype=float)
