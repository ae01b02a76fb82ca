"""Neighbour lists of a label file's structures, built once and kept in a file beside it.

Building a structure's neighbour list costs more than reading it (about 0.25 ms against 0.02 ms
for a 32-atom copper cell at 5 Å), and every process and every run would build it again. A
graph cache holds the edges of every structure of one label file at one cutoff, so that a
dataset reads positions and labels from the label file and edges from the cache, one structure
at a time, and nothing of the whole dataset has to be kept in memory.

Layout of ``<label file>.graphs-<cutoff>A.h5`` (S structures, E edges in all; format 1):

============================  =========  ============  ==========================================
path                          shape      dtype         meaning
============================  =========  ============  ==========================================
attribute ``format_version``  scalar     int           1
attribute ``cutoff``          scalar     float         neighbour cutoff, Å
attribute ``n_structures``    scalar     int           S, structures of the label file
attribute ``structures``      scalar     str           SHA-256 of the label file's structure
                                                       offsets, positions, cells and pbc
``offsets``                   (S+1,)     int64         structure s owns edges
                                                       ``offsets[s]:offsets[s+1]``
``edge_index``                (E, 2)     int16/int32   centre i and neighbour j, numbered within
                                                       the structure (int16 when every structure
                                                       has fewer than 32,768 atoms)
``cell_shifts``               (E, 3)     int8/int32    integer image offsets S of j (int8 when
                                                       they all fit)
============================  =========  ============  ==========================================

The edges are those of :func:`~mlip_distill.data.graph.neighbour_list`, in its order, so a graph
from the cache is the graph :func:`~mlip_distill.data.graph.build_graph` makes, edge for edge.

A cache is used only when its format, cutoff and structure checksum match the label file and
every chunk passes its Fletcher-32 checksum; otherwise (absent, stale, truncated or corrupt) it
is rebuilt, with a one-line log message (a warning when the cache was damaged). Building writes
``.<name>.tmp-<pid>`` in the same directory, in blocks of structures, and renames it over the
cache when complete: a killed build leaves no cache that could be trusted (at worst a stale
temporary file). Like the label store, a cache reopens its file on first use in each process,
so it can be handed to DataLoader workers.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np

from mlip_distill.data.errors import DataError
from mlip_distill.data.graph import neighbour_list

FORMAT_VERSION = 1
_CHUNK_EDGES = 8192  # rows per HDF5 chunk: small, as items are read one structure at a time
_BLOCK_ROWS = 1 << 16  # rows read at once to hash or verify a dataset (bounded memory)
_BLOCK_ATOMS = 1 << 14  # atoms given neighbour lists at once (~5 MB of edges at 45 per atom)
_BLOCK_STRUCTURES = 1024

log = logging.getLogger(__name__)


def graph_cache_path(store_path: str | Path, cutoff: float) -> Path:
    """Where the graph cache of ``store_path`` at ``cutoff`` (Å) lives: beside the label file,
    e.g. ``labels.h5.graphs-5A.h5``."""
    store_path = Path(store_path)
    return store_path.with_name(f"{store_path.name}.graphs-{float(cutoff):g}A.h5")


class GraphCache:
    """The edges of every structure of a label file at one cutoff (module docstring).

    ``GraphCache(store_path, cutoff)`` checks the cache file and builds it first when it is
    absent, stale or damaged; :meth:`edges` then reads one structure's edges.
    """

    def __init__(self, store_path: str | Path, cutoff: float, path: str | Path | None = None) -> None:
        """
        Args:
            store_path: the HDF5 label file.
            cutoff: neighbour cutoff, Å.
            path: the cache file (default :func:`graph_cache_path`).
        Raises:
            DataError: the label file cannot be read, or holds a periodic structure with a
                degenerate cell.
            OSError: the cache cannot be written (e.g. a read-only directory).
        """
        self.store_path = Path(store_path)
        self.cutoff = float(cutoff)
        self.path = Path(path) if path is not None else graph_cache_path(store_path, cutoff)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._datasets: tuple[h5py.Dataset, h5py.Dataset] | None = None
        checksum, n_structures = structures_checksum(self.store_path)
        unusable = _why_unusable(self.path, self.cutoff, checksum, n_structures)
        if unusable is not None:
            level, reason = unusable
            start = time.perf_counter()
            build_graph_cache(self.store_path, self.cutoff, self.path, checksum)
            log.log(
                level,
                f"{self.path}: graph cache {reason}; built the neighbour lists of {n_structures} "
                f"structures at {self.cutoff:g} Å in {time.perf_counter() - start:.1f} s",
            )
        with h5py.File(self.path, "r") as cache:
            self._offsets = cache["offsets"][:]

    def _edge_datasets(self) -> tuple[h5py.Dataset, h5py.Dataset]:
        """``edge_index`` and ``cell_shifts`` of the open file; reopened on first use in a new
        process (h5py handles do not survive ``fork``)."""
        if self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
            self._datasets = (self._file["edge_index"], self._file["cell_shifts"])
        return self._datasets

    def __len__(self) -> int:
        """Number of structures."""
        return len(self._offsets) - 1

    def edges(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Structure ``index``'s ``edge_index`` (2, E) int64 (row 0 centres, row 1 neighbours)
        and ``cell_shifts`` (E, 3) int64, as :func:`~mlip_distill.data.graph.neighbour_list`
        gives them."""
        edge_index, cell_shifts = self._edge_datasets()
        start, stop = self._offsets[index], self._offsets[index + 1]
        return edge_index[start:stop].T.astype(np.int64), cell_shifts[start:stop].astype(np.int64)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_pid": None, "_datasets": None}


