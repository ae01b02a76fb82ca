"""Structures and labels in and out of ASE: reading, label extraction, validation, writing.

Labels travel as a dict of float64 arrays, NaN where a value is missing (never zero):

===================  ========  ======  ==================================================
key                  shape     unit    meaning
===================  ========  ======  ==================================================
``energy``           ()        eV      total potential energy
``forces``           (N, 3)    eV/Å    force on each atom
``stress``           (6,)      eV/Å³   Voigt xx, yy, zz, yz, xz, xy; ASE sign (tensile +)
``atomic_energies``  (N,)      eV      per-atom energies that sum to the energy
===================  ========  ======  ==================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from mlip_distill.data.errors import DataError
from mlip_distill.data.graph import LABEL_KEYS, neighbour_list

# Where each label is looked for: the key in ``atoms.calc.results`` (ASE >= 3.23 puts extxyz
# labels there), then keys in ``atoms.info`` (per structure) or ``atoms.arrays`` (per atom).
_CALCULATOR_KEYS = {
    "energy": "energy",
    "forces": "forces",
    "stress": "stress",
    "atomic_energies": "energies",
}
# The neighbour search radius, Å, of validate_structure's closest-pair check.
_SEARCH_CUTOFF = 1.5
_INFO_KEYS = {
    "energy": ("energy", "REF_energy"),
    "stress": ("stress", "REF_stress"),
}
_ARRAYS_KEYS = {
    "forces": ("forces", "REF_forces"),
    "atomic_energies": ("energies", "atomic_energies", "REF_energies"),
}


def read_structures(path: str | Path, index: str = ":") -> list[Atoms]:
    """Every structure (or the ``index`` slice, ASE syntax) of any file ASE reads.

    Raises:
        DataError: the file does not exist, cannot be read, or holds no structure.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    try:
        structures = ase.io.read(path, index=index)
    except Exception as exc:  # ASE's readers raise anything from KeyError to StopIteration
        raise DataError(f"{path}: cannot read structures ({type(exc).__name__}: {exc})") from exc
    if isinstance(structures, Atoms):
        structures = [structures]
    if not structures:
        raise DataError(f"{path}: holds no structure")
    return list(structures)


def as_voigt(stress: np.ndarray) -> np.ndarray:
    """A (3, 3) or 9-value stress as Voigt (6,) xx, yy, zz, yz, xz, xy; other shapes unchanged."""
    stress = np.asarray(stress, dtype=np.float64)
    if stress.size != 9:
        return stress.reshape(6) if stress.size == 6 else stress
    s = stress.reshape(3, 3)
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]])


def labels_from_atoms(atoms: Atoms) -> dict[str, np.ndarray]:
    """The labels an :class:`ase.Atoms` carries, NaN-filled where missing (table above).

    Reads ``atoms.calc.results`` (never calls ``get_*``, which could start a calculation), then
    ``atoms.info`` / ``atoms.arrays`` keys such as ``energy``, ``REF_energy``, ``REF_forces``.
    Present values keep their shape (a stress given as 3x3 becomes Voigt), so that
    :func:`check_labels` can report a mismatch.
    """
    n = len(atoms)
    results = atoms.calc.results if atoms.calc is not None else {}
    missing = {
        "energy": np.array(np.nan),
        "forces": np.full((n, 3), np.nan),
        "stress": np.full(6, np.nan),
        "atomic_energies": np.full(n, np.nan),
    }
    labels = {}
    for key in LABEL_KEYS:
        candidates = [results.get(_CALCULATOR_KEYS[key])]
        candidates += [atoms.info.get(k) for k in _INFO_KEYS.get(key, ())]
        candidates += [atoms.arrays.get(k) for k in _ARRAYS_KEYS.get(key, ())]
        value = next((v for v in candidates if v is not None), None)
        if value is None:
            labels[key] = missing[key]
        else:
            value = np.array(value, dtype=np.float64)
            labels[key] = as_voigt(value) if key == "stress" else value
    return labels


