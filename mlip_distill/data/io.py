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

import copy
import functools
import io
import re
from pathlib import Path
from typing import Mapping, Sequence

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io.extxyz import SPECIAL_3_3_KEYS, UNPROCESSED_KEYS, key_val_str_to_dict

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
# validate_structures finds the closest pair of structures up to this many atoms from all
# pairs, many structures at once, in blocks of at most _PAIRS_PER_BLOCK atom pairs.
_ALL_PAIRS_MAX_ATOMS = 64
_PAIRS_PER_BLOCK = 1 << 18
# Shapes of the per-atom labels after the atom axis.
_PER_ATOM_SHAPES = {"forces": (3,), "atomic_energies": ()}
_INFO_KEYS = {
    "energy": ("energy", "REF_energy"),
    "stress": ("stress", "REF_stress"),
}
_ARRAYS_KEYS = {
    "forces": ("forces", "REF_forces"),
    "atomic_energies": ("energies", "atomic_energies", "REF_energies"),
}
# One key=value pair of an extxyz comment line, and the whitespace after it, in the form that
# ASE's character-by-character parser reads as plain key and value: a value bare, or in double
# quotes without escapes (see _parse_comment_line).
_PLAIN_PAIR = re.compile(
    r"""([^\s='"\\{}\[\]]+)=(?:"([^"\\]+)"|([^\s='"\\{}\[\]]+))(?:\s+|$)"""
)
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBERS = re.compile(rf"\s*{_NUMBER}(?:\s+{_NUMBER})*\s*", re.ASCII)


