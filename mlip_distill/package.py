"""The potential package: a folder with ``weights.safetensors`` and ``potential.json``, and
optionally ``model.pt2``, the compiled student (see :mod:`mlip_distill.compiled`).

``potential.json`` holds everything needed to rebuild the student (architecture name and
hyperparameters, elements, cutoff, E0s, dtype), its provenance (package and library versions,
git commit, teacher, data) and its measured errors, plus the SHA-256 of the weights file, of
the compiled model, and of its own content (``metadata_sha256``, over the other keys as
canonical JSON). Loading never unpickles: weights come from safetensors, everything else from
JSON, and a compiled model is checked to hold nothing that would be unpickled, so a potential
found on the internet cannot run code when loaded.

Format versions: 1 had no ``metadata_sha256``, compiled model or int8 weights; such packages
still load. Version 2 adds them: ``compiled`` ``{file, format, sha256, dtype, torch}`` and
``quantization`` ``{scheme, weights}`` (int8 weights with per-channel scales, see
:mod:`mlip_distill.models.quantize`).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from ase.data import chemical_symbols
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .checksums import file_sha256
from .compiled import COMPILED_FILE, COMPILED_FORMAT, CompiledStudent, export_network, load_network, save_network
from .models import build_model
from .models.quantize import SCHEME, dequantize_state_dict, int8_state_dict, is_prepared

FORMAT = "mlip-distill-potential"
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
WEIGHTS = "weights.safetensors"
METADATA = "potential.json"
UNITS = {"energy": "eV", "length": "Å", "forces": "eV/Å", "stress": "eV/Å³ (ASE sign, Voigt)"}


class PotentialError(ValueError):
    """A potential package that is missing, tampered with, truncated or of an unknown format."""


@dataclass
class Potential:
    """A loaded student and its metadata (the parsed ``potential.json``)."""

    model: nn.Module
    metadata: dict[str, Any] = field(default_factory=dict)
    compiled: CompiledStudent | None = None
    """The compiled student, when loaded with ``compiled=True``."""

    @property
    def cutoff(self) -> float:
        return float(self.metadata["cutoff"])

    @property
    def elements(self) -> list[int]:
        return [int(z) for z in self.metadata["elements"]]

    def check_elements(self, numbers: Iterable[int], where: str = "structure") -> None:
        """Raise :class:`PotentialError` naming any element the student was not trained on."""
        unknown = sorted({int(z) for z in numbers} - set(self.elements))
        if unknown:
            names = ", ".join(chemical_symbols[z] for z in unknown)
            known = ", ".join(chemical_symbols[z] for z in self.elements)
            raise PotentialError(f"{where}: element(s) {names} not known to this student (it knows {known})")


def library_versions() -> dict[str, str]:
    """Versions of the package and the libraries that shape a student's numbers."""
    import e3nn
    import torch_geometric

    return {
        "mlip_distill": __version__,
        "torch": torch.__version__,
        "e3nn": e3nn.__version__,
        "torch_geometric": torch_geometric.__version__,
    }


