"""Atomic graphs: neighbour lists (vesin) and the torch-geometric record every model reads.

A graph of one structure is a :class:`torch_geometric.data.Data` with these fields; a batch of
several is the usual torch-geometric ``Batch`` (``edge_index`` offset per structure, ``batch``
giving each atom's structure).

=================  ==========  =========  ====================================================
field              shape       dtype      meaning
=================  ==========  =========  ====================================================
``pos``            (N, 3)      float      Cartesian positions, Å
``numbers``        (N,)        int64      atomic numbers
``cell``           (1, 3, 3)   float      lattice vectors as rows, Å (zeros without PBC)
``pbc``            (1, 3)      bool       periodic along each lattice vector
``edge_index``     (2, E)      int64      row 0: centre atom i, row 1: neighbour j
``cell_shifts``    (E, 3)      float      integer image offsets S of j, so that the edge vector
                                          is ``pos[j] - pos[i] + S @ cell``
``n_atoms``        (1,)        int64      atoms in the structure
``structure_id``   (1,)        int64      index of the structure in its dataset (for errors;
                                          not named *index, which torch-geometric would offset)
``system_id``      (1,)        int64      structures that are conformers of one system share it
=================  ==========  =========  ====================================================

Optional labels, NaN where missing (never zero): ``energy`` (1,) eV, ``forces`` (N, 3) eV/Å,
``stress`` (1, 6) eV/Å³ Voigt, ``atomic_energies`` (N,) eV. Present only when the labels have them
(see :meth:`mlip_distill.data.store.LabelStore.labels`): ``features_<layer>`` (N, F), a teacher's
node features of that layer, and the Hessian-vector products ``hvp_v`` (N, K, 3), unit probe
vectors, and ``hvp_hv`` (N, K, 3) eV/Å². All of these are per atom, so batching concatenates
them along atoms.

Edge vectors are recomputed inside the model from ``pos``, ``cell`` and ``cell_shifts`` so that
forces (−∂E/∂pos) and stress (strain derivative) come from autograd.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch_geometric.data import Data
from vesin import NeighborList

LABEL_KEYS = ("energy", "forces", "stress", "atomic_energies")
HVP_KEYS = ("hvp_v", "hvp_hv")
FEATURES_PREFIX = "features_"
# torch-geometric offsets a field whose name contains one of these when it batches graphs.
_OFFSET_NAME_PARTS = ("batch", "index", "face")


def neighbour_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Full neighbour list within ``cutoff`` (Å), both directions of every pair.

    Args:
        positions: (N, 3) Å.  cell: (3, 3) Å, rows are lattice vectors.  pbc: (3,) bool.
    Returns:
        ``centres`` (E,), ``neighbours`` (E,) int64 and ``cell_shifts`` (E, 3) int64 with
        ``r_ij = positions[j] - positions[i] + cell_shifts @ cell``.
    """
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    if pbc.any() and abs(np.linalg.det(cell)) < 1e-9:
        raise ValueError("periodic structure with a degenerate (zero-volume) cell")
    box = cell if pbc.any() else np.zeros((3, 3))
    nl = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts = nl.compute(
        points=np.asarray(positions, dtype=np.float64), box=box, periodic=pbc, quantities="ijS"
    )
    return i.astype(np.int64), j.astype(np.int64), shifts.astype(np.int64)


