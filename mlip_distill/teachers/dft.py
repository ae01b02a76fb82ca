"""Kohn-Sham DFT of small molecules with Gaussian basis sets, computed by PySCF, as a teacher.

Needs the ``dft`` extra (``pip install mlip-distill[dft]``, which installs ``pyscf``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import numpy as np
import pyscf
from ase import Atoms
from ase.data import chemical_symbols
from ase.units import Bohr, Hartree
from pyscf import dft, gto

from mlip_distill.teachers.base import Teacher, TeacherError
from mlip_distill.teachers.free_atoms import free_atom_energies

#: Elements offered: H to Kr, which Gaussian basis sets treat with all electrons. Heavier ones
#: need effective core potentials (def2 from Rb on), which this teacher does not set up.
HEAVIEST_ELEMENT = 36


class PySCFTeacher(Teacher):
    """Labels non-periodic structures (molecules, clusters) with Kohn-Sham DFT in PySCF.

    =================== =================================================================
    label               source
    =================== =================================================================
    energy              SCF total energy, Hartree → eV
    forces              analytic nuclear gradients with the response of the integration
                        grid, so that they are exactly −dE/dx of the energy on that grid;
                        Hartree/Bohr → eV/Å
    stress              NaN: molecules only, no cell
    atomic_energies     NaN: a DFT total energy has no unique split into atoms
    =================== =================================================================

    Periodic structures are refused with a :class:`TeacherError`, as is an SCF that does not
    converge within ``max_cycle`` iterations (the structure is then recorded as a failure).
    The total charge is the rounded sum of the structure's initial charges and the number of
    unpaired electrons (2S) the rounded sum of its initial magnetic moments (both zero unless
    set); restricted Kohn-Sham (RKS) for 2S = 0, spin-unrestricted (UKS) otherwise.

    Isolated-atom energies: UKS of each free atom with its ground-state number of unpaired
    electrons (:mod:`~mlip_distill.teachers.free_atoms`), RKS for closed-shell atoms.

    Parameters
    ----------
    xc:
        Exchange-correlation functional in PySCF's (libxc) naming, e.g. ``"pbe"``,
        ``"b3lyp"``, ``"wb97x-v"``.
    basis:
        Gaussian basis set by PySCF's name, e.g. ``"def2-svp"``, ``"sto-3g"``, ``"cc-pvdz"``.
        The teacher labels the elements from H to Kr that the basis defines.
    conv_tol:
        SCF convergence threshold on the energy, Hartree.
    max_cycle:
        Most SCF iterations.
    grid_level:
        PySCF's integration-grid level, 0 (coarse) to 9 (fine).
    """

    def __init__(
        self,
        xc: str = "pbe",
        basis: str = "def2-svp",
        conv_tol: float = 1e-10,
        max_cycle: int = 100,
        grid_level: int = 3,
    ) -> None:
        spec = f"pyscf:{xc}/{basis}"
        try:
            dft.libxc.parse_xc(xc)
        except KeyError as exc:
            raise TeacherError(
                f"teacher spec '{spec}': PySCF does not know the functional '{xc}'"
            ) from exc
        self.elements = _elements_of_basis(basis)
        if not self.elements:
            raise TeacherError(
                f"teacher spec '{spec}': PySCF does not know the basis set '{basis}' "
                "for any element from H to Kr"
            )
        self.name = spec
        self.spec = spec
        self.version = f"pyscf {pyscf.__version__}"
        self.settings = {
            "xc": xc,
            "basis": basis,
            "conv_tol": conv_tol,
            "max_cycle": max_cycle,
            "grid_level": grid_level,
            "forces": "analytic, with grid response",
        }

    def label(self, atoms: Atoms) -> dict[str, np.ndarray]:
        """Energy (eV) and forces (N, 3) eV/Å of a non-periodic structure; stress (6,) and
        atomic energies (N,) NaN."""
        self.check_elements(atoms.numbers)
        if atoms.pbc.any():
            raise TeacherError(
                f"teacher '{self.name}' labels molecules only, not a structure periodic along "
                f"{''.join(axis for axis, periodic in zip('xyz', atoms.pbc) if periodic)}; "
                "set pbc=False or use a periodic teacher"
            )
        molecule = gto.M(
            atom=[(int(z), tuple(position)) for z, position in zip(atoms.numbers, atoms.positions)],
            unit="Angstrom",
            basis=self.settings["basis"],
            charge=int(round(atoms.get_initial_charges().sum())),
            spin=int(round(atoms.get_initial_magnetic_moments().sum())),
            verbose=0,
        )
        kohn_sham = dft.RKS(molecule) if molecule.spin == 0 else dft.UKS(molecule)
        kohn_sham.xc = self.settings["xc"]
        kohn_sham.conv_tol = self.settings["conv_tol"]
        kohn_sham.max_cycle = self.settings["max_cycle"]
        kohn_sham.grids.level = self.settings["grid_level"]
        energy = kohn_sham.kernel()
        if not kohn_sham.converged:
            raise TeacherError(
                f"teacher '{self.name}': SCF not converged in {kohn_sham.max_cycle} cycles"
            )
        gradient = kohn_sham.nuc_grad_method()
        gradient.grid_response = True
        n_atoms = len(atoms)
        return {
            "energy": np.asarray(energy * Hartree, dtype=np.float64),
            "forces": -np.asarray(gradient.kernel(), dtype=np.float64) * (Hartree / Bohr),
            "stress": np.full(6, np.nan),
            "atomic_energies": np.full(n_atoms, np.nan),
        }

    def isolated_atom_energies(self, numbers: Iterable[int]) -> dict[int, float]:
        """Energy in eV of each element's free atom in its ground-state spin, keyed by atomic
        number (class docstring)."""
        return free_atom_energies(self, numbers)


def _elements_of_basis(basis: str) -> frozenset[int]:
    """Atomic numbers from H to Kr for which PySCF has the basis set ``basis``."""
    elements = set()
    for z in range(1, HEAVIEST_ELEMENT + 1):
        with warnings.catch_warnings():  # PySCF suggests installing basis-set-exchange
            warnings.simplefilter("ignore")
            try:
                if gto.basis.load(basis, chemical_symbols[z]):
                    elements.add(z)
            except (gto.basis.BasisNotFoundError, KeyError, RuntimeError):
                continue
    return frozenset(elements)
