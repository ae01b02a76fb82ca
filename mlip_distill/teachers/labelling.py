"""Label every structure of a file with a teacher and write the labels into a label store.

Labelling at scale
------------------
Structures are labelled in chunks of ``chunk_size``. Each finished chunk goes to a sidecar
folder next to the label file, ``<out>.parts/``, as ``chunk-<k>.npz``, written under a temporary
name and renamed, so that a chunk file is whole or absent; ``run.json`` there records what is
labelled with what, and is written before the first chunk and deleted after the last. The label
file is written once, at the end, atomically (see :class:`~mlip_distill.data.store.LabelStore`),
then the sidecar is removed. So a run killed at any moment, even by ``kill -9``, leaves the label
file as it was, and rerunning the same command labels only the chunks that are missing before it
writes the label file: nothing is labelled twice, nothing is missed. A sidecar left by a run with
other settings (teacher, input, source, chunk size, shard...) is refused with a one-line error;
delete it to start afresh. Do not touch the label file while a run on it is unfinished.

``workers > 1`` labels chunks in that many processes (``spawn``), each building its own teacher
from the spec, or unpickling a copy of a :class:`~mlip_distill.teachers.base.Teacher` instance;
the labels are those of one process. Only ASE-calculator teachers run in several processes:
torch teachers (``potential:PATH``) use every core from one process and refuse ``workers > 1``.

``shard`` (:class:`~mlip_distill.data.store.Shard` ``i/n``) labels the structures at positions
``k % n == i`` of the input (isolated atoms left out of the count) into a new label file of just
those; :func:`~mlip_distill.data.shards.merge_shards` joins the n shard files into the file one
run would have written (same structures, order, system ids, labels, Hessian probes, provenance).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import multiprocessing
import os
import pickle
import shutil
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from tqdm.auto import tqdm

from mlip_distill.checksums import file_sha256
from mlip_distill.data.errors import DataError
from mlip_distill.data.io import labels_from_atoms, read_structures, validate_structures
from mlip_distill.data.shards import copy_structures
from mlip_distill.data.store import LabelStore, Shard, is_isolated_atom, new_system_ids
from mlip_distill.teachers.ase_calculator import ASECalculatorTeacher
from mlip_distill.teachers.base import Teacher, TeacherError, probe_vectors
from mlip_distill.teachers.registry import load_teacher

logger = logging.getLogger(__name__)

#: File suffixes read as label stores; anything else is read with ASE.
LABEL_STORE_SUFFIXES = (".h5", ".hdf5")

#: Structures per chunk: the unit of resuming and of work handed to a worker process.
DEFAULT_CHUNK_SIZE = 64

#: Structures whose labels are written to the label file in one go (a memory bound).
STRUCTURES_PER_WRITE = 4096

#: The sidecar folder of an unfinished run is the label file's name with this suffix.
PARTS_SUFFIX = ".parts"

#: Labels stored once per structure; the others have one row per atom.
_PER_STRUCTURE = ("energy", "stress")


@dataclass
class LabelSummary:
    """What :func:`label_file` did.

    ``failures`` holds ``(index, reason)`` for every structure the teacher could not label,
    ``index`` counting structures of the input file from 0; ``seconds`` is wall time;
    ``n_resumed`` counts the structures (labelled or failed) that an earlier, interrupted run of
    the same command had done.
    """

    n_labelled: int
    failures: list[tuple[int, str]]
    seconds: float
    out_path: Path
    n_resumed: int = 0

    @property
    def n_failed(self) -> int:
        return len(self.failures)


@dataclass(frozen=True)
class _ExtraLabels:
    """What :func:`label_file` asks of the teacher beyond energy, forces, stress and per-atom
    energies: node features of some layers, and Hessian-vector products along random probes."""

    features: tuple[str, ...]
    hvp_probes: int
    seed: int

    def provenance(self, teacher: Teacher) -> dict:
        """The settings to record next to the teacher's provenance; ``{}`` when none asked."""
        record: dict = {}
        if self.features:
            record["features"] = list(self.features)
        if self.hvp_probes:
            record["hvp_probes"] = self.hvp_probes
            record["hvp_seed"] = self.seed
            record["hvp_method"] = teacher.hvp_method()
        return record

    def add(self, labels: dict, teacher: Teacher, atoms: Atoms, store_index: int) -> None:
        """Add ``features`` and ``hvp_v``/``hvp_hv`` of one structure to its ``labels``."""
        if self.features:
            labels["features"] = teacher.node_features(atoms, self.features)
        if self.hvp_probes:
            probes = probe_vectors(len(atoms), self.hvp_probes, self.seed, store_index)
            labels["hvp_v"] = probes
            labels["hvp_hv"] = teacher.hessian_vector_products(atoms, probes)

    def check_store(self, store: LabelStore, source: str, teacher: Teacher) -> None:
        """Fail before labelling when the source already holds another K or other irreps."""
        if source not in store.sources():
            return
        stored_probes = store.hvp_probes(source)
        if self.hvp_probes and stored_probes and stored_probes != self.hvp_probes:
            raise DataError(
                f"{store.path}: source '{source}' holds {stored_probes} Hessian-vector probes per "
                f"structure, not {self.hvp_probes}; ask for {stored_probes} or use another source"
            )
        stored_layers, irreps = store.feature_layers(source), teacher.feature_irreps()
        for layer in self.features:
            if stored_layers.get(layer, irreps[layer]) != irreps[layer]:
                raise DataError(
                    f"{store.path}: source '{source}' holds features of layer '{layer}' with "
                    f"irreps {stored_layers[layer]}, the teacher gives {irreps[layer]}; "
                    "use another source"
                )