def neighbour_list_on_device(
    positions: torch.Tensor, cell: torch.Tensor, pbc: np.ndarray, cutoff: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`neighbour_list` of tensors, computed where they live (vesin runs on CUDA too).

    Args:
        positions: (N, 3) Å, float64, on the CPU or a CUDA device.  cell: (3, 3) Å, float64, same
            device.  pbc: (3,) bool.  cutoff: Å.
    Returns:
        ``edge_index`` (2, E) int64 (row 0 centres, row 1 neighbours) and ``cell_shifts`` (E, 3)
        int64, on the device of ``positions``.
    """
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if pbc.any() and abs(float(torch.linalg.det(cell))) < 1e-9:
        raise ValueError("periodic structure with a degenerate (zero-volume) cell")
    box = cell if pbc.any() else torch.zeros_like(cell)
    nl = NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, shifts = nl.compute(points=positions, box=box, periodic=pbc.tolist(), quantities="ijS")
    return torch.stack([i.to(torch.int64), j.to(torch.int64)]), shifts.to(torch.int64)


def build_graph(
    numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    cutoff: float,
    labels: Mapping[str, np.ndarray] | None = None,
    structure_id: int = -1,
    system_id: int = -1,
    dtype: torch.dtype | None = None,
    edges: tuple[np.ndarray, np.ndarray] | None = None,
) -> Data:
    """One structure as a graph record (see the module docstring for the fields).

    Args:
        numbers: (N,) atomic numbers.  positions: (N, 3) Å.  cell: (3, 3) Å.  pbc: (3,) bool.
        cutoff: neighbour cutoff, Å.
        labels: any of ``energy`` (scalar, eV), ``forces`` (N, 3) eV/Å, ``stress`` (6,) eV/Å³,
            ``atomic_energies`` (N,) eV; missing entries become NaN. Optionally ``features``
            ``{layer: (N, F)}`` and ``hvp_v``, ``hvp_hv`` (N, K, 3), stored as given.
        edges: the neighbour list within ``cutoff`` when it is known already (a graph cache):
            ``edge_index`` (2, E) and ``cell_shifts`` (E, 3) integers; built here when None.
    Raises:
        ValueError: a feature layer whose name torch-geometric would mistake for an index.
    """
    dtype = dtype or torch.get_default_dtype()
    numbers = np.asarray(numbers, dtype=np.int64)
    n = len(numbers)
    if edges is None:
        i, j, shifts = neighbour_list(positions, cell, pbc, cutoff)
        edges = (np.stack([i, j]), shifts)
    edge_index, shifts = edges
    data = Data(
        pos=torch.as_tensor(np.asarray(positions), dtype=dtype),
        numbers=torch.as_tensor(numbers),
        cell=torch.as_tensor(np.asarray(cell), dtype=dtype).reshape(1, 3, 3),
        pbc=torch.as_tensor(np.asarray(pbc, dtype=bool)).reshape(1, 3),
        edge_index=torch.as_tensor(np.asarray(edge_index), dtype=torch.int64),
        cell_shifts=torch.as_tensor(np.asarray(shifts), dtype=dtype),
        n_atoms=torch.tensor([n]),
        structure_id=torch.tensor([structure_id]),
        system_id=torch.tensor([system_id]),
        num_nodes=n,
    )
    labels = labels or {}
    shapes = {"energy": (1,), "forces": (n, 3), "stress": (1, 6), "atomic_energies": (n,)}
    for key, shape in shapes.items():
        value = labels.get(key)
        if value is None:
            data[key] = torch.full(shape, float("nan"), dtype=dtype)
        else:
            data[key] = torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=dtype).reshape(shape)
    for layer, value in labels.get("features", {}).items():
        if any(part in layer for part in _OFFSET_NAME_PARTS):
            raise ValueError(
                f"feature layer '{layer}': torch-geometric would offset a field whose name "
                f"contains {', '.join(_OFFSET_NAME_PARTS)} when batching; rename the layer"
            )
        features = torch.as_tensor(np.asarray(value), dtype=dtype).reshape(n, -1)
        data[FEATURES_PREFIX + layer] = features
    for key in HVP_KEYS:
        if key in labels:
            data[key] = torch.as_tensor(np.asarray(labels[key]), dtype=dtype).reshape(n, -1, 3)
    return data


def atoms_to_graph(atoms, cutoff: float, dtype: torch.dtype | None = None) -> Data:
    """Graph of an :class:`ase.Atoms` without labels (used by the calculator and in tests)."""
    return build_graph(
        atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, cutoff, dtype=dtype
    )
