"""The HDF5 label file: structures and any number of label sources, appended to and read lazily.

Layout, schema_version 1 (S structures, A atoms in all, Z elements with an isolated-atom energy,
F node features of a layer, K Hessian-vector probes per structure):

=========================================  =========  =======  ==================================
path                                       shape      dtype    meaning
=========================================  =========  =======  ==================================
attribute ``schema_version``               scalar     int      1
attribute ``units``                        scalar     str      JSON: the unit of every quantity
attribute ``created_by``                   scalar     str      ``mlip-distill <version>``
attribute ``shard``                        scalar     str      JSON, only in a shard: which part
                                                               of which input (:class:`Shard`)
attribute ``labelling_run``                scalar     str      id of the last labelling run
                                                               committed into the file; optional
``structures/n_atoms``                     (S,)       int64    atoms in each structure
``structures/offsets``                     (S+1,)     int64    structure s owns atoms
                                                               ``offsets[s]:offsets[s+1]``
``structures/numbers``                     (A,)       int64    atomic numbers
``structures/positions``                   (A, 3)     float64  Å
``structures/cell``                        (S, 3, 3)  float64  lattice vectors as rows, Å
``structures/pbc``                         (S, 3)     bool     periodic along each lattice vector
``structures/system_id``                   (S,)       int64    conformers of one system share it
``structures/config_type``                 (S,)       utf-8    free text, e.g. ``rattle``
``structures/source_index``                (S,)       int64    frame in the file it came from,
                                                               or -1
``labels/<source>/energy``                 (S,)       float64  eV
``labels/<source>/forces``                 (A, 3)     float64  eV/Å
``labels/<source>/stress``                 (S, 6)     float64  eV/Å³, Voigt (xx yy zz yz xz xy)
``labels/<source>/atomic_energies``        (A,)       float64  eV
``labels/<source>/features/<layer>``       (A, F)     float64  node features of a teacher layer;
                                                               attribute ``irreps``: their e3nn
                                                               irreps (dimension F); optional
``labels/<source>/hvp_v``                  (A, K, 3)  float64  probe vectors v, dimensionless,
                                                               unit norm over each structure's
                                                               3N coordinates; optional
``labels/<source>/hvp_hv``                 (A, K, 3)  float64  Hessian-vector products H·v, eV/Å²,
                                                               H = ∂²E/∂x∂x (so H·v =
                                                               −∂(F·v)/∂x); optional, with hvp_v
``isolated_atoms/<source>/numbers``        (Z,)       int64    elements
``isolated_atoms/<source>/energy``         (Z,)       float64  isolated-atom energy, eV
                                                               (default E0)
=========================================  =========  =======  ==================================

A missing label is NaN, never zero. Every label dataset carries an attribute ``per`` (``structure``
or ``atom``) that says which axis it grows along, so that appending structures NaN-fills every
label source, including the optional datasets: a source gets ``features/<layer>`` and
``hvp_v``/``hvp_hv`` when they are first stored, NaN for the structures labelled before; K and
each layer's irreps are then fixed for that source. The ``labels/<source>`` group's attribute
``provenance`` is a JSON dict (teacher name, spec, package version, settings, weights checksum);
its scalar entries are also stored as attributes of their own for ``h5dump``. All datasets are
chunked (at most about 1 MiB a chunk) and resizable (``maxshape`` None).

Writing is atomic. Mode ``"a"`` works on a copy, ``.<name>.tmp-<pid>`` in the same directory (of
the file itself, or of another label file given as ``start_from``), which ``close()`` (or leaving
a ``with`` block normally) moves over the original with ``os.replace``; an exception inside the
``with`` block deletes the copy and leaves the original as it was. A killed process leaves the
original intact (and a stale temporary file). Opening in mode ``"a"`` copies the whole file, and
two writers at once lose one's changes: write from one process.

Shards: ``mlip-distill label --shard i/n`` writes a label file of one part of its input, which
records the part as a :class:`Shard`, and :func:`mlip_distill.data.shards.merge_shards` joins
the n parts into the file one run would have written.

Reading is lazy: mode ``"r"`` keeps only the offsets in memory and reads one structure's slice at a
time. h5py handles do not survive ``fork``: a store opened in ``"r"`` reopens the file on first
use in each process, so that it can be handed to DataLoader workers (and pickled for ``spawn``).
"""

from __future__ import annotations

import json
import operator
from dataclasses import asdict, dataclass
import os
import shutil
from pathlib import Path
from typing import Mapping, Sequence

import h5py
import numpy as np
from ase import Atoms
from e3nn.o3 import Irreps

from mlip_distill import __version__
from mlip_distill.data.errors import DataError
from mlip_distill.data.graph import HVP_KEYS, LABEL_KEYS
from mlip_distill.data.io import (
    check_labels,
    clean_labels,
    labels_from_atoms,
    read_structures,
    validate_structure,
    write_structures,
)