@dataclass
class _Job:
    """The structures one run labels, and how they enter the label file.

    ``input_indices`` number them in the input file (for the summary), ``probe_indices`` give
    each one's index in the finished label file (all shards merged), which seeds its Hessian
    probes. ``write_structures`` puts them into the label file being written (opened as a copy
    of ``start_from`` when given) and returns their indices there. ``numbers`` are the elements
    of the whole input, ``out_structures`` the structures ``out_path`` holds when the run begins.
    """

    structures: list[Atoms]
    input_indices: list[int]
    probe_indices: list[int]
    numbers: set[int]
    write_structures: Callable[[LabelStore], np.ndarray]
    start_from: Path | None
    out_structures: int
    shard: Shard | None


@dataclass
class _Chunk:
    """Labels of one chunk of a job's structures: ``labels[k]`` is ``{}`` where the teacher
    failed, with the reason in ``reasons[k]`` (``""`` where it did not)."""

    input_indices: list[int]
    n_atoms: list[int]
    labels: list[dict]
    reasons: list[str]

    @property
    def failures(self) -> list[tuple[int, str]]:
        return [(i, why) for i, why in zip(self.input_indices, self.reasons) if why]

    def save(self, path: Path) -> None:
        """Write to ``path`` as ``.npz`` (no pickles) under a temporary name, then rename."""
        arrays = {
            "input_index": np.asarray(self.input_indices, dtype=np.int64),
            "n_atoms": np.asarray(self.n_atoms, dtype=np.int64),
            "reason": np.asarray(self.reasons, dtype=str),
        }
        flat = [_flatten(labels) for labels in self.labels if labels]
        for key in flat[0] if flat else ():
            stack = np.stack if key in _PER_STRUCTURE else np.concatenate
            arrays[key] = stack([labels[key] for labels in flat])
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path) -> _Chunk | None:
        """The chunk written to ``path``; None when it is absent or unreadable."""
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile):
            return None
        reasons = arrays.pop("reason").tolist()
        n_atoms = arrays.pop("n_atoms").tolist()
        input_indices = arrays.pop("input_index").tolist()
        has_features = any(key.startswith("features/") for key in arrays)
        labels: list[dict] = []
        structure, atom = 0, 0
        for n, reason in zip(n_atoms, reasons):
            if reason:
                labels.append({})
                continue
            flat = {
                key: values[structure] if key in _PER_STRUCTURE else values[atom : atom + n]
                for key, values in arrays.items()
            }
            labels.append(_unflatten(flat) if has_features else flat)
            structure, atom = structure + 1, atom + n
        return cls(input_indices, n_atoms, labels, reasons)


