"""`mlip-distill export`: a training run's student as a self-contained potential package.

The package (see :mod:`mlip_distill.package`) gets the run's weights, float32 or int8, the
compiled student, ``MODEL_CARD.md`` and the run's learning curves. It is assembled in a hidden
folder beside ``out`` and moved into place at the end, so ``out`` never holds half a package.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from .data.errors import DataError
from .data.store import LabelStore
from .model_card import model_card
from .package import METADATA, PotentialError, load_potential, read_metadata, save_potential

CARD = "MODEL_CARD.md"
CURVES = ("curves.csv", "curves.png")
# Keys save_potential writes itself: everything else in potential.json is carried over.
_WRITTEN_ON_SAVE = (
    "format", "format_version", "model", "elements", "cutoff", "e0", "dtype", "units", "n_parameters",
    "versions", "git_commit", "quantization", "compiled", "weights_sha256", "metadata_sha256",
)
_PIPELINE_SUMMARY = "summary.json"  # written by `mlip-distill distill` one folder above its training run


def package_of_run(run_dir: str | Path) -> Path:
    """The potential package of a run folder (its ``potential/``), or ``run_dir`` itself when it
    is a package; :class:`PotentialError` when it is neither."""
    run_dir = Path(run_dir)
    for candidate in (run_dir, run_dir / "potential"):
        if (candidate / METADATA).is_file():
            return candidate
    raise PotentialError(f"{run_dir}: neither a training run folder with potential/ nor a potential package")


def export_run(run_dir: str | Path, out: str | Path, int8: bool = False, compiled: bool = True) -> Path:
    """Write the potential package of the run in ``run_dir`` to the folder ``out`` (replaced).

    Args:
        run_dir: a training run folder (``runs/<experiment>/<id>``) or a potential package.
        int8: store the quantisable weights as int8 (:mod:`mlip_distill.models.quantize`).
        compiled: also write the compiled student (``model.pt2``).
    Returns:
        ``out``.
    Raises:
        PotentialError: ``run_dir`` holds no package, or one that fails its checks.
    """
    run_dir, out = Path(run_dir), Path(out)
    source = package_of_run(run_dir)
    potential = load_potential(source)
    metadata = potential.metadata
    extra: dict[str, Any] = {key: value for key, value in metadata.items() if key not in _WRITTEN_ON_SAVE}
    extra["data"] = {**metadata.get("data", {}), **_label_file_facts(metadata.get("data", {}))}
    speed = metadata.get("speed") or _pipeline_speed(run_dir)
    if speed:
        extra["speed"] = speed
    extra["exported_from"] = str(source.resolve())

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = out.parent / f".{out.name}.export-{secrets.token_hex(3)}"
    try:
        save_potential(potential.model, metadata["model"]["name"], staging, extra, int8=int8, compiled=compiled)
        curves = [name for name in CURVES if _copy_first(name, (source, run_dir), staging)]
        card = model_card(read_metadata(staging), curves=curves)
        (staging / CARD).write_text(card)
        _replace_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _label_file_facts(data: dict[str, Any]) -> dict[str, Any]:
    """What the label file says about itself, when it is still where training read it."""
    if "label_file" in data or not data.get("path") or not Path(data["path"]).is_file():
        return {}
    try:
        with LabelStore(data["path"]) as store:
            kinds, atoms = Counter(), 0
            for index in range(len(store)):
                arrays = store.arrays(index)
                kinds[arrays["config_type"]] += 1
                atoms += len(arrays["numbers"])
            sources = store.sources()
    except (DataError, OSError):
        return {}
    return {"label_file": {"n_structures": sum(kinds.values()), "n_atoms": atoms,
                           "config_types": dict(kinds), "sources": sources}}


def _pipeline_speed(run_dir: Path) -> dict[str, Any] | None:
    """MD speeds of student and teacher that `mlip-distill distill` measured for this run."""
    for folder in (run_dir, run_dir.parent):
        path = folder / _PIPELINE_SUMMARY
        if path.is_file():
            try:
                summary = json.loads(path.read_text())
            except json.JSONDecodeError:
                return None
            if Path(summary.get("potential", "")).resolve() == (run_dir / "potential").resolve():
                return {**summary["md"], "from": str(path)}
    return None


def _copy_first(name: str, folders: tuple[Path, ...], destination: Path) -> bool:
    for folder in folders:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, destination / name)
            return True
    return False


def _replace_folder(new: Path, target: Path) -> None:
    """Move ``new`` to ``target``; an existing ``target`` is removed only once ``new`` is in place."""
    if not target.exists():
        os.replace(new, target)
        return
    if not target.is_dir():
        raise PotentialError(f"{target}: exists and is not a folder")
    old = target.parent / f".{target.name}.old-{secrets.token_hex(3)}"
    os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old)
