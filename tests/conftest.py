"""Shared fixtures: small EMT copper data made on the fly (tests never read ../shared/data)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from mlip_distill.data.io import labels_from_atoms


def emt_copper_cells(n: int, repeat=(2, 1, 1), sigma: float = 0.1, max_strain: float = 0.01, seed: int = 0):
    """``n`` rattled, strained fcc copper cells with EMT labels on ``atoms.calc``."""
    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
        strain = rng.uniform(-max_strain, max_strain, (3, 3))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.5 * (strain + strain.T)), scale_atoms=True)
        atoms.positions += rng.normal(0.0, sigma, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        cells.append(atoms)
    return cells


def write_label_file(path, cells, source: str = "teacher"):
    """A label file holding ``cells`` and their calculator's labels as ``source``."""
    from mlip_distill.data.store import LabelStore

    with LabelStore(path, "a") as store:
        indices = store.append(cells)
        store.set_labels(source, indices, [labels_from_atoms(a) for a in cells], provenance={"name": "emt"})
    return path


@pytest.fixture(scope="session")
def copper_label_file(tmp_path_factory):
    """40 EMT-labelled 8-atom copper cells in an HDF5 label file."""
    path = tmp_path_factory.mktemp("copper") / "labels.h5"
    return write_label_file(path, emt_copper_cells(40))