def _flatten(labels: dict) -> dict[str, np.ndarray]:
    """One structure's labels as flat arrays: ``features`` becomes ``features/<layer>``."""
    flat = {key: np.asarray(value) for key, value in labels.items() if key != "features"}
    for layer, values in labels.get("features", {}).items():
        flat[f"features/{layer}"] = np.asarray(values)
    return flat


def _unflatten(flat: dict[str, np.ndarray]) -> dict:
    """The inverse of :func:`_flatten`."""
    labels: dict = {key: value for key, value in flat.items() if not key.startswith("features/")}
    features = {
        key.removeprefix("features/"): value
        for key, value in flat.items() if key.startswith("features/")
    }
    if features:
        labels["features"] = features
    return labels


@dataclass(frozen=True)
class _ChunkTask:
    """Chunk ``number`` of a job: its structures, numbered in the input and in the label file."""

    number: int
    structures: list[Atoms]
    input_indices: list[int]
    probe_indices: list[int]


class _ChunkLabeller:
    """Labels chunks with one teacher, in this process or in a worker."""

    def __init__(self, teacher: Teacher, extras: _ExtraLabels) -> None:
        self.teacher = teacher
        self.extras = extras

    def label(self, task: _ChunkTask, on_structure: Callable[[], object] = lambda: None) -> _Chunk:
        """Label every structure of ``task``, calling ``on_structure`` after each one; a
        structure on which the teacher raises or gives non-finite labels is recorded as failed."""
        chunk = _Chunk(task.input_indices, [len(atoms) for atoms in task.structures], [], [])
        for input_index, probe_index, atoms in zip(
            task.input_indices, task.probe_indices, task.structures
        ):
            try:
                labels = self.teacher.label(atoms)
                self.extras.add(labels, self.teacher, atoms, probe_index)
                _check_labels(labels, len(atoms))
            except Exception as exc:  # a teacher may fail in any way on one odd structure
                reason = " ".join(f"{type(exc).__name__}: {exc}".split()) or type(exc).__name__
                logger.warning(
                    "structure %d not labelled by %s: %s", input_index, self.teacher.name, reason
                )
                labels = {}
            else:
                reason = ""
            chunk.labels.append(labels)
            chunk.reasons.append(reason)
            on_structure()
        return chunk


class _Parts:
    """The sidecar folder ``<out>.parts/`` of an unfinished run (module docstring)."""

    def __init__(self, out_path: Path) -> None:
        self.out_path = out_path
        self.folder = out_path.with_name(out_path.name + PARTS_SUFFIX)
        self.manifest = self.folder / "run.json"

    def chunk_path(self, number: int) -> Path:
        return self.folder / f"chunk-{number:06d}.npz"

    def _read_manifest(self) -> dict | None:
        try:
            return json.loads(self.manifest.read_text())
        except (OSError, ValueError):
            return None

    def committed_run(self, settings: dict) -> list[_Chunk] | None:
        """The chunks of a run with ``settings`` that was killed after it wrote the label file
        but before it removed its sidecar, which is removed now; None when there is none. The
        sidecar of such a run with other settings is removed too."""
        manifest = self._read_manifest()
        if manifest is None or not self.out_path.exists():
            return None
        with LabelStore(self.out_path) as store:
            if store.labelling_run != manifest["run"]:
                return None
        chunks = None
        if manifest["settings"] == settings:
            loaded = [_Chunk.load(path) for path in sorted(self.folder.glob("chunk-*.npz"))]
            chunks = [chunk for chunk in loaded if chunk is not None]
        self.remove()
        return chunks

    def begin(self, settings: dict, out_structures: int) -> str:
        """The id of the run: the unfinished one in the sidecar, or a new one."""
        manifest = self._read_manifest()
        if manifest is None:
            # No manifest: the sidecar, if any, holds nothing but temporary files.
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder.mkdir()
            manifest = {
                "run": uuid.uuid4().hex, "settings": settings, "out_structures": out_structures
            }
            temporary = self.folder / f".run.json.tmp-{os.getpid()}"
            temporary.write_text(json.dumps(manifest, indent=1))
            os.replace(temporary, self.manifest)
            return manifest["run"]
        if manifest["settings"] != settings:
            changed = sorted(
                key for key in {*settings, *manifest["settings"]}
                if settings.get(key) != manifest["settings"].get(key)
            )
            raise DataError(
                f"{self.folder}: holds an unfinished labelling run with another "
                f"{', '.join(changed)}; rerun that command to finish it, or delete the folder "
                "to start afresh"
            )
        if manifest["out_structures"] != out_structures:
            raise DataError(
                f"{self.out_path}: changed since the unfinished labelling run in {self.folder} "
                "began; delete that folder to start afresh"
            )
        return manifest["run"]

    def remove(self) -> None:
        """Delete the sidecar, its manifest last (see :meth:`begin`)."""
        for path in self.folder.iterdir():
            if path != self.manifest:
                path.unlink()
        self.manifest.unlink(missing_ok=True)
        self.folder.rmdir()