def structures_checksum(store_path: str | Path) -> tuple[str, int]:
    """SHA-256 of what a label file's neighbour lists depend on (structure offsets, positions,
    cells, pbc), read in blocks; and the number of structures."""
    digest = hashlib.sha256()
    with h5py.File(store_path, "r") as f:
        structures = f["structures"]
        for name in ("offsets", "cell", "pbc", "positions"):
            dataset = structures[name]
            for start in range(0, len(dataset), _BLOCK_ROWS):
                digest.update(np.ascontiguousarray(dataset[start : start + _BLOCK_ROWS]))
        n_structures = len(structures["offsets"]) - 1
    return digest.hexdigest(), n_structures


def build_graph_cache(
    store_path: str | Path, cutoff: float, path: str | Path, checksum: str | None = None
) -> None:
    """Build the graph cache of ``store_path`` at ``cutoff`` (Å) into ``path``, atomically.

    ``checksum``: :func:`structures_checksum` of the label file, when already computed.
    """
    store_path, path = Path(store_path), Path(path)
    if checksum is None:
        checksum, _ = structures_checksum(store_path)
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        for shift_dtype in (np.int8, np.int32):
            try:
                _write(store_path, float(cutoff), temp, checksum, shift_dtype)
                break
            except _ShiftsTooLarge:
                continue
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


class _ShiftsTooLarge(Exception):
    """Some cell shift does not fit the narrow integer type tried first."""


def _write(store_path: Path, cutoff: float, temp: Path, checksum: str, shift_dtype) -> None:
    with h5py.File(store_path, "r") as labels, h5py.File(temp, "w") as cache:
        structures = labels["structures"]
        atom_offsets = structures["offsets"][:]
        n_structures = len(atom_offsets) - 1
        largest = int(np.diff(atom_offsets).max(initial=0))
        index_dtype = np.int16 if largest <= np.iinfo(np.int16).max + 1 else np.int32
        datasets = {
            name: cache.create_dataset(
                name, shape=(0, width), maxshape=(None, width), dtype=dtype,
                chunks=(_CHUNK_EDGES, width), fletcher32=True,
            )
            for name, width, dtype in (("edge_index", 2, index_dtype), ("cell_shifts", 3, shift_dtype))
        }
        edge_offsets = np.zeros(n_structures + 1, dtype=np.int64)
        limit = np.iinfo(shift_dtype).max
        for first, last in _blocks(atom_offsets):
            start = atom_offsets[first]
            positions = structures["positions"][start : atom_offsets[last]]
            cells, pbcs = structures["cell"][first:last], structures["pbc"][first:last]
            pairs, shifts = [], []
            for s in range(first, last):
                local = slice(atom_offsets[s] - start, atom_offsets[s + 1] - start)
                try:
                    i, j, shift = neighbour_list(positions[local], cells[s - first], pbcs[s - first], cutoff)
                except ValueError as exc:
                    raise DataError(f"{store_path}: structure {s}: {exc}") from exc
                if shift.size and np.abs(shift).max() > limit:
                    raise _ShiftsTooLarge
                pairs.append(np.stack([i, j], axis=1).astype(index_dtype))
                shifts.append(shift.astype(shift_dtype))
                edge_offsets[s + 1] = edge_offsets[s] + len(i)
            for name, values in (("edge_index", np.concatenate(pairs)), ("cell_shifts", np.concatenate(shifts))):
                dataset = datasets[name]
                dataset.resize(edge_offsets[last], axis=0)
                dataset[edge_offsets[first] :] = values
        cache.create_dataset("offsets", data=edge_offsets)
        cache.attrs.update(
            format_version=FORMAT_VERSION, cutoff=cutoff, n_structures=n_structures, structures=checksum
        )
    with open(temp, "rb+") as handle:
        os.fsync(handle.fileno())


def _blocks(atom_offsets: np.ndarray):
    """(first, last) structure ranges of at most ``_BLOCK_STRUCTURES`` structures and, unless
    one structure is larger, ``_BLOCK_ATOMS`` atoms."""
    n_structures, first = len(atom_offsets) - 1, 0
    while first < n_structures:
        last = int(np.searchsorted(atom_offsets, atom_offsets[first] + _BLOCK_ATOMS, side="right")) - 1
        last = min(max(last, first + 1), first + _BLOCK_STRUCTURES, n_structures)
        yield first, last
        first = last


def _why_unusable(
    path: Path, cutoff: float, checksum: str, n_structures: int
) -> tuple[int, str] | None:
    """Why the cache at ``path`` cannot be used for this label file and cutoff, with the log
    level that deserves (a warning for a damaged cache); None when it can."""
    if not path.exists():
        return logging.INFO, "absent"
    try:
        with h5py.File(path, "r") as cache:
            attrs = cache.attrs
            if attrs.get("format_version") != FORMAT_VERSION:
                return logging.INFO, f"has format {attrs.get('format_version')}, not {FORMAT_VERSION}"
            if float(attrs["cutoff"]) != cutoff:
                return logging.INFO, f"is for cutoff {float(attrs['cutoff'])} Å, not {cutoff} Å"
            if attrs["n_structures"] != n_structures or attrs["structures"] != checksum:
                return logging.INFO, "is for other structures (the label file changed)"
            offsets = cache["offsets"][:]
            n_edges = offsets[-1] if len(offsets) == n_structures + 1 else -1
            if any(len(cache[name]) != n_edges for name in ("edge_index", "cell_shifts")):
                return logging.WARNING, "is inconsistent (edge counts)"
            for name in ("edge_index", "cell_shifts"):  # reading checks every chunk's checksum
                dataset = cache[name]
                for start in range(0, len(dataset), _BLOCK_ROWS):
                    dataset[start : start + _BLOCK_ROWS]
    except (OSError, KeyError, ValueError, TypeError) as exc:
        return logging.WARNING, f"is unreadable ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
    return None