def git_commit() -> str | None:
    """The commit of the source tree this package was imported from, if it is a git checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _atomic_write_text(path: Path, text: str) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)


def metadata_checksum(metadata: Mapping[str, Any]) -> str:
    """SHA-256 of ``metadata`` without its ``metadata_sha256`` key, as canonical JSON."""
    content = {key: value for key, value in metadata.items() if key != "metadata_sha256"}
    canonical = json.dumps(content, sort_keys=True, ensure_ascii=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def save_potential(
    model: nn.Module,
    model_name: str,
    directory: str | Path,
    extra: Mapping[str, Any] | None = None,
    int8: bool = False,
    compiled: bool = False,
) -> Path:
    """Write ``model`` as a potential package into ``directory`` (created; files replaced atomically).

    Args:
        model: a student from :func:`mlip_distill.models.build_model` (its ``hyperparameters()``
            rebuild the architecture).
        model_name: the registry name it was built with.
        extra: more metadata (teacher, data, errors, training config), JSON-serialisable.
        int8: store the quantisable weights as int8 with per-channel scales.
        compiled: also write the compiled student (``model.pt2``) of what the package loads
            as (the dequantised weights when ``int8``); without it, a stale one is removed.
    Returns:
        The package directory.
    Raises:
        ValueError: ``model`` is prepared for quantisation-aware training (its state dict
            would not load into the architecture): call ``remove_qat(model)`` first and save
            with ``int8=True`` for the weights it was trained to use.
    """
    if is_prepared(model):
        raise ValueError("model is prepared for QAT: remove_qat(model) first, then save with int8=True")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hyperparameters = model.hyperparameters()
    dtype = model.dtype
    quantization = None
    if int8:
        state, names = int8_state_dict(model)
        quantization = {"scheme": SCHEME, "weights": names}
    else:
        state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    weights = directory / WEIGHTS
    tmp = weights.with_suffix(".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, weights)
    compiled_entry = None
    if compiled:
        deployed = _rebuild(model_name, hyperparameters, state, quantization).to(dtype=dtype)
        path = save_network(export_network(deployed), directory / COMPILED_FILE)
        compiled_entry = {
            "file": COMPILED_FILE,
            "format": COMPILED_FORMAT,
            "sha256": file_sha256(path),
            "dtype": str(dtype).removeprefix("torch."),
            "torch": torch.__version__,
        }
    else:
        (directory / COMPILED_FILE).unlink(missing_ok=True)
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": {"name": model_name, "hyperparameters": hyperparameters},
        "elements": [int(z) for z in hyperparameters["elements"]],
        "cutoff": float(hyperparameters["cutoff"]),
        "e0": {str(k): float(v) for k, v in hyperparameters.get("e0", {}).items()},
        "dtype": str(dtype).removeprefix("torch."),
        "units": UNITS,
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "versions": library_versions(),
        "git_commit": git_commit(),
        **dict(extra or {}),
        "quantization": quantization,
        "compiled": compiled_entry,
        "weights_sha256": file_sha256(weights),
    }
    write_metadata(directory, metadata)
    return directory


def write_metadata(directory: str | Path, metadata: Mapping[str, Any]) -> dict[str, Any]:
    """Write ``metadata`` as the ``potential.json`` of the package in ``directory`` (replaced
    atomically), with its ``metadata_sha256`` computed afresh; returns what was written."""
    metadata = json.loads(json.dumps({key: value for key, value in metadata.items() if key != "metadata_sha256"},
                                     default=str))
    metadata["metadata_sha256"] = metadata_checksum(metadata)
    _atomic_write_text(Path(directory) / METADATA, json.dumps(metadata, indent=2) + "\n")
    return metadata


def read_metadata(directory: str | Path) -> dict[str, Any]:
    """The parsed ``potential.json`` of a package, checked for format and version."""
    directory = Path(directory)
    path = directory / METADATA
    if not directory.is_dir():
        raise PotentialError(f"{directory}: no such potential package (expected a folder with {METADATA})")
    try:
        metadata = json.loads(path.read_text())
    except FileNotFoundError:
        raise PotentialError(f"{path}: missing; not a potential package") from None
    except json.JSONDecodeError as err:
        raise PotentialError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}); truncated?") from None
    if metadata.get("format") != FORMAT:
        raise PotentialError(f"{path}: not an mlip-distill potential (format '{metadata.get('format')}')")
    version = metadata.get("format_version")
    if version not in READABLE_VERSIONS:
        needs = "a newer mlip-distill" if isinstance(version, int) and version > FORMAT_VERSION else "another release"
        raise PotentialError(
            f"{path}: format version {version}, but this mlip-distill ({__version__}) reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; it needs {needs}"
        )
    if version >= 2 and metadata.get("metadata_sha256") != metadata_checksum(metadata):
        raise PotentialError(f"{path}: content differs from its metadata_sha256; the file was modified")
    return metadata


def _rebuild(
    model_name: str, hyperparameters: Mapping[str, Any], state: dict[str, torch.Tensor], quantization: Mapping | None
) -> nn.Module:
    """The student of a package's architecture and weights; ValueError or RuntimeError when
    the weights do not fit."""
    model = build_model(model_name, **hyperparameters)
    if quantization:
        state = dequantize_state_dict(state, model, list(quantization["weights"]))
    model.load_state_dict(state, strict=True)
    return model


def load_potential(
    directory: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    compiled: bool = False,
) -> Potential:
    """Load a package: verify the checksums, rebuild the student, load its weights.

    Args:
        dtype: ``torch.float32`` or ``torch.float64``; default the dtype it was saved in.
        compiled: also load the compiled student (``Potential.compiled``); its dtype is fixed.
    Raises:
        PotentialError: missing files, a checksum mismatch (tampered or truncated weights,
            metadata or compiled model), weights that do not fit the architecture, a compiled
            model that is absent, of another dtype or holds pickled records, or an unknown
            format version.
    """
    directory = Path(directory)
    metadata = read_metadata(directory)
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise PotentialError(f"{weights}: missing; the package is incomplete")
    if file_sha256(weights) != metadata.get("weights_sha256"):
        raise PotentialError(f"{weights}: checksum differs from {METADATA}; the weights were modified or truncated")
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError) as err:
        raise PotentialError(f"{weights}: unreadable ({err})") from None
    spec = metadata["model"]
    try:
        model = _rebuild(spec["name"], spec["hyperparameters"], state, metadata.get("quantization"))
    except (RuntimeError, ValueError) as err:
        first = str(err).strip().splitlines()[0]
        raise PotentialError(f"{weights}: weights do not fit the architecture ({first})") from None
    dtype = dtype or getattr(torch, metadata.get("dtype", "float32"))
    model = model.to(device=device, dtype=dtype)
    model.eval()
    network = _load_compiled(directory, metadata, dtype, device) if compiled else None
    return Potential(model=model, metadata=metadata, compiled=network)


def _load_compiled(
    directory: Path, metadata: Mapping[str, Any], dtype: torch.dtype, device: str | torch.device
) -> CompiledStudent:
    entry = metadata.get("compiled")
    if not entry:
        raise PotentialError(f"{directory}: no compiled model in this package; export one with `mlip-distill export`")
    path = directory / entry["file"]
    if not path.is_file():
        raise PotentialError(f"{path}: missing; the package is incomplete")
    if file_sha256(path) != entry.get("sha256"):
        raise PotentialError(f"{path}: checksum differs from {METADATA}; the compiled model was modified or truncated")
    compiled_dtype = getattr(torch, entry["dtype"])
    if dtype != compiled_dtype:
        raise PotentialError(f"{path}: compiled in {entry['dtype']}, not {str(dtype).removeprefix('torch.')}; "
                             "use the eager model (compiled=False) for another dtype")
    try:
        network = load_network(path)
    except ValueError as err:
        raise PotentialError(f"{path}: refused, {err}") from None
    except Exception as err:  # torch.export raises many types for archives of another torch
        raise PotentialError(
            f"{path}: torch {torch.__version__} cannot load it (exported with torch {entry.get('torch')}: "
            f"{type(err).__name__}); use the eager model (compiled=False)"
        ) from None
    return CompiledStudent(network.to(device), compiled_dtype)
