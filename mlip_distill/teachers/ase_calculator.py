"""A teacher that wraps any ASE calculator: EMT, Lennard-Jones, or a foundation model's."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import BaseCalculator, PropertyNotImplementedError

from mlip_distill.teachers.base import Teacher


def _json_safe(settings: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``settings`` that ``json.dumps`` accepts: arrays become lists, odd objects
    their ``repr``, so that provenance always fits into the label file."""

    def fallback(value: Any) -> Any:
        return value.tolist() if hasattr(value, "tolist") else repr(value)

    return json.loads(json.dumps(dict(settings), default=fallback))


class ASECalculatorTeacher(Teacher):
    """Labels structures with one ASE calculator, created once and reused for every structure
    (foundation-model calculators load their weights only once).

    Parameters
    ----------
    calculator:
        Any ASE calculator. Stress is requested only for cells periodic in all three directions,
        per-atom energies only when the calculator implements ``"energies"``.
    name, spec, version:
        See :class:`~mlip_distill.teachers.base.Teacher`. ``spec`` defaults to
        ``"module:Class"`` of the calculator, ``version`` to ``"unknown"``.
    elements:
        Atomic numbers the calculator supports, or ``None`` for any.
    settings:
        Defaults to the calculator's ``parameters``.
    hvp_step:
        Displacement in Å along a unit probe for Hessian-vector products, which come from
        central finite differences of the calculator's forces (it has no node features).
    """

    def __init__(
        self,
        calculator: BaseCalculator,
        *,
        name: str,
        spec: str | None = None,
        elements: Iterable[int] | None = None,
        version: str = "unknown",
        settings: Mapping[str, Any] | None = None,
        hvp_step: float = 1e-3,
    ) -> None:
        self.calculator = calculator
        self.name = name
        calculator_class = type(calculator)
        self.spec = spec or f"{calculator_class.__module__}:{calculator_class.__qualname__}"
        self.elements = None if elements is None else frozenset(int(z) for z in elements)
        self.version = version
        if settings is None:
            settings = getattr(calculator, "parameters", {}) or {}
        self.settings = _json_safe(settings)
        if not hvp_step > 0:
            raise ValueError(f"hvp_step must be a positive displacement in Å, not {hvp_step}")
        self.hvp_step = float(hvp_step)

    def ase_calculator(self) -> BaseCalculator:
        """The wrapped calculator itself: MD and relaxations run at its own speed."""
        return self.calculator

    def label(self, atoms: Atoms) -> dict[str, np.ndarray]:
        """Energy (eV), forces (N, 3) eV/Å, stress (6,) eV/Å³ and atomic energies (N,) eV."""
        self.check_elements(atoms.numbers)
        atoms = atoms.copy()
        atoms.calc = self.calculator
        n_atoms = len(atoms)
        energy = np.asarray(atoms.get_potential_energy(), dtype=np.float64)
        forces = np.asarray(atoms.get_forces(), dtype=np.float64).reshape(n_atoms, 3)
        stress = np.full(6, np.nan)
        if atoms.pbc.all() and "stress" in self.calculator.implemented_properties:
            stress = np.asarray(atoms.get_stress(voigt=True), dtype=np.float64)
        atomic_energies = np.full(n_atoms, np.nan)
        if "energies" in self.calculator.implemented_properties:
            # Advertised, yet some calculators lack it for some settings: then it stays NaN.
            with contextlib.suppress(PropertyNotImplementedError):
                atomic_energies = np.asarray(atoms.get_potential_energies(), dtype=np.float64)
        return {
            "energy": energy,
            "forces": forces,
            "stress": stress,
            "atomic_energies": atomic_energies,
        }