def label_file(
    input_path: str | Path,
    teacher: str | Teacher,
    out_path: str | Path,
    source: str = "teacher",
    progress: bool = True,
    features: Sequence[str] = (),
    hvp_probes: int = 0,
    seed: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int = 1,
    shard: Shard | None = None,
) -> LabelSummary:
    """Label the structures of ``input_path`` with ``teacher`` into the store ``out_path``.

    ``input_path`` is either

    * a file ASE reads (extxyz, ...): its structures are appended to ``out_path`` (created
      when missing), and labels the file already carries (energies, forces, stress from DFT)
      are kept as source ``"reference"`` next to the teacher's; isolated-atom frames
      (``config_type=IsolatedAtom``, or one atom without PBC) become reference isolated-atom
      energies, as in :func:`~mlip_distill.data.store.import_structures`; or
    * a label store (``.h5``): labelled in place when ``out_path`` is the same file, otherwise
      copied to ``out_path`` (which must not exist yet) and the copy is labelled.

    Before any structure is labelled, every element is checked against the teacher and the
    isolated-atom energies are computed, so a mismatch fails in seconds, not after hours.
    A structure on which the teacher raises, or returns non-finite energy or forces, is
    skipped and reported in the summary. Labels go under ``labels/<source>`` with the
    teacher's provenance; isolated-atom energies under ``isolated_atoms`` for that source.
    A labelled structure's new labels replace all the source held for it (features and
    Hessian-vector products included). The run is resumable and ``out_path`` is written
    atomically at its end (module docstring): on any error it is left as it was.

    Args:
        features: layers whose node features the teacher also gives (``features/<layer>``
            with its irreps; see :meth:`Teacher.feature_irreps`).
        hvp_probes: K; when positive, also the Hessian-vector products along K random unit
            probes per structure (``hvp_v``, ``hvp_hv`` (N, K, 3) eV/Å²), drawn by
            :func:`~mlip_distill.teachers.base.probe_vectors` from ``seed`` and the structure's
            index in the store. The source's provenance records ``features``, ``hvp_probes``,
            ``hvp_seed`` and ``hvp_method``.
        chunk_size: structures per chunk, the unit of resuming and of work for a worker.
        workers: processes that label (ASE-calculator teachers only; module docstring).
        shard: label only this part of the input into ``out_path``, which must not exist; the
            file records the shard for :func:`~mlip_distill.data.shards.merge_shards`.

    Raises :class:`TeacherError` for an unknown spec, an unsupported element, a feature layer
    the teacher lacks, or ``workers > 1`` with a teacher that runs in one process, and
    :class:`~mlip_distill.data.errors.DataError` for an unreadable or invalid input, a source
    that holds another K or other irreps, or a sidecar of a run with other settings.
    """
    start = time.perf_counter()
    for name, value, least in (("hvp_probes", hvp_probes, 0), ("chunk_size", chunk_size, 1),
                               ("workers", workers, 1)):
        if value < least:
            raise ValueError(f"{name} must be {least} or more, not {value}")
    teacher_given = teacher
    teacher = load_teacher(teacher) if isinstance(teacher, str) else teacher
    teacher.check_features(features)
    if workers > 1 and not isinstance(teacher, ASECalculatorTeacher):
        raise TeacherError(
            f"teacher '{teacher.name}' labels in one process only (torch uses every core from "
            "there); leave workers at 1"
        )
    extras = _ExtraLabels(tuple(features), int(hvp_probes), int(seed))
    input_path, out_path = Path(input_path), Path(out_path)
    if not input_path.exists():
        raise DataError(f"{input_path}: no such file")
    provenance = {**teacher.provenance(), **extras.provenance(teacher)}
    settings = json.loads(json.dumps(
        {
            "input": str(input_path.resolve()),
            "input_sha256": file_sha256(input_path),
            "source": source,
            "teacher": provenance,
            "chunk_size": chunk_size,
            "shard": None if shard is None else str(shard),
        },
        default=str,
    ))
    parts = _Parts(out_path)
    committed = parts.committed_run(settings)
    if committed is not None:
        return _summary(committed, sum(len(chunk.reasons) for chunk in committed), start, out_path)

    if shard is not None:
        shard = dataclasses.replace(shard, input_sha256=settings["input_sha256"])
        if out_path.exists():
            raise DataError(
                f"{out_path}: already exists; shard {shard} is written to a new label file"
            )
    # The store whose sources the labels join: the input store, or the label file appended to.
    if input_path.suffix.lower() in LABEL_STORE_SUFFIXES:
        job, joined = _store_job(input_path, out_path, shard), input_path
    else:
        job, joined = _ase_file_job(input_path, out_path, shard), out_path
    teacher.check_elements(job.numbers)
    isolated_atoms = _isolated_atom_energies(teacher, job.numbers)
    if joined.exists():
        with LabelStore(joined) as store:
            extras.check_store(store, source, teacher)

    run = parts.begin(settings, job.out_structures)
    tasks = [
        _ChunkTask(
            k // chunk_size,
            job.structures[k : k + chunk_size],
            job.input_indices[k : k + chunk_size],
            job.probe_indices[k : k + chunk_size],
        )
        for k in range(0, len(job.structures), chunk_size)
    ]
    todo = [task for task in tasks if _finished(parts, task) is None]
    n_resumed = len(job.structures) - sum(len(task.structures) for task in todo)
    with tqdm(
        total=len(job.structures), initial=n_resumed, unit="structure",
        desc=f"labelling with {teacher.name}", disable=not progress,
    ) as bar:
        if workers > 1 and todo:
            _label_in_processes(todo, teacher_given, teacher, extras, workers, parts, bar)
        else:
            labeller = _ChunkLabeller(teacher, extras)
            for task in todo:
                labeller.label(task, bar.update).save(parts.chunk_path(task.number))

    feature_irreps = {layer: teacher.feature_irreps()[layer] for layer in extras.features}
    chunks = []
    with LabelStore(out_path, "a", start_from=job.start_from) as store:
        indices = job.write_structures(store)
        store.set_isolated_atoms(source, isolated_atoms)
        # Chunks go into the store a batch at a time: few, large HDF5 writes, bounded memory.
        batch_indices: list[np.ndarray] = []
        batch_labels: list[dict] = []
        for task in tasks:
            chunk = _finished(parts, task)
            if chunk is None:
                raise DataError(f"{parts.chunk_path(task.number)}: vanished or unreadable; rerun")
            first = task.number * chunk_size
            batch_indices.append(indices[first : first + len(task.structures)])
            batch_labels.extend(chunk.labels)
            chunks.append(dataclasses.replace(chunk, labels=[]))
            if len(batch_labels) >= STRUCTURES_PER_WRITE or task is tasks[-1]:
                store.set_labels(
                    source, np.concatenate(batch_indices), batch_labels, provenance,
                    feature_irreps=feature_irreps, replace=True,
                )
                batch_indices, batch_labels = [], []
        if job.shard is not None:
            store.set_shard(job.shard)
        store.set_labelling_run(run)
    parts.remove()
    return _summary(chunks, n_resumed, start, out_path)


