"""The compiled student: its atomic-energy network captured by ``torch.export``.

The exported program maps ``numbers (N,)``, ``edge_index (2, E)`` and ``edge_vectors (E, 3)`` Å
to per-atom energies (N,) eV, with the numbers of atoms and edges left dynamic. Forces and
stress stay derivatives of the energy: :class:`CompiledStudent` takes them by autograd through
the program, with the same code as the eager student
(:func:`~mlip_distill.models.conservative.energy_forces_stress`), so both give the same numbers.

Why ``torch.export`` and not TorchScript: ``torch.jit`` is deprecated, TorchScript needs the
models rewritten (PaiNN's ``torch.split`` unpacking does not script), and a TorchScript file is
always unpickled when loaded, whereas a ``.pt2`` archive holds the graph as JSON and the tensors
as raw bytes. ``torch.export.load`` still unpickles three kinds of record when an archive has
them (weights or constants flagged ``use_pickle``, custom or opaque objects, example inputs),
so :func:`check_archive` reads the archive's JSON index first and refuses any such record:
what is left to load is JSON and raw little-endian tensors. Speed of the two routes:
``benchmarks/compiled_vs_eager.py``.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch

from .models.base import StudentPotential
from .models.conservative import energy_forces_stress

COMPILED_FILE = "model.pt2"
COMPILED_FORMAT = "torch.export"
# Records of a .pt2 archive that are never unpickled, relative to the archive's top folder.
_PLAIN_RECORDS = ("archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id")
_PAYLOAD_CONFIGS = ("data/weights/model_weights_config.json", "data/constants/model_constants_config.json")


class AtomicEnergyNetwork(nn.Module):
    """A student's atomic-energy network with plain tensor inputs, for export.

    Shapes: ``numbers`` (N,) atomic numbers (elements checked beforehand), ``edge_index``
    (2, E), ``edge_vectors`` (E, 3) Å → atomic energies (N,) eV.
    """

    def __init__(self, student: StudentPotential) -> None:
        super().__init__()
        self.student = student

    def forward(self, numbers: Tensor, edge_index: Tensor, edge_vectors: Tensor) -> Tensor:
        species = self.student.species_of_number[numbers]
        return self.student.atomic_energies_of_species(species, edge_index, edge_vectors)[0]


def export_network(student: StudentPotential) -> torch.export.ExportedProgram:
    """The exported program of ``student``'s atomic-energy network (its dtype, on the CPU).

    Traced on a three-atom example of the student's first element; any number of atoms and
    edges (zero included) runs the same program. The example inputs are not kept (they would
    be pickled into the archive).
    """
    student = student.eval()
    dtype = student.dtype
    numbers = torch.full((3,), student.elements[0], dtype=torch.long)
    edge_index = torch.tensor([[0, 0, 1, 1, 2, 2], [1, 2, 0, 2, 0, 1]])
    edge_vectors = torch.tensor([[1.0, 0.5, 0.2], [0.3, 1.4, 0.1]], dtype=dtype).repeat(3, 1)
    atoms, edges = torch.export.Dim("atoms", min=1), torch.export.Dim("edges", min=0)
    program = torch.export.export(
        AtomicEnergyNetwork(student),
        (numbers, edge_index, edge_vectors),
        dynamic_shapes=({0: atoms}, {1: edges}, {0: edges}),
    )
    program.example_inputs = None
    return program


def save_network(program: torch.export.ExportedProgram, path: str | Path) -> Path:
    """Write ``program`` to ``path`` (a ``.pt2`` archive) through a temporary file."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp.pt2")
    try:
        torch.export.save(program, str(tmp))
        check_archive(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def check_archive(path: str | Path) -> None:
    """Refuse a ``.pt2`` archive that holds anything ``torch.export.load`` would unpickle.

    Allowed: the version records, ``models/*.json`` (the graph), an empty example-input
    record, and weights and constants listed in their JSON index as raw tensors.

    Raises:
        ValueError: naming the first record that is not allowed (or an unreadable archive).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            top = names[0].split("/", 1)[0] + "/" if names else ""
            raw_tensors: set[str] = set()
            for config_name in _PAYLOAD_CONFIGS:
                if top + config_name in names:
                    raw_tensors |= _raw_tensor_records(config_name, json.loads(archive.read(top + config_name)))
            for info in archive.infolist():
                record = info.filename.removeprefix(top)
                if not info.filename.startswith(top):
                    raise ValueError(f"record {info.filename} outside the archive folder")
                if record in _PLAIN_RECORDS or record in _PAYLOAD_CONFIGS or record in raw_tensors:
                    continue
                if record.startswith("models/") and record.endswith(".json"):
                    continue
                if record.startswith("data/sample_inputs/") and info.file_size == 0:
                    continue
                raise ValueError(f"record {record} would be unpickled or is unknown")
    except (zipfile.BadZipFile, json.JSONDecodeError, KeyError, OSError) as err:
        raise ValueError(f"not a readable torch.export archive ({err})") from None


def _raw_tensor_records(config_name: str, config: dict[str, Any]) -> set[str]:
    folder = config_name.rsplit("/", 1)[0]
    records = set()
    for name, entry in config.get("config", {}).items():
        if entry.get("use_pickle", True) or not entry.get("path_name", "").startswith(("weight_", "tensor_")):
            raise ValueError(f"{config_name}: entry {name} is pickled")
        records.add(f"{folder}/{entry['path_name']}")
    return records


def load_network(path: str | Path) -> nn.Module:
    """The atomic-energy network of a checked archive (see :func:`check_archive`)."""
    check_archive(path)
    return torch.export.load(str(path)).module()


class CompiledStudent(nn.Module):
    """An exported network called like a student: ``compiled(batch, compute_forces=...,
    compute_stress=...)`` returns what :meth:`StudentPotential.forward` returns, with empty
    ``node_features``.

    Args:
        network: from :func:`load_network`.
        dtype: the dtype the network was exported in.
    """

    def __init__(self, network: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.network = network
        self.network_dtype = dtype

    def atomic_energies(self, batch: Batch, edge_vectors: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        return self.network(batch.numbers, batch.edge_index, edge_vectors), {}

    def forward(
        self,
        batch: Batch,
        compute_forces: bool = True,
        compute_stress: bool = False,
        create_graph: bool = False,
    ) -> dict[str, Any]:
        return energy_forces_stress(
            self.atomic_energies,
            batch,
            compute_forces=compute_forces,
            compute_stress=compute_stress,
            create_graph=create_graph,
            dtype=self.network_dtype,
        )
