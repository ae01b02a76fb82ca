"""The potential package: a folder with ``weights.safetensors`` and ``potential.json``.

``potential.json`` holds everything needed to rebuild the student (architecture name and
hyperparameters, elements, cutoff, E0s, dtype), its provenance (package and library versions,
git commit, teacher, data) and its measured errors, plus the SHA-256 of the weights file.
Loading never unpickles: weights come from safetensors, everything else from JSON, so a
potential found on the internet cannot run code.
"""

from __future__ import annotations

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
from .models import build_model

FORMAT = "mlip-distill-potential"
FORMAT_VERSION = 1
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


def save_potential(
    model: nn.Module, model_name: str, directory: str | Path, extra: Mapping[str, Any] | None = None
) -> Path:
    """Write ``model`` as a potential package into ``directory`` (created; files replaced atomically).

    Args:
        model: a student from :func:`mlip_distill.models.build_model` (its ``hyperparameters()``
            rebuild the architecture).
        model_name: the registry name it was built with.
        extra: more metadata (teacher, data, errors, training config), JSON-serialisable.
    Returns:
        The package directory.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    hyperparameters = model.hyperparameters()
    state = {key: value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    weights = directory / WEIGHTS
    tmp = weights.with_suffix(".tmp")
    save_file(state, str(tmp))
    os.replace(tmp, weights)
    dtype = next(iter(state.values())).dtype
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
        "weights_sha256": file_sha256(weights),
    }
    _atomic_write_text(directory / METADATA, json.dumps(metadata, indent=2, default=str) + "\n")
    return directory


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
    if version != FORMAT_VERSION:
        raise PotentialError(
            f"{path}: format version {version}, but this mlip-distill ({__version__}) reads version "
            f"{FORMAT_VERSION}; install a matching release"
        )
    return metadata


def load_potential(
    directory: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> Potential:
    """Load a package: verify the weights' checksum, rebuild the student, load its weights.

    Args:
        dtype: ``torch.float32`` or ``torch.float64``; default the dtype it was saved in.
    Raises:
        PotentialError: missing files, a checksum mismatch (tampered or truncated weights),
            weights that do not fit the architecture, or an unknown format version.
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
    model = build_model(spec["name"], **spec["hyperparameters"])
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise PotentialError(f"{weights}: weights do not fit the architecture ({first})") from None
    model = model.to(device=device, dtype=dtype or getattr(torch, metadata.get("dtype", "float32")))
    model.eval()
    return Potential(model=model, metadata=metadata)