def read_structures(path: str | Path, index: str = ":") -> list[Atoms]:
    """Every structure (or the ``index`` slice, ASE syntax) of any file ASE reads.

    Raises:
        DataError: the file does not exist, cannot be read, or holds no structure.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    # ASE reads .xyz as extxyz anyway; naming the format skips its sniffing of the content.
    # Its extxyz reader seeks back and forth through the file, which costs little in memory and
    # much in a text file; _parse_comment_line reads the comment lines several times faster.
    extxyz = path.suffix.lower() in (".xyz", ".extxyz")
    try:
        if extxyz:
            structures = ase.io.read(
                io.StringIO(path.read_text()), index=index, format="extxyz",
                properties_parser=_parse_comment_line,
            )
        else:
            structures = ase.io.read(path, index=index)
    except Exception as exc:  # ASE's readers raise anything from KeyError to StopIteration
        raise DataError(f"{path}: cannot read structures ({type(exc).__name__}: {exc})") from exc
    if isinstance(structures, Atoms):
        structures = [structures]
    if not structures:
        raise DataError(f"{path}: holds no structure")
    return list(structures)


def _parse_comment_line(line: str) -> dict:
    """What ASE's ``key_val_str_to_dict`` makes of an extxyz comment line, found faster.

    A line of plain pairs (``_PLAIN_PAIR``) is split with a regular expression; a numeric value
    is converted as ASE converts it (integers, else floats; one value a scalar; the 3x3 keys in
    Fortran order), any other value by ASE, once per distinct (key, value). Any other line goes
    to ASE whole. Tests compare the two parsers.
    """
    line = line.strip()
    pairs, position = [], 0
    while position < len(line) or not pairs:
        match = _PLAIN_PAIR.match(line, position)
        if match is None:
            return key_val_str_to_dict(line)
        key, quoted, bare = match.groups()
        pairs.append((key, bare if quoted is None else quoted))
        position = match.end()
    parsed = {}
    for key, value in pairs:
        if key.lower() in UNPROCESSED_KEYS or not _NUMBERS.fullmatch(value):
            parsed[key] = _text_value(key, value)
            continue
        numbers = value.split()
        try:
            number = np.array(numbers, dtype=int)
        except (ValueError, OverflowError):
            number = np.array(numbers, dtype=float)
        if key in SPECIAL_3_3_KEYS:
            if number.shape != (9,):
                return key_val_str_to_dict(line)  # ASE's error
            number = number.reshape((3, 3), order="F")
        parsed[key] = number[0] if len(number) == 1 else number
    return parsed


def _text_value(key: str, value: str) -> object:
    """ASE's reading of the value of a plain pair that is not a list of numbers (a string,
    booleans, JSON); a fresh copy unless it is a string or a boolean."""
    parsed = _cached_text_value(key, value)
    if isinstance(parsed, (str, bool)):
        return parsed
    if isinstance(parsed, list) and all(isinstance(item, bool) for item in parsed):
        return list(parsed)  # such as pbc, on every line
    return copy.deepcopy(parsed)


@functools.lru_cache(maxsize=1024)
def _cached_text_value(key: str, value: str) -> object:
    return key_val_str_to_dict(f'{key}="{value}"')[key]


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
    results = atoms.calc.results if atoms.calc is not None else {}
    labels = {}
    for key in LABEL_KEYS:
        value = results.get(_CALCULATOR_KEYS[key])
        for where, names in ((atoms.info, _INFO_KEYS), (atoms.arrays, _ARRAYS_KEYS)):
            for name in names.get(key, ()):
                if value is None:
                    value = where.get(name)
        if value is None:
            shape = (len(atoms), *_PER_ATOM_SHAPES[key]) if key in _PER_ATOM_SHAPES else ()
            labels[key] = np.empty(6 if key == "stress" else shape)
            labels[key].fill(np.nan)  # twice as fast as np.full
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


def validate_structures(
    structures: Sequence[Atoms],
    labels: Sequence[Mapping[str, np.ndarray]],
    where: Sequence[str],
    min_distance: float = 0.1,
) -> None:
    """:func:`validate_structure` of every structure, vectorised: the same checks and messages,
    the first invalid structure (in order) raising.

    Whole-input numpy checks clear most structures; only those they cannot clear (a possible
    problem, or a structure outside the vectorised closest-pair search: more than
    ``_ALL_PAIRS_MAX_ATOMS`` atoms, periodic along some directions only, a cell thinner than
    ``2 * min_distance``) go through :func:`validate_structure`, in order.

    Args:
        structures: S structures.  labels: S label dicts, as from :func:`labels_from_atoms`.
        where: S message prefixes, e.g. ``"train.xyz: structure 3"``.
    """
    if not len(structures) == len(labels) == len(where):
        raise ValueError(
            f"{len(structures)} structures, {len(labels)} label sets, {len(where)} names"
        )
    if not structures:
        return
    n_atoms = np.array([len(atoms) for atoms in structures], dtype=np.int64)
    suspects = ~clean_labels(labels, n_atoms) | ~_clear_geometry(structures, n_atoms, min_distance)
    for k in np.flatnonzero(suspects):
        validate_structure(structures[k], labels[k], where[k], min_distance)


def clean_labels(labels: Sequence[Mapping], n_atoms: Sequence[int]) -> np.ndarray:
    """(S,) bool: the label dicts that :func:`check_labels` would pass and leave as they are,
    found with a few numpy calls for all S: only known keys, each a float64 array of its
    canonical shape, finite or entirely NaN. False means "look closer", not "invalid"."""
    n_atoms = np.asarray(n_atoms, dtype=np.int64).tolist()
    known = set(LABEL_KEYS)
    clean = np.array([known.issuperset(label) for label in labels], dtype=bool)
    float64 = np.dtype(np.float64)
    for key in LABEL_KEYS:
        values, owners = [], []
        tail = _PER_ATOM_SHAPES.get(key)
        fixed = (6,) if key == "stress" else ()
        for k, label in enumerate(labels):
            value = label.get(key)
            if value is None:
                continue
            shape = fixed if tail is None else (n_atoms[k], *tail)
            if getattr(value, "dtype", None) != float64 or value.shape != shape:
                clean[k] = False
            elif value.size:
                values.append(value.ravel())
                owners.append(k)
        if not values:
            continue
        sizes = np.array([value.size for value in values])
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        flat = np.concatenate(values)
        n_nan = np.add.reduceat(np.isnan(flat), starts)
        n_inf = np.add.reduceat(np.isinf(flat), starts)
        partly_missing = (n_nan > 0) & (n_nan < sizes)
        clean[np.asarray(owners)[(n_inf > 0) | partly_missing]] = False
    return clean


def _clear_geometry(
    structures: Sequence[Atoms], n_atoms: np.ndarray, min_distance: float
) -> np.ndarray:
    """(S,) bool: structures proven to have atoms, finite positions and cell, a non-degenerate
    periodic cell and no two atoms (periodic images included) closer than ``min_distance``.

    The closest-pair search takes every pair (i, j) of a structure at its nearest periodic
    image, found by wrapping the fractional coordinates of r_j − r_i into [−½, ½]. That is
    exact for the question asked: an image closer than ``min_distance`` has fractional
    coordinates below ``min_distance / width`` < ½ in magnitude when every width of the cell
    (distance between opposite faces) exceeds ``2 * min_distance``, so wrapping finds it; and
    an atom's own images are a whole width away.
    """
    cells = np.stack([atoms.cell.array for atoms in structures])
    pbc = np.stack([atoms.pbc for atoms in structures])
    periodic, open_ = pbc.all(axis=1), ~pbc.any(axis=1)
    clear = (n_atoms > 0) & np.isfinite(cells).all(axis=(1, 2))
    has_atoms = np.flatnonzero(n_atoms > 0)
    if len(has_atoms):
        finite = np.isfinite(np.concatenate([structures[k].positions for k in has_atoms]))
        starts = np.concatenate([[0], np.cumsum(n_atoms[has_atoms])[:-1]])
        clear[has_atoms] &= np.logical_and.reduceat(finite.all(axis=1), starts)
    solid = periodic & clear
    solid[solid] = np.abs(np.linalg.det(cells[solid])) > 1e-9
    inverses, widths = np.zeros_like(cells), np.zeros(len(structures))
    inverses[solid] = np.linalg.inv(cells[solid])
    # The columns of the inverse are the reciprocal vectors b_k; a width is 1 / |b_k|.
    widths[solid] = 1.0 / np.linalg.norm(inverses[solid], axis=1).max(axis=1)
    searchable = clear & (n_atoms <= _ALL_PAIRS_MAX_ATOMS) & (
        open_ | (solid & (widths > 2 * min_distance))
    )
    result = np.zeros(len(structures), dtype=bool)
    for n in np.unique(n_atoms[searchable]):
        for wrap in (True, False):
            group = np.flatnonzero(searchable & (n_atoms == n) & (periodic == wrap))
            n_blocks = -(-len(group) * n * n // _PAIRS_PER_BLOCK)  # ceiling; 0 when empty
            for block in np.array_split(group, n_blocks) if n_blocks else ():
                result[block] = _no_close_pairs(
                    np.stack([structures[k].positions for k in block]),
                    cells[block], inverses[block], wrap, min_distance,
                )
    return result


def _no_close_pairs(
    positions: np.ndarray, cells: np.ndarray, inverses: np.ndarray, wrap: bool, min_distance: float
) -> np.ndarray:
    """(B,) bool: no two atoms closer than ``min_distance``, for B structures of N atoms,
    positions (B, N, 3) Å, cells and their inverses (B, 3, 3); ``wrap``: periodic (see
    :func:`_clear_geometry`), else open."""
    n_structures, n = positions.shape[:2]
    # (B, N * N, 3): matmul with the (B, 3, 3) cells is ~25x faster than the same einsum
    separations = (positions[:, None, :, :] - positions[:, :, None, :]).reshape(n_structures, -1, 3)
    if wrap:
        fractional = separations @ inverses
        separations = (fractional - np.round(fractional)) @ cells
    squared = np.einsum("bpx,bpx->bp", separations, separations).reshape(n_structures, n, n)
    squared[:, np.arange(n), np.arange(n)] = np.inf
    return (squared >= min_distance**2).all(axis=(1, 2))


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
