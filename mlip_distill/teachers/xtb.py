"""GFN1-xTB and GFN2-xTB, the semi-empirical tight-binding methods of Grimme and co-workers, as
a teacher, computed by ``tblite`` through its own ASE calculator.

Needs the ``xtb`` extra (``pip install mlip-distill[xtb]``, which installs ``tblite``).
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Iterable

import numpy as np
from ase import Atoms
from tblite.ase import TBLite

from mlip_distill.teachers.ase_calculator import ASECalculatorTeacher
from mlip_distill.teachers.base import TeacherError
from mlip_distill.teachers.free_atoms import free_atom_energies

#: Method names of the spec ``xtb:METHOD`` -> tblite's names.
METHODS = {"GFN1": "GFN1-xTB", "GFN2": "GFN2-xTB"}

#: GFN1-xTB and GFN2-xTB are parametrised for H to Rn.
XTB_ELEMENTS = frozenset(range(1, 87))


class XTBTeacher(ASECalculatorTeacher):
    """Labels structures with GFN1-xTB or GFN2-xTB (tblite's defaults: accuracy 1, electronic
    temperature 300 K, at most 250 SCF iterations; all recorded in ``settings``).

    =================== =================================================================
    label               source
    =================== =================================================================
    energy, forces      tblite, eV and eV/Å
    stress              tblite's analytic virial, eV/Å³, only for cells periodic in all
                        three directions (Γ point only: tblite samples no other k-points,
                        so a periodic cell must be large); NaN otherwise
    atomic_energies     tblite's own atom-resolved partition of the energy, eV, which
                        sums to the total energy; one partition among many possible, not
                        an observable
    =================== =================================================================

    The total charge is the sum of the structure's initial charges and the number of unpaired
    electrons the rounded sum of its initial magnetic moments, as tblite reads them (both zero
    unless set). Every structure starts its SCF from tblite's superposition-of-atomic-densities
    guess, never from the previous structure's solution, so that its labels do not depend on
    what was labelled before it (they would differ by about 4e-5 eV/Å at tblite's default
    accuracy). An SCF that does not converge raises
    :class:`~ase.calculators.calculator.CalculationFailed`, so the structure is recorded as a
    failure.

    Isolated-atom energies: each free atom with its ground-state number of unpaired electrons
    (:mod:`~mlip_distill.teachers.free_atoms`), set as its initial magnetic moment, which tblite
    turns into its ``uhf`` (unpaired electrons) option. GFN1/GFN2 are not spin-polarised
    methods, so this fixes only how many α and β electrons fill the orbitals (e.g. a triplet O
    atom), not a spin-dependent Hamiltonian. Lanthanides have no isolated-atom energy here.

    Parameters
    ----------
    method:
        ``"GFN1"`` or ``"GFN2"``.
    """

    def __init__(self, method: str = "GFN2") -> None:
        spec = f"xtb:{method}"
        if method not in METHODS:
            raise TeacherError(
                f"teacher spec '{spec}': unknown xTB method '{method}'; "
                f"expected {' or '.join(f'xtb:{name}' for name in METHODS)}"
            )
        super().__init__(
            TBLite(method=METHODS[method], verbosity=0, cache_api=False),
            name=spec,
            spec=spec,
            elements=XTB_ELEMENTS,
            version=f"tblite {importlib.metadata.version('tblite')}",
        )

    def label(self, atoms: Atoms) -> dict[str, np.ndarray]:
        """Energy (eV), forces (N, 3) eV/Å, stress (6,) eV/Å³ (NaN unless periodic in all three
        directions) and atomic energies (N,) eV of ``atoms``, from a fresh SCF."""
        self.calculator.reset()  # with cache_api=False this also drops the last wavefunction
        return super().label(atoms)

    def isolated_atom_energies(self, numbers: Iterable[int]) -> dict[int, float]:
        """Energy in eV of each element's free atom in its ground-state spin, keyed by atomic
        number (class docstring)."""
        return free_atom_energies(self, numbers)
