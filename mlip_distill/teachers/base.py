"""The contract every teacher meets: an ASE calculator, a foundation model, DFT, or a student.

A teacher turns one structure into labels. :meth:`Teacher.label` returns a dict with these keys:

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

Two more kinds of label are asked for separately, since they cost more:

* :meth:`Teacher.node_features`: ``{layer: (N, F)}``, the teacher's hidden per-atom features of
  named layers, whose e3nn irreps :meth:`Teacher.feature_irreps` gives. Only teachers that are
  networks have them (none by default).
* :meth:`Teacher.hessian_vector_products`: (N, K, 3) eV/Å², H·v for K probe vectors v (N, K, 3),
  with H = ∂²E/∂x∂x the Hessian of the energy with respect to the positions, so that
  H·v = −∂(F·v)/∂x. By default central finite differences of the forces; teachers with second
  derivatives give them exactly. :func:`probe_vectors` draws the probes.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.data import chemical_symbols

from mlip_distill.teachers.calculator import TeacherCalculator

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


def probe_vectors(n_atoms: int, n_probes: int, seed: int, structure_index: int) -> np.ndarray:
    """Random directions along which to take Hessian-vector products of one structure.

    Each probe is a Gaussian random vector over the structure's 3N coordinates scaled to unit
    norm (dimensionless), drawn from a generator seeded with ``(seed, structure_index)``, so that
    the same seed and index give the same probes.

    Returns:
        (n_atoms, n_probes, 3) float64.
    """
    rng = np.random.default_rng([seed, structure_index])
    probes = rng.standard_normal((n_atoms, n_probes, 3))
    return probes / np.linalg.norm(probes, axis=(0, 2), keepdims=True)


def structure_key(atoms: Atoms) -> bytes:
    """Bytes that are equal exactly when two structures have the same numbers, positions, cell
    and pbc: for a teacher that reuses its last evaluation."""
    return b"".join(
        np.ascontiguousarray(array).tobytes() for array in (atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    )


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
    hvp_step:
        Displacement in Å along a unit probe of the finite-difference Hessian-vector products
        (unused by teachers that compute them exactly).
    """

    name: str
    spec: str
    elements: frozenset[int] | None
    version: str
    settings: dict[str, Any]
    weights_sha256: str | None = None
    hvp_step: float = 1e-3

    @abc.abstractmethod
    def label(self, atoms: Atoms) -> dict[str, np.ndarray]:
        """Labels of one structure: the keys, shapes and units in the module docstring."""

    def feature_irreps(self) -> dict[str, str]:
        """Layers whose node features the teacher gives, layer -> e3nn irreps (``{}``: none)."""
        return {}

    def check_features(self, layers: Iterable[str]) -> None:
        """Raise :class:`TeacherError` naming every layer in ``layers`` the teacher lacks."""
        available = self.feature_irreps()
        unknown = [layer for layer in layers if layer not in available]
        if unknown:
            raise TeacherError(
                f"teacher '{self.name}' has no node features of layer {', '.join(unknown)}; "
                f"it has {', '.join(available) or 'none'}"
            )

    def node_features(self, atoms: Atoms, layers: Sequence[str]) -> dict[str, np.ndarray]:
        """Node features of one structure, ``{layer: (N, F)}`` float64, F the dimension of the
        layer's irreps (:meth:`feature_irreps`). A teacher without features refuses any layer."""
        self.check_features(layers)
        return {}

    def hessian_vector_products(self, atoms: Atoms, vectors: np.ndarray) -> np.ndarray:
        """H·v for each probe v of ``vectors`` (N, K, 3), as (N, K, 3) eV/Å².

        Central finite differences of the forces, ``H·v ≈ −(F(x + hv) − F(x − hv)) / 2h`` with
        ``h = hvp_step / |v|``: 2K force evaluations, error of order ``hvp_step²``.
        """
        self.check_elements(atoms.numbers)
        vectors = np.asarray(vectors, dtype=np.float64)
        products = np.empty_like(vectors)
        for k in range(vectors.shape[1]):
            step = self.hvp_step / np.linalg.norm(vectors[:, k])
            forces = []
            for sign in (1.0, -1.0):
                displaced = atoms.copy()
                displaced.positions = atoms.positions + sign * step * vectors[:, k]
                forces.append(self.label(displaced)["forces"])
            products[:, k] = -(forces[0] - forces[1]) / (2.0 * step)
        return products

    def hvp_method(self) -> str:
        """How :meth:`hessian_vector_products` computes them, for provenance."""
        return (
            f"central finite differences of the forces, step {self.hvp_step} Å along a unit probe"
        )

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

    def ase_calculator(self) -> Calculator:
        """An ASE calculator of this teacher's energy (eV) and forces (eV/Å), to run MD or
        relaxations with it."""
        return TeacherCalculator(self)

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