def check_labels(
    labels: Mapping[str, np.ndarray], n_atoms: int, where: str
) -> dict[str, np.ndarray]:
    """Labels checked and brought to their canonical shapes (module table); any subset of keys.

    A label that is entirely NaN is missing, which is allowed. ``where`` starts every message,
    e.g. ``"labels.h5: structure 12"``.

    Raises:
        DataError: an unknown key, a wrong shape, or a value that is infinite or partly NaN.
    """
    shapes = {"energy": (), "forces": (n_atoms, 3), "stress": (6,), "atomic_energies": (n_atoms,)}
    checked = {}
    for key, value in labels.items():
        if key not in shapes:
            raise DataError(f"{where}: unknown label '{key}' (known: {', '.join(LABEL_KEYS)})")
        value = np.asarray(value, dtype=np.float64)
        if key == "stress":
            value = as_voigt(value)
        elif key == "energy" and value.size == 1:
            value = value.reshape(())
        if value.shape != shapes[key]:
            if key in ("forces", "atomic_energies"):
                raise DataError(
                    f"{where}: {key} have shape {value.shape} but the structure has "
                    f"{n_atoms} atoms"
                )
            raise DataError(f"{where}: {key} has shape {value.shape}, expected {shapes[key]}")
        if np.isinf(value).any():
            raise DataError(f"{where}: infinite value in {key}")
        n_nan = int(np.isnan(value).sum())
        if 0 < n_nan < value.size:
            raise DataError(f"{where}: {key} partly NaN ({n_nan} of {value.size} values)")
        checked[key] = value
    return checked


def validate_structure(
    atoms: Atoms, labels: Mapping[str, np.ndarray], where: str, min_distance: float = 0.1
) -> None:
    """Check one structure and its labels before they enter a label store.

    Args:
        atoms: the structure.  labels: as from :func:`labels_from_atoms`.
        where: start of every message, e.g. ``"train.xyz: structure 3"``.
        min_distance: two atoms closer than this (Å, periodic images included) are an error.
    Raises:
        DataError: no atoms, non-finite positions or cell, a degenerate periodic cell, atoms
            closer than ``min_distance``, or bad labels (see :func:`check_labels`).
    """
    if len(atoms) == 0:
        raise DataError(f"{where}: the structure has no atoms")
    if not np.isfinite(atoms.positions).all():
        raise DataError(f"{where}: positions are not all finite")
    if not np.isfinite(atoms.cell.array).all():
        raise DataError(f"{where}: the cell is not finite")
    check_labels(labels, len(atoms), where)
    try:
        # vesin's cells are as wide as the cutoff: a cutoff of 0.1 Å would make millions of
        # them (20 ms for 8 atoms), so search wider and keep the pairs closer than min_distance.
        centres, neighbours, shifts = neighbour_list(
            atoms.positions, atoms.cell.array, atoms.pbc, max(min_distance, _SEARCH_CUTOFF)
        )
    except ValueError as exc:
        raise DataError(f"{where}: {exc}") from exc
    distances = np.linalg.norm(
        atoms.positions[neighbours] - atoms.positions[centres] + shifts @ atoms.cell.array, axis=1
    )
    too_close = np.flatnonzero(distances < min_distance)
    if len(too_close):
        i, j = centres[too_close[0]], neighbours[too_close[0]]
        distance = distances[too_close[0]]
        raise DataError(
            f"{where}: atoms {min(i, j)} and {max(i, j)} are {distance:.3g} Å apart "
            f"(closer than {min_distance} Å)"
        )


def write_structures(
    path: str | Path, atoms_list: Sequence[Atoms], labels_list: Sequence[Mapping[str, np.ndarray]]
) -> None:
    """Write structures with their labels to extended XYZ.

    Each structure is written with a :class:`SinglePointCalculator` holding its present (not
    NaN) labels, so that ASE reads them back through ``atoms.calc``; ``atoms.info`` is kept.
    """
    if len(atoms_list) != len(labels_list):
        raise ValueError(f"{len(atoms_list)} structures but {len(labels_list)} label sets")
    frames = []
    for atoms, labels in zip(atoms_list, labels_list):
        frame = atoms.copy()
        results = {
            _CALCULATOR_KEYS[key]: value
            for key, value in labels.items()
            if not np.isnan(value).all()
        }
        if "energy" in results:
            results["energy"] = float(results["energy"])
        frame.calc = SinglePointCalculator(frame, **results)
        frames.append(frame)
    ase.io.write(Path(path), frames, format="extxyz")
