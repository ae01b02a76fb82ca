"""Seed structures: read from a file, or built from a bulk crystal named on the command line.

Bulk grammar
------------
``bulk:<name>[:<crystal structure>][:a=<Å>][:c=<Å>][:cubic][:<n1>x<n2>x<n3>]``

``name``
    An element or, for two-element crystals, a formula: ``Cu``, ``Si``, ``NaCl``, ``GaAs``.
``crystal structure``
    One of ``sc``, ``fcc``, ``bcc``, ``hcp``, ``diamond``, ``zincblende``, ``rocksalt``,
    ``cesiumchloride``, ``fluorite``, ``wurtzite``; by default the element's reference state.
``a=``, ``c=``
    Lattice constants in Å (``c`` for hcp and wurtzite); by default ASE's reference values,
    which exist only for elements in their reference state.
``cubic``
    The conventional cubic cell (4 atoms for fcc) instead of the primitive one.
``<n1>x<n2>x<n3>``
    Repeat the cell n1, n2, n3 times along its lattice vectors.

Example: ``bulk:Cu:fcc:a=3.61:cubic:2x2x2`` is a 32-atom fcc copper supercell. The parts after
the name may come in any order. Built with :func:`ase.build.bulk`.
"""

from __future__ import annotations

import re
from pathlib import Path

from ase import Atoms
from ase.build import bulk

from mlip_distill.data.io import read_structures
from mlip_distill.sampling.errors import SamplingError

CRYSTAL_STRUCTURES = (
    "sc",
    "fcc",
    "bcc",
    "hcp",
    "diamond",
    "zincblende",
    "rocksalt",
    "cesiumchloride",
    "fluorite",
    "wurtzite",
)
BULK_EXAMPLE = "bulk:Cu:fcc:a=3.61:cubic:2x2x2"
_REPEAT = re.compile(r"(\d+)x(\d+)x(\d+)")
_LATTICE_CONSTANT = re.compile(r"(a|c)=(.+)")


def seed_structures(spec_or_path: str | Path) -> list[Atoms]:
    """The structures named by ``spec_or_path``: a ``bulk:`` spec (grammar in the module
    docstring) or a file ASE reads (all its frames).

    Raises :class:`SamplingError` for a bad spec or a path that does not exist, and
    :class:`~mlip_distill.data.errors.DataError` for a file that cannot be read.
    """
    text = str(spec_or_path)
    if text.startswith("bulk:"):
        return [bulk_crystal(text)]
    if not Path(text).exists():
        raise SamplingError(
            f"seed '{text}' is neither an existing file nor a bulk spec like '{BULK_EXAMPLE}'"
        )
    return read_structures(text)


def parse_supercell(text: str) -> tuple[int, int, int]:
    """``"2x2x3"`` → ``(2, 2, 3)``: repeats along the three lattice vectors, each at least 1."""
    match = _REPEAT.fullmatch(text.strip())
    repeats = tuple(int(n) for n in match.groups()) if match else ()
    if not repeats or min(repeats) < 1:
        raise SamplingError(
            f"supercell (--supercell) '{text}' must be three repeats of 1 or more, e.g. '2x2x2'"
        )
    return repeats


def bulk_crystal(spec: str) -> Atoms:
    """The crystal of a ``bulk:`` spec, e.g. ``bulk:Cu:fcc:a=3.61:cubic:2x2x2``."""
    name, *parts = spec.removeprefix("bulk:").split(":")
    if not name:
        raise SamplingError(f"bad seed spec '{spec}': no element or formula; e.g. '{BULK_EXAMPLE}'")
    crystal_structure = None
    lattice_constants: dict[str, float] = {}
    cubic = False
    repeat = (1, 1, 1)
    for part in parts:
        repeat_match = _REPEAT.fullmatch(part)
        constant_match = _LATTICE_CONSTANT.fullmatch(part)
        if part in CRYSTAL_STRUCTURES and crystal_structure is None:
            crystal_structure = part
        elif part == "cubic":
            cubic = True
        elif repeat_match:
            repeat = tuple(int(n) for n in repeat_match.groups())
        elif constant_match:
            key, value = constant_match.groups()
            try:
                lattice_constants[key] = float(value)
            except ValueError:
                raise SamplingError(
                    f"bad seed spec '{spec}': lattice constant '{part}' is not a number in Å"
                ) from None
        else:
            raise SamplingError(
                f"bad seed spec '{spec}': cannot read '{part}'; expected a crystal structure "
                f"({', '.join(CRYSTAL_STRUCTURES)}), a=<Å>, c=<Å>, cubic or NxNxN, "
                f"e.g. '{BULK_EXAMPLE}'"
            )
    if min(repeat) < 1:
        raise SamplingError(f"bad seed spec '{spec}': repeats must be at least 1")
    try:
        crystal = bulk(name, crystal_structure, cubic=cubic, **lattice_constants)
    except KeyError:
        raise SamplingError(
            f"bad seed spec '{spec}': '{name}' is not an element or a formula ASE can build"
        ) from None
    except (ValueError, RuntimeError) as exc:
        reason = " ".join(str(exc).split()).rstrip(".")
        raise SamplingError(f"bad seed spec '{spec}': {reason}; e.g. '{BULK_EXAMPLE}'") from None
    return crystal.repeat(repeat)