def _summary(chunks: list[_Chunk], n_resumed: int, start: float, out_path: Path) -> LabelSummary:
    failures = [failure for chunk in chunks for failure in chunk.failures]
    n_structures = sum(len(chunk.reasons) for chunk in chunks)
    return LabelSummary(
        n_labelled=n_structures - len(failures),
        failures=failures,
        seconds=time.perf_counter() - start,
        out_path=out_path,
        n_resumed=n_resumed,
    )


def _finished(parts: _Parts, task: _ChunkTask) -> _Chunk | None:
    """The chunk file of ``task``, when it is there, readable and of the same structures."""
    chunk = _Chunk.load(parts.chunk_path(task.number))
    if chunk is None or chunk.input_indices != task.input_indices:
        return None
    return chunk


# A worker process's teacher: the spec or pickled Teacher it is started with, then the teacher
# built from it on its first chunk (building it in the pool's initializer would, on failure,
# make the pool restart workers for ever instead of reporting the error).
_worker_teacher: str | bytes | None = None
_worker_labeller: _ChunkLabeller | None = None
_worker_extras: _ExtraLabels | None = None


def _start_worker(teacher: str | bytes, extras: _ExtraLabels) -> None:
    global _worker_teacher, _worker_extras
    _worker_teacher, _worker_extras = teacher, extras


