"""Label every structure of a file with a teacher and write the labels into a label store."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms
from tqdm.auto import tqdm

from mlip_distill.data.errors import DataError
from mlip_distill.data.io import labels_from_atoms, read_structures, validate_structure
from mlip_distill.data.store import LabelStore, is_isolated_atom
from mlip_distill.teachers.base import Teacher, TeacherError, probe_vectors
from mlip_distill.teachers.registry import load_teacher

logger = logging.getLogger(__name__)

#: File suffixes read as label stores; anything else is read with ASE.
LABEL_STORE_SUFFIXES = (".h5", ".hdf5")

#: Labels are handed to the store in chunks of this many structures, so that memory stays
#: bounded on large files.
STRUCTURES_PER_WRITE = 256


@dataclass
class LabelSummary:
    """What :func:`label_file` did.

    ``failures`` holds ``(index, reason)`` for every structure the teacher could not label,
    ``index`` counting structures of the input file from 0; ``seconds`` is wall time.
    """

    n_labelled: int
    failures: list[tuple[int, str]]
    seconds: float
    out_path: Path

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


def label_file(
    input_path: str | Path,
    teacher: str | Teacher,
    out_path: str | Path,
    source: str = "teacher",
    progress: bool = True,
    features: Sequence[str] = (),
    hvp_probes: int = 0,
    seed: int = 0,
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
    Hessian-vector products included). The store is written atomically: on any error
    ``out_path`` is left as it was.

    Args:
        features: layers whose node features the teacher also gives (``features/<layer>``
            with its irreps; see :meth:`Teacher.feature_irreps`).
        hvp_probes: K; when positive, also the Hessian-vector products along K random unit
            probes per structure (``hvp_v``, ``hvp_hv`` (N, K, 3) eV/Å²), drawn by
            :func:`~mlip_distill.teachers.base.probe_vectors` from ``seed`` and the structure's
            index in the store. The source's provenance records ``features``, ``hvp_probes``,
            ``hvp_seed`` and ``hvp_method``.

    Raises :class:`TeacherError` for an unknown spec, an unsupported element or a feature layer
    the teacher lacks, and :class:`~mlip_distill.data.errors.DataError` for an unreadable or
    invalid input or a source that holds another K or other irreps.
    """
    start = time.perf_counter()
    if hvp_probes < 0:
        raise ValueError(f"hvp_probes must be 0 or more, not {hvp_probes}")
    teacher = load_teacher(teacher) if isinstance(teacher, str) else teacher
    teacher.check_features(features)
    extras = _ExtraLabels(tuple(features), int(hvp_probes), int(seed))
    input_path, out_path = Path(input_path), Path(out_path)
    if input_path.suffix.lower() in LABEL_STORE_SUFFIXES:
        n_labelled, failures = _label_store(input_path, teacher, out_path, source, extras, progress)
    else:
        n_labelled, failures = _label_ase_file(
            input_path, teacher, out_path, source, extras, progress
        )
    return LabelSummary(
        n_labelled=n_labelled,
        failures=failures,
        seconds=time.perf_counter() - start,
        out_path=out_path,
    )


def _label_ase_file(
    input_path: Path,
    teacher: Teacher,
    out_path: Path,
    source: str,
    extras: _ExtraLabels,
    progress: bool,
) -> tuple[int, list[tuple[int, str]]]:
    frames = read_structures(input_path)
    numbers = _elements_present(atoms.numbers for atoms in frames)
    teacher.check_elements(numbers)
    isolated_atoms = _isolated_atom_energies(teacher, numbers)
    structures, frame_indices, reference, reference_isolated_atoms = [], [], [], {}
    for k, atoms in enumerate(frames):
        where = f"{input_path}: structure {k}"
        labels = labels_from_atoms(atoms)
        # Same convention as import_structures: a lone atom is a reference E0, not a structure.
        if is_isolated_atom(atoms, where):
            if np.isfinite(labels["energy"]):
                reference_isolated_atoms[int(atoms.numbers[0])] = float(labels["energy"])
            continue
        validate_structure(atoms, labels, where)
        structures.append(atoms)
        frame_indices.append(k)
        reference.append(labels)
    with LabelStore(out_path, "a") as store:
        store_indices = store.append(structures, source_index=frame_indices)
        with_reference = [i for i, labels in enumerate(reference) if _has_any_value(labels)]
        if with_reference:
            provenance = store.provenance("reference") if "reference" in store.sources() else {}
            provenance["imported_from"] = [*provenance.get("imported_from", []), str(input_path)]
            store.set_labels(
                "reference",
                store_indices[with_reference],
                [reference[i] for i in with_reference],
                provenance,
            )
        if reference_isolated_atoms:
            store.set_isolated_atoms("reference", reference_isolated_atoms)
        store.set_isolated_atoms(source, isolated_atoms)
        return _label_into_store(
            store,
            teacher,
            source,
            zip(frame_indices, store_indices.tolist(), structures, strict=True),
            len(structures),
            extras,
            progress,
        )