SCHEMA_VERSION = 1
UNITS = {
    "positions": "Å",
    "cell": "Å",
    "energy": "eV",
    "forces": "eV/Å",
    "stress": "eV/Å³, Voigt xx yy zz yz xz xy, tensile positive",
    "atomic_energies": "eV",
    "features": "those of the teacher's layer",
    "hvp_v": "dimensionless, unit norm per structure and probe",
    "hvp_hv": "eV/Å²",
    "isolated_atoms": "eV",
}
ISOLATED_ATOM = "IsolatedAtom"  # config_type that marks an isolated-atom frame (MACE convention)

_CHUNK_ROWS = 4096
_CHUNK_BYTES = 1 << 20  # h5py's default chunk cache; a bigger chunk is re-read for every slice
_STRUCTURE_DATASETS = {  # name: (shape after the first axis, dtype, grows per)
    "n_atoms": ((), np.int64, "structure"),
    "numbers": ((), np.int64, "atom"),
    "positions": ((3,), np.float64, "atom"),
    "cell": ((3, 3), np.float64, "structure"),
    "pbc": ((3,), np.bool_, "structure"),
    "system_id": ((), np.int64, "structure"),
    "config_type": ((), h5py.string_dtype("utf-8"), "structure"),
    "source_index": ((), np.int64, "structure"),
}
_LABEL_DATASETS = {
    "energy": ((), "structure"),
    "forces": ((3,), "atom"),
    "stress": ((6,), "structure"),
    "atomic_energies": ((), "atom"),
}