def _label_in_worker(task: _ChunkTask, parts: _Parts) -> int:
    """Label one chunk in a worker process and write its file; returns its structure count."""
    global _worker_labeller
    if _worker_labeller is None:
        teacher = _worker_teacher
        built = load_teacher(teacher) if isinstance(teacher, str) else pickle.loads(teacher)
        _worker_labeller = _ChunkLabeller(built, _worker_extras)
    _worker_labeller.label(task).save(parts.chunk_path(task.number))
    return len(task.structures)


def _label_in_processes(
    tasks: list[_ChunkTask],
    teacher_given: str | Teacher,
    teacher: Teacher,
    extras: _ExtraLabels,
    workers: int,
    parts: _Parts,
    bar: tqdm,
) -> None:
    """Label ``tasks`` in ``workers`` spawned processes, each writing its chunks' files."""
    if isinstance(teacher_given, str):
        shipped: str | bytes = teacher_given
    else:
        try:
            shipped = pickle.dumps(teacher_given)
        except Exception as exc:  # whatever pickling a user's teacher raises
            raise TeacherError(
                f"teacher '{teacher.name}' cannot be sent to worker processes ({exc}); give its "
                "spec instead, or use one worker"
            ) from exc
    context = multiprocessing.get_context("spawn")
    with context.Pool(
        min(workers, len(tasks)), initializer=_start_worker, initargs=(shipped, extras)
    ) as pool:
        for n_structures in pool.imap_unordered(
            functools.partial(_label_in_worker, parts=parts), tasks
        ):
            bar.update(n_structures)


def _ase_file_job(input_path: Path, out_path: Path, shard: Shard | None) -> _Job:
    """A job for a file ASE reads: its structures are appended to ``out_path``."""
    frames = read_structures(input_path)
    structures, frame_indices, reference, reference_isolated_atoms = [], [], [], {}
    for k, atoms in enumerate(frames):
        labels = labels_from_atoms(atoms)
        # Same convention as import_structures: a lone atom is a reference E0, not a structure.
        if is_isolated_atom(atoms, f"{input_path}: structure {k}"):
            if np.isfinite(labels["energy"]):
                reference_isolated_atoms[int(atoms.numbers[0])] = float(labels["energy"])
            continue
        structures.append(atoms)
        frame_indices.append(k)
        reference.append(labels)
    validate_structures(
        structures, reference, [f"{input_path}: structure {k}" for k in frame_indices]
    )
    has_reference = _has_any_value(reference)
    out_structures, first_system_id = 0, 0
    if out_path.exists():
        with LabelStore(out_path) as out:
            out_structures, first_system_id = len(out), out.next_system_id()
    system_ids = new_system_ids(structures, first_system_id)
    if shard is not None:
        shard = dataclasses.replace(shard, n_structures=len(structures))
    positions = list(range(len(structures)) if shard is None else shard.positions())

    def write_structures(store: LabelStore) -> np.ndarray:
        indices = store.append(
            [structures[k] for k in positions],
            system_id=system_ids[positions],
            source_index=[frame_indices[k] for k in positions],
        )
        with_reference = [i for i, k in enumerate(positions) if has_reference[k]]
        if with_reference:
            provenance = store.provenance("reference") if "reference" in store.sources() else {}
            provenance["imported_from"] = [*provenance.get("imported_from", []), str(input_path)]
            store.set_labels(
                "reference",
                indices[with_reference],
                [reference[positions[i]] for i in with_reference],
                provenance,
            )
        if reference_isolated_atoms:
            store.set_isolated_atoms("reference", reference_isolated_atoms)
        return indices

    return _Job(
        structures=[structures[k] for k in positions],
        input_indices=[frame_indices[k] for k in positions],
        probe_indices=[out_structures + k for k in positions],
        numbers=_elements_present(atoms.numbers for atoms in structures),
        write_structures=write_structures,
        start_from=None,
        out_structures=out_structures,
        shard=shard,
    )


