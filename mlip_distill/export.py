"""`mlip-distill export`: a training run's student as a self-contained potential package.

The package (see :mod:`mlip_distill.package`) gets the run's weights, float32 or int8, the
compiled student, ``MODEL_CARD.md`` and the run's learning curves. It is assembled in a hidden
folder beside ``out`` and moved into place at the end, so ``out`` never holds half a package.

A package travels: its ``potential.json`` and card name files without the folders of the machine
that trained it (:func:`portable_paths`). :func:`refresh_package` rewrites the metadata and card
of a package already exported, leaving its weights as they are.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import Any, Mapping

from .checksums import file_sha256
from .data.errors import DataError
from .data.store import LabelStore
from .model_card import model_card
from .package import METADATA, PotentialError, load_potential, read_metadata, save_potential, write_metadata

CARD = "MODEL_CARD.md"
CURVES = ("curves.csv", "curves.png")
# Keys save_potential writes itself: everything else in potential.json is carried over.
_WRITTEN_ON_SAVE = (
    "format", "format_version", "model", "elements", "cutoff", "e0", "dtype", "units", "n_parameters",
    "versions", "git_commit", "quantization", "compiled", "weights_sha256", "metadata_sha256",
)
# Keys save_potential writes after the carried-over ones.
_FILE_CHECKS = ("quantization", "compiled", "weights_sha256")
_PIPELINE_SUMMARY = "summary.json"  # written by `mlip-distill distill` one folder above its training run
_ABSOLUTE_PATH = re.compile(r"([A-Za-z][\w.+-]*:)?(/[^\n]*)")  # "/a/b.h5", or a teacher spec "mace:/a/b.model"
_STAGE_ERRORS = re.compile(r"stage (\d+) ")  # "stage 2 fine-tune: valid_vs_reference"


def package_of_run(run_dir: str | Path) -> Path:
    """The potential package of a run folder (its ``potential/``), or ``run_dir`` itself when it
    is a package; :class:`PotentialError` when it is neither."""
    run_dir = Path(run_dir)
    for candidate in (run_dir, run_dir / "potential"):
        if (candidate / METADATA).is_file():
            return candidate
    raise PotentialError(f"{run_dir}: neither a training run folder with potential/ nor a potential package")


def export_run(
    run_dir: str | Path, out: str | Path, int8: bool = False, compiled: bool = True,
    speed: Mapping[str, Any] | None = None,
) -> Path:
    """Write the potential package of the run in ``run_dir`` to the folder ``out`` (replaced).

    Args:
        run_dir: a training run folder (``runs/<experiment>/<id>``) or a potential package.
        int8: store the quantisable weights as int8 (:mod:`mlip_distill.models.quantize`).
        compiled: also write the compiled student (``model.pt2``).
        speed: the student's measured speed, for ``potential.json`` and the card's Speed
            section (:func:`mlip_distill.model_card.call_speed` makes one); default what the
            run recorded, or what `mlip-distill distill` measured for it.
    Returns:
        ``out``.
    Raises:
        PotentialError: ``run_dir`` holds no package, or one that fails its checks.
    """
    run_dir, out = Path(run_dir), Path(out)
    source = package_of_run(run_dir)
    potential = load_potential(source)
    metadata = {**potential.metadata, "exported_from": str(source.resolve())}
    extra = _carried_over(metadata, speed or metadata.get("speed") or _pipeline_speed(run_dir))

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


def refresh_package(package: str | Path, speed: Mapping[str, Any] | None = None) -> Path:
    """Rewrite the ``potential.json`` and ``MODEL_CARD.md`` of an exported ``package`` in place,
    from its own recorded facts, as :func:`export_run` writes them now; ``speed`` replaces the
    recorded speed when given. The weights and compiled model stay byte for byte as they are
    (their checksums are checked first), and so does what was added below the generated card
    (a benchmark's results, say).

    Raises:
        PotentialError: ``package`` is not a package, or one that fails its checks.
    """
    package = Path(package)
    metadata = load_potential(package).metadata
    compiled = metadata.get("compiled")
    if compiled and file_sha256(package / compiled["file"]) != compiled.get("sha256"):
        raise PotentialError(f"{package / compiled['file']}: checksum differs from {METADATA}; refusing to refresh")
    carried = _carried_over(metadata, speed or metadata.get("speed"))
    saved = {key: value for key, value in metadata.items() if key in _WRITTEN_ON_SAVE and key not in _FILE_CHECKS}
    files = {key: metadata[key] for key in _FILE_CHECKS if key in metadata}
    refreshed = write_metadata(package, {**saved, **carried, **files})
    card = package / CARD
    added = _added_sections(card.read_text()) if card.is_file() else ""
    card.write_text(model_card(refreshed, curves=[name for name in CURVES if (package / name).is_file()]) + added)
    return package


def portable_paths(value: Any, run_folder: str | None = None) -> Any:
    """``value`` (parsed JSON) with every absolute path made relative: a path inside
    ``run_folder`` (the training run's folder) relative to the folder above it
    (``<run>/stages/1-distill``), any other just the file's name (``labels.h5``), so that a
    package names its files without the folders of the machine that trained it."""
    if isinstance(value, Mapping):
        return {key: portable_paths(item, run_folder) for key, item in value.items()}
    if isinstance(value, list):
        return [portable_paths(item, run_folder) for item in value]
    match = _ABSOLUTE_PATH.fullmatch(value) if isinstance(value, str) and "://" not in value else None
    if not match:
        return value
    path = PurePosixPath(match[2])
    if run_folder and PurePosixPath(run_folder).is_absolute() and path.is_relative_to(run_folder):
        relative = str(PurePosixPath(PurePosixPath(run_folder).name) / path.relative_to(run_folder))
    else:
        relative = path.name
    return (match[1] or "") + relative


def _carried_over(metadata: Mapping[str, Any], speed: Mapping[str, Any] | None) -> dict[str, Any]:
    """What a package keeps of ``metadata`` besides what :func:`save_potential` writes: with the
    label file's own facts while it is still where training read it, each error's number of
    structures where the run recorded its validation split, ``speed``, and portable paths."""
    extra = {key: value for key, value in metadata.items() if key not in _WRITTEN_ON_SAVE}
    data = {**metadata.get("data", {}), **_label_file_facts(metadata.get("data", {}))}
    extra["data"] = data
    if metadata.get("errors"):
        extra["errors"] = _with_counts(metadata["errors"], data, metadata.get("training", {}).get("stages") or [])
    if speed:
        extra["speed"] = dict(speed)
    return portable_paths(extra, metadata.get("training", {}).get("run_dir"))


def _with_counts(errors: Mapping[str, Any], data: Mapping[str, Any], stages: list[Mapping[str, Any]]) -> dict:
    """``errors`` with ``n_structures`` where it is missing and the run recorded the validation
    split they were measured on: a stage's validation structures, or the run's ``n_valid``."""
    valid_of_stage = {stage.get("number"): len(stage["valid_indices"]) for stage in stages if "valid_indices" in stage}
    counted = {}
    for name, metrics in errors.items():
        stage = _STAGE_ERRORS.match(name)
        if "n_structures" in metrics:
            count = None
        elif stage:
            count = valid_of_stage.get(int(stage[1]))
        else:
            count = data.get("n_valid") if name == f"valid_vs_{data.get('source')}" else None
        counted[name] = {**metrics, "n_structures": count} if count is not None else dict(metrics)
    return counted


def _added_sections(card: str) -> str:
    """What was added below the generated card (whose last section is Files), from the first
    added heading on; empty when nothing was."""
    files = card.find("\n## Files\n")
    added = card.find("\n## ", files + 1) if files >= 0 else -1
    return card[added:] if added >= 0 else ""


def _label_file_facts(data: dict[str, Any]) -> dict[str, Any]:
    """What the label file says about itself, when it is still where training read it."""
    path = data.get("path")
    if "label_file" in data or not path or not Path(path).is_absolute() or not Path(path).is_file():
        return {}
    try:
        with LabelStore(path) as store:
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