@dataclass(frozen=True)
class Shard:
    """Part ``index`` of ``count`` of the ``n_structures`` structures an input file holds: the
    structures at positions ``k`` with ``k % count == index`` (round robin, so that every shard
    gets a like share of large and small structures wherever they sit in the file).

    ``input_sha256`` is the SHA-256 of the input file, so that shards of different inputs are
    not merged; ``n_structures`` is 0 until the input has been read.
    """

    index: int
    count: int
    n_structures: int = 0
    input_sha256: str = ""

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise DataError(
                f"shard {self.index}/{self.count}: expected i/n with 0 <= i < n, e.g. 0/4 to 3/4"
            )

    @classmethod
    def parse(cls, text: str) -> Shard:
        """``"1/4"`` -> part 1 of 4; one-line :class:`DataError` for anything else."""
        index, _, count = text.partition("/")
        try:
            numbers = int(index), int(count)
        except ValueError:
            raise DataError(
                f"shard '{text}': expected i/n with 0 <= i < n, e.g. 0/4 to 3/4"
            ) from None
        return cls(*numbers)

    def positions(self) -> range:
        """Positions, counted among all ``n_structures``, of this shard's structures."""
        return range(self.index, self.n_structures, self.count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


class LabelStore:
    """An HDF5 label file (module docstring), opened ``"r"`` (read only) or ``"a"`` (append).

    Use it as a context manager; in mode ``"a"`` the changes reach ``path`` only on ``close()``.
    """

    def __init__(
        self,
        path: str | Path,
        mode: str = "r",
        compression: str | None = None,
        start_from: str | Path | None = None,
    ) -> None:
        """
        Args:
            path: the label file; mode ``"a"`` creates it when absent.
            mode: ``"r"`` or ``"a"``.
            compression: h5py compression (e.g. ``"gzip"``) of datasets this store creates.
            start_from: mode ``"a"`` only: another label file whose copy ``path`` becomes on
                ``close()`` with the changes made (``path`` itself is not read).
        """
        if mode not in ("r", "a"):
            raise ValueError(f"mode must be 'r' or 'a', not {mode!r}")
        self.path = Path(path)
        self.mode = mode
        self.compression = compression
        self._name = str(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        self._temp: Path | None = None
        self._datasets: dict[str, h5py.Dataset] = {}
        if mode == "r":
            if not self.path.exists():
                raise DataError(f"{self._name}: no such file")
        else:
            self._open_for_writing(None if start_from is None else Path(start_from))
        self._offsets = self._h5["structures/offsets"][:]

    # -- opening and closing -------------------------------------------------------------------

    def _open_for_writing(self, start_from: Path | None) -> None:
        if not self.path.parent.is_dir():
            raise DataError(f"{self._name}: directory {self.path.parent} does not exist")
        self._temp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        original, name = (self.path, self._name)
        if start_from is not None:
            original, name = start_from, str(start_from)
        try:
            if original.exists():
                shutil.copy2(original, self._temp)
                self._file = _open_checked(self._temp, name, "r+")
            else:
                self._file = h5py.File(self._temp, "w")
                _create_layout(self._file, self.compression)
        except BaseException:
            self._discard()
            raise
        self._pid = os.getpid()

    @property
    def _h5(self) -> h5py.File:
        """The open file; reopened (read only) on first use in a new process."""
        if self._pid != os.getpid():
            if self.mode != "r":
                raise RuntimeError(f"{self._name}: a store open for writing serves one process")
            self._file = _open_checked(self.path, self._name, "r")
            self._pid = os.getpid()
            self._datasets = {}
        if self._file is None:
            raise DataError(f"{self._name}: the label store is closed")
        return self._file

    def _dataset(self, path: str) -> h5py.Dataset:
        """The dataset at ``path``, looked up once per process (an h5py lookup costs ~50 µs,
        as much as reading a structure)."""
        h5 = self._h5
        if path not in self._datasets:
            if path.startswith("labels/"):
                self._source(path.split("/")[1])
            self._datasets[path] = h5[path]
        return self._datasets[path]

    def close(self) -> None:
        """Close; in mode ``"a"`` make the changes permanent (atomic replace of the file)."""
        if self._file is None:
            return
        self._datasets = {}
        self._file.close()
        self._file = None
        if self._temp is not None:
            with open(self._temp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(self._temp, self.path)
            self._temp = None

    def _discard(self) -> None:
        """Close without writing: the original file stays as it was."""
        self._datasets = {}
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._temp is not None:
            self._temp.unlink(missing_ok=True)
            self._temp = None

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.close()
        else:
            self._discard()

    def __getstate__(self) -> dict:
        if self.mode != "r":
            raise TypeError(f"{self._name}: a store open for writing cannot be pickled")
        return {**self.__dict__, "_file": None, "_pid": None, "_datasets": {}}

    # -- reading -------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of structures."""
        return len(self._offsets) - 1

    def _index(self, index: int) -> int:
        index = operator.index(index)
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"{self._name}: structure {index} out of range ({n} structures)")
        return index % n

    def arrays(self, index: int) -> dict:
        """One structure as plain arrays, without building an :class:`ase.Atoms`.

        Returns:
            ``numbers`` (N,) int64, ``positions`` (N, 3) Å, ``cell`` (3, 3) Å, ``pbc`` (3,) bool,
            ``system_id`` int, ``config_type`` str.
        """
        index = self._index(index)
        start, stop = self._offsets[index], self._offsets[index + 1]
        return {
            "numbers": self._dataset("structures/numbers")[start:stop],
            "positions": self._dataset("structures/positions")[start:stop],
            "cell": self._dataset("structures/cell")[index],
            "pbc": self._dataset("structures/pbc")[index],
            "system_id": int(self._dataset("structures/system_id")[index]),
            "config_type": self._dataset("structures/config_type")[index].decode(),
        }

    def structure(self, index: int) -> Atoms:
        """One structure as :class:`ase.Atoms` (no labels); ``info`` has system_id, config_type."""
        arrays = self.arrays(index)
        atoms = Atoms(
            numbers=arrays["numbers"], positions=arrays["positions"], cell=arrays["cell"],
            pbc=arrays["pbc"],
        )
        atoms.info["system_id"] = arrays["system_id"]
        if arrays["config_type"]:
            atoms.info["config_type"] = arrays["config_type"]
        return atoms

    def source_index(self, index: int) -> int:
        """The frame index, in the file it came from, of structure ``index``; -1 if unknown."""
        return int(self._dataset("structures/source_index")[self._index(index)])

    def sources(self) -> list[str]:
        """Names of the label sources, sorted."""
        return sorted(self._h5["labels"])

    def isolated_atom_sources(self) -> list[str]:
        """Names of the sources that hold isolated-atom energies, sorted."""
        return sorted(self._h5["isolated_atoms"])

    def _source(self, source: str) -> h5py.Group:
        if source not in self._h5["labels"]:
            known = ", ".join(self.sources()) or "none"
            raise DataError(f"{self._name}: no labels from source '{source}' (sources: {known})")
        return self._h5["labels"][source]

    def labels(
        self,
        source: str,
        index: int,
        *,
        features: Sequence[str] | None = None,
        hessian: bool = True,
    ) -> dict:
        """Labels of one structure from ``source``, NaN where missing.

        Args:
            features: feature layers to read; None: every layer the source has, ``()``: none.
            hessian: read the Hessian-vector products, when the source has them.
        Returns:
            ``energy`` () eV, ``forces`` (N, 3) eV/Å, ``stress`` (6,) eV/Å³, ``atomic_energies``
            (N,) eV; ``features`` ``{layer: (N, F)}`` when layers are read; ``hvp_v`` (N, K, 3)
            (unit probe vectors) and ``hvp_hv`` (N, K, 3) eV/Å² when the source has them and
            ``hessian`` is true.
        Raises:
            DataError: a requested feature layer the source lacks (naming the ones it has).
        """
        index = self._index(index)
        start, stop = self._offsets[index], self._offsets[index + 1]
        group = f"labels/{source}"
        labels: dict = {
            "energy": np.asarray(self._dataset(f"{group}/energy")[index]),
            "forces": self._dataset(f"{group}/forces")[start:stop],
            "stress": self._dataset(f"{group}/stress")[index],
            "atomic_energies": self._dataset(f"{group}/atomic_energies")[start:stop],
        }
        layers = self.feature_layers(source) if features is None else features
        if layers:
            labels["features"] = {
                layer: self._feature_dataset(source, layer)[start:stop] for layer in layers
            }
        if hessian and self.hvp_probes(source):
            for key in HVP_KEYS:
                labels[key] = self._dataset(f"{group}/{key}")[start:stop]
        return labels

    def feature_layers(self, source: str) -> dict[str, str]:
        """Layers whose node features ``source`` holds, layer -> e3nn irreps; ``{}`` when none."""
        group = self._source(source)
        if "features" not in group:
            return {}
        return {layer: str(dataset.attrs["irreps"]) for layer, dataset in group["features"].items()}

    def hvp_probes(self, source: str) -> int:
        """K, the Hessian-vector probes per structure that ``source`` holds; 0 when none."""
        group = self._source(source)
        return int(group["hvp_v"].shape[1]) if "hvp_v" in group else 0

    def _feature_dataset(self, source: str, layer: str) -> h5py.Dataset:
        path = f"labels/{source}/features/{layer}"
        if path not in self._datasets and layer not in self.feature_layers(source):
            known = ", ".join(self.feature_layers(source)) or "none"
            raise DataError(
                f"{self._name}: source '{source}' has no node features of layer '{layer}' "
                f"(layers: {known})"
            )
        return self._dataset(path)

    def has_label(self, source: str, key: str) -> np.ndarray:
        """(S,) bool: the structure has a finite value of ``key`` (all atoms, for per-atom keys).

        ``key`` is one of ``energy``, ``forces``, ``stress``, ``atomic_energies``, ``hvp_v``,
        ``hvp_hv`` or ``features/<layer>``; a source without the optional ones has them nowhere.
        """
        known = (*LABEL_KEYS, *HVP_KEYS)
        if key not in known and not key.startswith("features/"):
            raise ValueError(f"unknown label '{key}' (known: {', '.join(known)}, features/<layer>)")
        if key not in LABEL_KEYS and key not in self._source(source):
            return np.zeros(len(self), dtype=bool)
        dataset = self._dataset(f"labels/{source}/{key}")
        finite = np.isfinite(dataset[:]).reshape(len(dataset), -1).all(axis=1)
        if dataset.attrs["per"] == "structure" or len(self) == 0:
            return finite
        return np.logical_and.reduceat(finite, self._offsets[:-1])

    def provenance(self, source: str) -> dict:
        """The provenance dict stored with ``source`` (``{}`` when none was given)."""
        return json.loads(self._source(source).attrs["provenance"])

    def isolated_atoms(self, source: str) -> dict[int, float]:
        """Isolated-atom energies of ``source``, atomic number -> eV; ``{}`` when none."""
        if source not in self._h5["isolated_atoms"]:
            return {}
        group = self._h5["isolated_atoms"][source]
        return {int(z): float(e) for z, e in zip(group["numbers"][:], group["energy"][:])}

    @property
    def shard(self) -> Shard | None:
        """Which part of which input this file holds; None unless labelled with ``--shard``."""
        text = self._h5.attrs.get("shard")
        return None if text is None else Shard(**json.loads(text))

    @property
    def labelling_run(self) -> str | None:
        """The id of the last labelling run committed into the file, if any."""
        run = self._h5.attrs.get("labelling_run")
        return None if run is None else str(run)

    def next_system_id(self) -> int:
        """The smallest system id above every one in the store (0 for an empty store)."""
        existing = self._h5["structures/system_id"][:]
        return int(existing.max()) + 1 if len(existing) else 0

    # -- writing -------------------------------------------------------------------------------

    def _writable(self) -> h5py.File:
        if self.mode != "a":
            raise DataError(f"{self._name}: opened read-only; open with mode 'a' to write")
        return self._h5

    def append(
        self,
        atoms_list: Sequence[Atoms],
        system_id: Sequence[int] | None = None,
        config_type: Sequence[str] | None = None,
        source_index: Sequence[int] | None = None,
    ) -> np.ndarray:
        """Add structures (no labels; every label source gets NaN rows for them).

        Args:
            atoms_list: the structures.
            system_id: stored as given. Default: new ids, unused in the store; structures whose
                ``atoms.info["system_id"]`` agree share one, the others get one each.
            config_type: default ``atoms.info["config_type"]`` or ``""``.
            source_index: frame index in the file the structures came from; default -1.
        Returns:
            (len(atoms_list),) int64 store indices of the new structures.
        """
        f = self._writable()
        n_new = len(atoms_list)
        for name, values in (
            ("system_id", system_id), ("config_type", config_type), ("source_index", source_index)
        ):
            if values is not None and len(values) != n_new:
                raise ValueError(f"{n_new} structures but {len(values)} values of {name}")
        first = len(self)
        if n_new == 0:
            return np.arange(first, first, dtype=np.int64)
        for k, atoms in enumerate(atoms_list):
            if len(atoms) == 0:
                raise DataError(f"{self._name}: appended structure {k} has no atoms")
        if system_id is None:
            system_id = new_system_ids(atoms_list, self.next_system_id())
        if config_type is None:
            config_type = [str(atoms.info.get("config_type", "")) for atoms in atoms_list]
        if source_index is None:
            source_index = [-1] * n_new
        n_atoms = np.array([len(atoms) for atoms in atoms_list], dtype=np.int64)
        new_offsets = self._offsets[-1] + np.cumsum(n_atoms)
        columns = {
            "n_atoms": n_atoms,
            "numbers": np.concatenate([atoms.numbers for atoms in atoms_list]),
            "positions": np.concatenate([atoms.positions for atoms in atoms_list]),
            "cell": np.stack([atoms.cell.array for atoms in atoms_list]),
            "pbc": np.stack([atoms.pbc for atoms in atoms_list]),
            "system_id": np.asarray(system_id, dtype=np.int64),
            "config_type": np.asarray(config_type, dtype=object),
            "source_index": np.asarray(source_index, dtype=np.int64),
        }
        structures = f["structures"]
        for name, values in columns.items():
            _extend(structures[name], values)
        _extend(structures["offsets"], new_offsets)
        self._offsets = np.concatenate([self._offsets, new_offsets])
        _grow_labels(f["labels"], {"structure": len(self), "atom": int(self._offsets[-1])})
        return np.arange(first, len(self), dtype=np.int64)

    def set_shard(self, shard: Shard) -> None:
        """Mark the file as holding ``shard`` of its input (see :func:`merge_shards`)."""
        self._writable().attrs["shard"] = json.dumps(asdict(shard), sort_keys=True)

    def set_labelling_run(self, run: str) -> None:
        """Record ``run`` as the last labelling run committed into the file."""
        self._writable().attrs["labelling_run"] = run

    def set_labels(
        self,
        source: str,
        indices: Sequence[int],
        labels: Sequence[Mapping],
        provenance: Mapping | None = None,
        feature_irreps: Mapping[str, str] | None = None,
        replace: bool = False,
    ) -> None:
        """Store labels of ``source`` for the structures ``indices``.

        Creates ``labels/<source>`` (NaN for every structure) when absent. Each label dict may
        hold any of the keys of :meth:`labels`: ``energy`` () eV, ``forces`` (N, 3) eV/Å,
        ``stress`` (6,) eV/Å³, ``atomic_energies`` (N,) eV, ``features`` ``{layer: (N, F)}``,
        and ``hvp_v`` (N, K, 3) with ``hvp_hv`` (N, K, 3) eV/Å², always together.

        Args:
            provenance: when given, replaces the stored one.
            feature_irreps: e3nn irreps of feature layers, layer -> irreps; needed for a layer
                the source does not hold yet, checked against the stored ones otherwise.
            replace: labels a dict lacks become NaN (the source forgets what it held for these
                structures); by default they keep their stored values.
        Raises:
            DataError: a label with the wrong shape or non-finite values, features whose width
                is not the dimension of their irreps, or a K other than the source's (naming
                the structure).
        """
        f = self._writable()
        if not source or "/" in source:
            raise ValueError(f"a label source is a non-empty name without '/', not {source!r}")
        if len(indices) != len(labels):
            raise ValueError(f"{len(indices)} indices but {len(labels)} label sets")
        indices = np.array([self._index(i) for i in indices], dtype=np.int64)
        if len(np.unique(indices)) != len(indices):
            raise ValueError("set_labels: an index appears twice")
        # Python ints, one per label dict: indexing numpy arrays one value at a time costs more
        index_list = indices.tolist()
        n_atoms = (self._offsets[indices + 1] - self._offsets[indices]).tolist()
        required = [{key: value for key, value in label.items() if key in LABEL_KEYS}
                    for label in labels]
        # check_labels (one structure at a time) only where the vectorised check is not enough
        clean = clean_labels(required, n_atoms).tolist()
        checked, looked_at = [], []
        for k, (i, label, basic) in enumerate(zip(index_list, labels, required)):
            if clean[k] and len(basic) == len(label):
                checked.append(basic)
                continue
            where = f"{self._name}: structure {i}"
            extras = {key: value for key, value in label.items() if key not in LABEL_KEYS}
            checked.append(
                {
                    **(basic if clean[k] else check_labels(basic, n_atoms[k], where)),
                    **_check_optional_labels(extras, n_atoms[k], where),
                }
            )
            looked_at.append(k)
        group = f["labels"][source] if source in f["labels"] else self._create_source(source)
        for k in looked_at:
            self._prepare_optional_datasets(
                group, checked[k], feature_irreps or {}, f"{self._name}: structure {index_list[k]}"
            )
        order = np.argsort(indices).tolist()
        for key, dataset in _label_datasets(group):
            if replace:
                rows = [
                    (
                        index_list[k],
                        checked[k][key] if key in checked[k]
                        else _missing(dataset, n_atoms[k]),
                    )
                    for k in order
                ]
            else:
                rows = [(index_list[k], checked[k][key]) for k in order if key in checked[k]]
            if rows:
                _write_rows(dataset, rows, self._offsets)
        if provenance is not None:
            group.attrs.clear()
            group.attrs["provenance"] = json.dumps(dict(provenance), sort_keys=True, default=str)
            for name, value in provenance.items():
                if isinstance(value, (str, int, float, bool)) and name != "provenance":
                    group.attrs[name] = value

    def _prepare_optional_datasets(
        self,
        group: h5py.Group,
        label: Mapping[str, np.ndarray],
        feature_irreps: Mapping[str, str],
        where: str,
    ) -> None:
        """Check one structure's features and Hessian-vector products against the source's
        datasets, creating those the source lacks (NaN for every structure)."""
        sizes = {"structure": len(self), "atom": int(self._offsets[-1])}
        for key, value in label.items():
            if key.startswith("features/"):
                layer = key.removeprefix("features/")
                irreps = feature_irreps.get(layer)
                if key in group:
                    stored = str(group[key].attrs["irreps"])
                    if irreps is not None and irreps != stored:
                        raise DataError(
                            f"{where}: features of layer '{layer}' have irreps {irreps}, but the "
                            f"source stores {stored}"
                        )
                    irreps = stored
                elif irreps is None:
                    raise DataError(f"{where}: no irreps given for the new feature layer '{layer}'")
                width = _irreps_dimension(irreps, where)
                if value.shape[1] != width:
                    raise DataError(
                        f"{where}: features of layer '{layer}' have {value.shape[1]} columns, "
                        f"but their irreps {irreps} have dimension {width}"
                    )
                if key not in group:
                    dataset = _create_dataset(
                        group, key, (sizes["atom"], width), np.float64, "atom",
                        self.compression, np.nan,
                    )
                    dataset.attrs["irreps"] = irreps
            elif key == "hvp_v":
                n_probes = value.shape[1]
                if "hvp_v" not in group:
                    for name in HVP_KEYS:
                        _create_dataset(
                            group, name, (sizes["atom"], n_probes, 3), np.float64, "atom",
                            self.compression, np.nan,
                        )
                elif group["hvp_v"].shape[1] != n_probes:
                    raise DataError(
                        f"{where}: {n_probes} Hessian-vector probes, but the source stores "
                        f"{group['hvp_v'].shape[1]} per structure"
                    )

    def _create_source(self, source: str) -> h5py.Group:
        group = self._h5["labels"].create_group(source)
        group.attrs["provenance"] = "{}"
        sizes = {"structure": len(self), "atom": int(self._offsets[-1])}
        for key, (shape, per) in _LABEL_DATASETS.items():
            _create_dataset(
                group, key, (sizes[per], *shape), np.float64, per, self.compression, np.nan
            )
        return group

    def set_isolated_atoms(self, source: str, energies: Mapping[int, float]) -> None:
        """Store isolated-atom energies (atomic number -> eV) of ``source``, merged into any
        stored before (a given element replaces its old value)."""
        f = self._writable()
        merged = {**self.isolated_atoms(source), **{int(z): float(e) for z, e in energies.items()}}
        for z, energy in merged.items():
            if not np.isfinite(energy):
                raise DataError(f"{self._name}: isolated-atom energy of Z={z} is {energy}")
        if source in f["isolated_atoms"]:
            del f["isolated_atoms"][source]
        group = f["isolated_atoms"].create_group(source)
        elements = sorted(merged)
        for name, values, dtype in (
            ("numbers", elements, np.int64),
            ("energy", [merged[z] for z in elements], np.float64),
        ):
            dataset = _create_dataset(
                group, name, (len(values),), dtype, "element", self.compression
            )
            dataset[:] = values


def new_system_ids(atoms_list: Sequence[Atoms], first_id: int) -> np.ndarray:
    """System ids from ``first_id`` on: structures whose ``atoms.info["system_id"]`` agree share
    one, the others get one each, numbered in order of first appearance. (S,) int64."""
    keys = [
        ("info", atoms.info["system_id"]) if "system_id" in atoms.info else ("frame", k)
        for k, atoms in enumerate(atoms_list)
    ]
    new_ids: dict = {}
    return np.array(
        [new_ids.setdefault(key, first_id + len(new_ids)) for key in keys], dtype=np.int64
    )


def _open_checked(path: Path, name: str, mode: str) -> h5py.File:
    """Open a label file and check it is one, of the schema version this package reads."""
    unreadable = DataError(f"{name}: not a readable label file (corrupted or truncated?)")
    try:
        f = h5py.File(path, mode)
    except OSError as exc:
        raise unreadable from exc
    try:
        version = f.attrs.get("schema_version")
        if version is None:
            raise DataError(f"{name}: not a label file (no schema_version attribute)")
        if int(version) != SCHEMA_VERSION:
            raise DataError(
                f"{name}: label file has schema_version {version}; this version of mlip-distill "
                f"reads schema_version {SCHEMA_VERSION}"
            )
        structures = f["structures"]
        n_structures = len(structures["offsets"]) - 1
        if structures["offsets"][-1] != len(structures["numbers"]) or any(
            len(structures[name]) != n_structures for name in ("n_atoms", "cell", "config_type")
        ):
            raise unreadable
    except DataError:
        f.close()
        raise
    except (OSError, KeyError, RuntimeError, ValueError) as exc:
        f.close()
        raise unreadable from exc
    return f


def _create_dataset(
    group: h5py.Group,
    name: str,
    shape: tuple[int, ...],
    dtype,
    per: str,
    compression: str | None,
    fillvalue: float | None = None,
) -> h5py.Dataset:
    row_bytes = np.dtype(dtype).itemsize * int(np.prod(shape[1:]))
    chunk_rows = max(1, min(_CHUNK_ROWS, _CHUNK_BYTES // row_bytes))
    dataset = group.create_dataset(
        name, shape=shape, maxshape=(None, *shape[1:]), chunks=(chunk_rows, *shape[1:]),
        dtype=dtype, compression=compression, fillvalue=fillvalue,
    )
    dataset.attrs["per"] = per
    return dataset


def _create_layout(f: h5py.File, compression: str | None) -> None:
    f.attrs["schema_version"] = SCHEMA_VERSION
    f.attrs["units"] = json.dumps(UNITS, ensure_ascii=False)
    f.attrs["created_by"] = f"mlip-distill {__version__}"
    structures = f.create_group("structures")
    for name, (shape, dtype, per) in _STRUCTURE_DATASETS.items():
        _create_dataset(structures, name, (0, *shape), dtype, per, compression)
    offsets = _create_dataset(structures, "offsets", (1,), np.int64, "structure", compression)
    offsets[0] = 0
    f.create_group("labels")
    f.create_group("isolated_atoms")


def _extend(dataset: h5py.Dataset, values: np.ndarray) -> None:
    start = len(dataset)
    dataset.resize(start + len(values), axis=0)
    dataset[start:] = values


def _grow_labels(group: h5py.Group, sizes: Mapping[str, int]) -> None:
    """Resize every label dataset under ``group`` to ``sizes[dataset.attrs["per"]]`` rows; the
    new rows read as the fill value, NaN."""
    for item in group.values():
        if isinstance(item, h5py.Group):
            _grow_labels(item, sizes)
        else:
            item.resize(sizes[item.attrs["per"]], axis=0)


def _label_datasets(group: h5py.Group) -> list[tuple[str, h5py.Dataset]]:
    """Every label dataset of a source with its path in the group (``features/<layer>``)."""
    datasets: list[tuple[str, h5py.Dataset]] = []
    group.visititems(
        lambda name, item: datasets.append((name, item)) if isinstance(item, h5py.Dataset) else None
    )
    return datasets


def _missing(dataset: h5py.Dataset, n_atoms: int) -> np.ndarray:
    """NaN for one structure's rows of a label dataset."""
    rows = () if dataset.attrs["per"] == "structure" else (n_atoms,)
    return np.full((*rows, *dataset.shape[1:]), np.nan)


def _irreps_dimension(irreps: str, where: str) -> int:
    """The dimension of an e3nn irreps string such as ``"8x0e+8x1o"``."""
    try:
        return Irreps(irreps).dim
    except (ValueError, AssertionError) as exc:
        raise DataError(f"{where}: '{irreps}' is not an e3nn irreps string ({exc})") from exc


def _check_optional_labels(
    labels: Mapping, n_atoms: int, where: str
) -> dict[str, np.ndarray]:
    """Features and Hessian-vector products of one structure checked, as float64 arrays keyed by
    their dataset path (``features/<layer>``, ``hvp_v``, ``hvp_hv``). Entirely NaN is missing.

    Raises:
        DataError: an unknown key, a wrong shape, a bad layer name, one of ``hvp_v`` and
            ``hvp_hv`` without the other, or values that are infinite or partly NaN.
    """
    unknown = set(labels) - {"features", *HVP_KEYS}
    if unknown:
        known = ", ".join((*LABEL_KEYS, "features", *HVP_KEYS))
        raise DataError(f"{where}: unknown label '{sorted(unknown)[0]}' (known: {known})")
    checked = {}
    for layer, value in labels.get("features", {}).items():
        if not layer or "/" in layer:
            raise DataError(
                f"{where}: a feature layer is a non-empty name without '/', not {layer!r}"
            )
        value = np.asarray(value, dtype=np.float64)
        if value.ndim != 2 or len(value) != n_atoms:
            raise DataError(
                f"{where}: features of layer '{layer}' have shape {value.shape}, "
                f"expected ({n_atoms}, F)"
            )
        name = f"features of layer '{layer}'"
        checked[f"features/{layer}"] = _finite_or_missing(value, name, where)
    present = [key for key in HVP_KEYS if key in labels]
    if len(present) == 1:
        raise DataError(
            f"{where}: {present[0]} without its partner; give hvp_v and hvp_hv together"
        )
    for key in present:
        value = np.asarray(labels[key], dtype=np.float64)
        if value.ndim != 3 or value.shape[::2] != (n_atoms, 3) or not value.shape[1]:
            raise DataError(f"{where}: {key} has shape {value.shape}, expected ({n_atoms}, K, 3)")
        checked[key] = _finite_or_missing(value, key, where)
    if present and checked["hvp_v"].shape != checked["hvp_hv"].shape:
        raise DataError(
            f"{where}: hvp_v has shape {checked['hvp_v'].shape} but hvp_hv "
            f"{checked['hvp_hv'].shape}"
        )
    return checked


def _finite_or_missing(value: np.ndarray, name: str, where: str) -> np.ndarray:
    """``value`` if it is finite or entirely NaN (missing); DataError otherwise."""
    if np.isinf(value).any():
        raise DataError(f"{where}: infinite value in {name}")
    n_nan = int(np.isnan(value).sum())
    if 0 < n_nan < value.size:
        raise DataError(f"{where}: {name} partly NaN ({n_nan} of {value.size} values)")
    return value


def _write_rows(
    dataset: h5py.Dataset, rows: list[tuple[int, np.ndarray]], offsets: np.ndarray
) -> None:
    """Write per-structure values ``rows`` (sorted by index), one h5py write per contiguous run."""
    indices = np.array([index for index, _ in rows])
    values = [value for _, value in rows]
    runs = np.split(np.arange(len(rows)), np.flatnonzero(np.diff(indices) != 1) + 1)
    for run in runs:
        first, last = indices[run[0]], indices[run[-1]]
        if dataset.attrs["per"] == "structure":
            dataset[first : last + 1] = np.stack([values[k] for k in run])
        else:
            dataset[offsets[first] : offsets[last + 1]] = np.concatenate([values[k] for k in run])


def is_isolated_atom(atoms: Atoms, where: str) -> bool:
    """An isolated-atom frame: config_type ``IsolatedAtom``, or a lone atom without PBC."""
    if atoms.info.get("config_type") == ISOLATED_ATOM:
        if len(atoms) != 1:
            raise DataError(f"{where}: config_type {ISOLATED_ATOM} but {len(atoms)} atoms")
        return True
    return len(atoms) == 1 and not atoms.pbc.any()


def import_structures(
    input_path: str | Path, store_path: str | Path, source: str = "reference", validate: bool = True
) -> int:
    """Append the structures of any ASE-readable file to a label store (created when absent).

    Labels the frames carry (energy, forces, stress, per-atom energies) are stored as ``source``;
    isolated-atom frames (see :func:`is_isolated_atom`) become that source's isolated-atom
    energies instead of structures. Nothing is written unless every frame passes.

    Returns:
        the number of structures appended (isolated atoms not counted).
    Raises:
        DataError: naming the file and frame index (see :func:`validate_structure`).
    """
    frames = read_structures(input_path)
    kept: list[Atoms] = []
    kept_labels: list[dict[str, np.ndarray]] = []
    frame_indices: list[int] = []
    isolated: dict[int, float] = {}
    for k, atoms in enumerate(frames):
        where = f"{input_path}: structure {k}"
        labels = labels_from_atoms(atoms)
        if is_isolated_atom(atoms, where):
            if not np.isfinite(labels["energy"]):
                raise DataError(f"{where}: isolated atom without a finite energy")
            isolated[int(atoms.numbers[0])] = float(labels["energy"])
            continue
        if validate:
            validate_structure(atoms, labels, where)
        kept.append(atoms)
        kept_labels.append(labels)
        frame_indices.append(k)
    has_labels = any(
        not np.isnan(value).all() for labels in kept_labels for value in labels.values()
    )
    with LabelStore(store_path, "a") as store:
        indices = store.append(kept, source_index=frame_indices)
        if has_labels:
            provenance = store.provenance(source) if source in store.sources() else {}
            provenance["imported_from"] = [*provenance.get("imported_from", []), str(input_path)]
            store.set_labels(source, indices, kept_labels, provenance)
        if isolated:
            store.set_isolated_atoms(source, isolated)
    return len(kept)


def export_structures(store_path: str | Path, source: str | None, out_path: str | Path) -> int:
    """Write every structure of a label store, with the labels of ``source`` (None: no labels),
    to extended XYZ; isolated-atom energies come first as ``IsolatedAtom`` frames.

    Returns:
        the number of frames written.
    """
    frames, frame_labels = [], []
    with LabelStore(store_path) as store:
        if source is not None:
            for z, energy in store.isolated_atoms(source).items():
                atom = Atoms(numbers=[z], positions=[[0.0, 0.0, 0.0]], pbc=False)
                atom.info["config_type"] = ISOLATED_ATOM
                frames.append(atom)
                frame_labels.append({"energy": np.array(energy)})
        for index in range(len(store)):
            frames.append(store.structure(index))
            if source is None:
                frame_labels.append({})
            else:
                frame_labels.append(store.labels(source, index, features=(), hessian=False))
    write_structures(out_path, frames, frame_labels)
    return len(frames)