def _label_store(
    input_path: Path,
    teacher: Teacher,
    out_path: Path,
    source: str,
    extras: _ExtraLabels,
    progress: bool,
) -> tuple[int, list[tuple[int, str]]]:
    with LabelStore(input_path, "r") as store:
        numbers = _elements_present(store.arrays(i)["numbers"] for i in range(len(store)))
    teacher.check_elements(numbers)
    isolated_atoms = _isolated_atom_energies(teacher, numbers)
    in_place = out_path.exists() and out_path.samefile(input_path)
    if not in_place:
        if out_path.exists():
            raise DataError(
                f"{out_path}: already exists; to label a store in place, give it as both "
                "input and output"
            )
        if not out_path.parent.is_dir():
            raise DataError(f"{out_path}: directory {out_path.parent} does not exist")
        shutil.copyfile(input_path, out_path)
    try:
        with LabelStore(out_path, "a") as store:
            store.set_isolated_atoms(source, isolated_atoms)
            n_structures = len(store)
            structures = ((i, i, store.structure(i)) for i in range(n_structures))
            return _label_into_store(
                store, teacher, source, structures, n_structures, extras, progress
            )
    except BaseException:
        if not in_place:
            out_path.unlink(missing_ok=True)
        raise


def _label_into_store(
    store: LabelStore,
    teacher: Teacher,
    source: str,
    structures: Iterable[tuple[int, int, Atoms]],
    n_structures: int,
    extras: _ExtraLabels,
    progress: bool,
) -> tuple[int, list[tuple[int, str]]]:
    """Label ``(input index, store index, atoms)`` triples; returns (labelled, failures)."""
    extras.check_store(store, source, teacher)
    provenance = {**teacher.provenance(), **extras.provenance(teacher)}
    feature_irreps = {layer: teacher.feature_irreps()[layer] for layer in extras.features}
    failures: list[tuple[int, str]] = []
    pending_indices: list[int] = []
    pending_labels: list[dict[str, np.ndarray]] = []
    n_labelled = 0

    def write_pending() -> None:
        if pending_indices:
            store.set_labels(
                source,
                np.asarray(pending_indices),
                pending_labels,
                provenance,
                feature_irreps=feature_irreps,
                replace=True,
            )
            pending_indices.clear()
            pending_labels.clear()

    bar = tqdm(
        structures,
        total=n_structures,
        unit="structure",
        desc=f"labelling with {teacher.name}",
        disable=not progress,
    )
    for input_index, store_index, atoms in bar:
        try:
            labels = teacher.label(atoms)
            extras.add(labels, teacher, atoms, store_index)
            _check_labels(labels, len(atoms))
        except Exception as exc:  # a teacher may fail in any way on one odd structure
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())
            failures.append((input_index, reason))
            logger.warning("structure %d not labelled by %s: %s", input_index, teacher.name, reason)
            # No labels: NaN replaces what an earlier run may have stored under this source.
            labels = {}
        else:
            n_labelled += 1
        pending_indices.append(store_index)
        pending_labels.append(labels)
        if len(pending_indices) == STRUCTURES_PER_WRITE:
            write_pending()
    write_pending()
    return n_labelled, failures


def _elements_present(numbers_per_structure: Iterable[np.ndarray]) -> set[int]:
    present: set[int] = set()
    for numbers in numbers_per_structure:
        present.update(int(z) for z in np.unique(numbers))
    return present


def _isolated_atom_energies(teacher: Teacher, numbers: set[int]) -> dict[int, float]:
    try:
        return teacher.isolated_atom_energies(numbers)
    except TeacherError:
        raise
    except Exception as exc:
        raise TeacherError(
            f"teacher '{teacher.name}' failed on an isolated atom: {type(exc).__name__}: {exc}"
        ) from exc


def _has_any_value(labels: dict[str, np.ndarray]) -> bool:
    return any(np.isfinite(value).any() for value in labels.values())


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