def _store_job(input_path: Path, out_path: Path, shard: Shard | None) -> _Job:
    """A job for a label store: labelled in place, in a copy, or (a shard) into a new file."""
    in_place = out_path.exists() and out_path.samefile(input_path)
    if out_path.exists() and not in_place:
        raise DataError(
            f"{out_path}: already exists; to label a store in place, give it as both "
            "input and output"
        )
    if not out_path.parent.is_dir():
        raise DataError(f"{out_path}: directory {out_path.parent} does not exist")
    with LabelStore(input_path) as store:
        n_structures = len(store)
        if shard is not None:
            shard = dataclasses.replace(shard, n_structures=n_structures)
        positions = list(range(n_structures) if shard is None else shard.positions())
        structures = [store.structure(k) for k in positions]
        numbers = _elements_present(store.arrays(k)["numbers"] for k in range(n_structures))

    def write_structures(store: LabelStore) -> np.ndarray:
        if shard is None:
            return np.arange(len(store))
        with LabelStore(input_path) as source:
            return copy_structures([(source, k) for k in positions], store)

    return _Job(
        structures=structures,
        input_indices=positions,
        probe_indices=positions,
        numbers=numbers,
        write_structures=write_structures,
        start_from=None if in_place or shard is not None else input_path,
        out_structures=n_structures if in_place else 0,
        shard=shard,
    )


def _elements_present(numbers_per_structure: Iterable[np.ndarray]) -> set[int]:
    numbers = list(numbers_per_structure)
    return {int(z) for z in np.unique(np.concatenate(numbers))} if numbers else set()


def _isolated_atom_energies(teacher: Teacher, numbers: set[int]) -> dict[int, float]:
    try:
        return teacher.isolated_atom_energies(numbers)
    except TeacherError:
        raise
    except Exception as exc:
        raise TeacherError(
            f"teacher '{teacher.name}' failed on an isolated atom: {type(exc).__name__}: {exc}"
        ) from exc


def _has_any_value(labels: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    """(S,) bool: the label dicts that hold a finite value, found with a few numpy calls."""
    values = [np.ravel(value) for label in labels for value in label.values()]
    if not values:
        return np.zeros(len(labels), dtype=bool)
    owners = np.repeat(
        np.repeat(np.arange(len(labels)), [len(label) for label in labels]),
        [value.size for value in values],
    )
    found = np.zeros(len(labels), dtype=bool)
    found[owners[np.isfinite(np.concatenate(values))]] = True
    return found


def _check_labels(labels: dict[str, np.ndarray], n_atoms: int) -> None:
    """Refuse labels a student must not learn from: a NaN energy or force is a teacher
    failure, not a missing value."""
    if not np.isfinite(labels["energy"]):
        raise TeacherError(f"non-finite energy {labels['energy']}")
    forces = labels["forces"]
    if forces.shape != (n_atoms, 3):
        raise TeacherError(f"forces have shape {forces.shape}, expected ({n_atoms}, 3)")
    if not np.isfinite(forces).all():
        raise TeacherError("non-finite forces")
    for layer, values in labels.get("features", {}).items():
        if not np.isfinite(values).all():
            raise TeacherError(f"non-finite node features of layer '{layer}'")
    if "hvp_hv" in labels and not np.isfinite(labels["hvp_hv"]).all():
        raise TeacherError("non-finite Hessian-vector products")
