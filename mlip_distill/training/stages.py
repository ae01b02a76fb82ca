"""Multi-stage training: the ``stages`` list of a training config, run one after another.

Each stage is a training run of its own in ``<run>/stages/<n>-<name>/`` (checkpoints, curves,
``potential/``) whose config is the previous stage's with the stage's settings merged in; its
``loss`` replaces the previous loss (a stage lists exactly its terms), and a ``scheduler`` that
names a schedule replaces the previous schedule. Besides config sections a stage has:

=============  =============================================================================
name           its name (required)
optional       skip the stage, with a notice, when the label file lacks its ``data.source``
freeze         parameter-name prefixes of the student that this stage does not train
qat            train with int8 fake quantisation; the stage exports int8 weights
ramp_steps     optimiser steps over which loss weights move from the previous stage's
=============  =============================================================================

A stage starts from the previous stage's exported weights. When its label source differs,
the per-element E0s are refitted first: DFT and a teacher differ mostly by a constant per
element, which the network should not have to learn. The learning rate warms up from the
previous stage's final rate (over the stage's ``scheduler.warmup_steps``), not from zero.

A finished stage writes ``stage.json``. Resumed with ``resume=auto``, a run skips its finished
stages and continues the running one from its last checkpoint. At the end the last stage's
potential becomes ``<run>/potential/``, with the errors of every stage, and ``curves.csv`` and
``curves.png`` of all stages (a ``stage`` column; epochs and steps count on across stages).
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf, open_dict

from ..data.store import LabelStore
from ..models.quantize import prepare_qat
from ..package import load_potential, save_potential
from .calibration import refit_e0
from .callbacks import LossWeightRamp
from .checkpoint import last_checkpoint
from .curves import read_curves_csv, write_curves
from .errors import ConfigError
from .run import TrainResult, TrainingSetup, _atomic_write, _run_dir_and_checkpoint, train_in

RECORD = "stage.json"
STAGE_OPTIONS = ("name", "optional", "freeze", "qat", "ramp_steps")


@dataclass
class StageRecord:
    """What a finished stage leaves for the next: where its potential is, the label source it
    learnt, its final learning rate and loss weights, its validation errors (meV units) and
    validation structures (label-file indices)."""

    number: int
    name: str
    folder: str
    source: str
    final_lr: float | None
    loss_weights: dict[str, float]
    metrics: dict[str, float]
    seconds: float
    valid_indices: list[int]


def _stage_options(spec: dict[str, Any], number: int) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The stage's name, its own options (``STAGE_OPTIONS``) and its config settings."""
    if not isinstance(spec, dict) or not spec.get("name"):
        raise ConfigError(f"stages[{number - 1}]: each stage is a mapping with a name, e.g. {{name: distill, ...}}")
    options = {key: spec[key] for key in STAGE_OPTIONS if key in spec}
    settings = {key: value for key, value in spec.items() if key not in STAGE_OPTIONS}
    return str(spec["name"]), options, settings


def stage_config(previous: DictConfig, settings: dict[str, Any], where: str, folder: Path) -> DictConfig:
    """The training config of one stage: ``previous`` with ``settings`` merged in (see the
    module's docstring), training in ``folder``."""
    config = copy.deepcopy(previous)
    unknown = [key for key in settings if key not in config]
    if unknown:
        raise ConfigError(f"{where}: unknown setting(s) {', '.join(unknown)}; a stage sets config sections "
                          f"such as data, loss, optimizer, scheduler, trainer, or {', '.join(STAGE_OPTIONS)}")
    settings = dict(settings)
    with open_dict(config):
        if "loss" in settings:
            config.loss = settings.pop("loss")
        if "name" in (settings.get("scheduler") or {}):
            config.scheduler = settings.pop("scheduler")
        config.merge_with(settings)
        config.stages = None
        config.run_dir = str(folder)
        config.resume = None
    return config


def _freeze(model, prefixes: Sequence[str], where: str) -> None:
    parameters = dict(model.named_parameters())
    for prefix in prefixes:
        matched = [name for name in parameters if name.startswith(prefix)]
        if not matched:
            raise ConfigError(f"{where}: freeze prefix '{prefix}' matches no parameter of the student "
                              f"(they begin {', '.join(sorted({n.split('.')[0] for n in parameters}))})")
        for name in matched:
            parameters[name].requires_grad_(False)


def _preparation(config: DictConfig, options: dict[str, Any], previous: StageRecord | None, where: str, holder: dict):
    """The ``prepare`` hook of :func:`~mlip_distill.training.run.train_in` for one stage."""

    def prepare(setup: TrainingSetup) -> list[pl.Callback]:
        holder["setup"] = setup
        model, module = setup.model, setup.module
        if previous is not None:
            earlier = load_potential(Path(previous.folder) / "potential").model
            model.load_state_dict(earlier.state_dict())
            model.set_e0(earlier.e0)
            if previous.source != config.data.source:
                with LabelStore(setup.datamodule.path) as store:
                    isolated = store.isolated_atoms(config.data.source)
                # DFT and a teacher can differ by thousands of eV per atom in absolute energy; on frames of
                # one molecule the fit alone cannot say which element carries that, the isolated atoms can
                start = isolated if set(model.elements) <= set(isolated) else None
                new = refit_e0(model, setup.datamodule.train_dataloader(), start=start)
                print(f"{where}: labels change from {previous.source} to {config.data.source}; E0 refitted to "
                      + ", ".join(f"Z={z}: {earlier.e0[z]:.4f} -> {e:.4f} eV" for z, e in new.items()), flush=True)
            if previous.final_lr is not None:
                module.scheduler_options["warmup_start_lr"] = previous.final_lr
        _freeze(model, options.get("freeze") or (), where)
        if options.get("qat"):
            prepare_qat(model)
        start = previous.loss_weights if previous is not None else {
            term.name: weight for term, weight in zip(module.loss.terms, module.loss.weights)}
        return [LossWeightRamp(module.loss, start, int(options.get("ramp_steps") or 0) if previous else 0)]

    return prepare


def _has_source(config: DictConfig) -> bool:
    with LabelStore(config.data.path) as store:
        return config.data.source in store.sources()


def _run_stage(config, options, previous, where, folder, resume, callbacks, number, name) -> StageRecord:
    holder: dict[str, TrainingSetup] = {}
    resume_from = last_checkpoint(folder) if resume == "auto" else None
    result = train_in(config, folder, resume_from, callbacks, prepare=_preparation(config, options, previous, where, holder))
    loss = holder["setup"].module.loss
    record = StageRecord(number, name, str(folder), str(config.data.source), result.final_lr,
                         {term.name: weight for term, weight in zip(loss.terms, loss.weights)},
                         result.metrics, result.seconds, result.valid_indices)
    tmp = folder / f"{RECORD}.tmp"
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n")
    os.replace(tmp, folder / RECORD)
    return record


def train_stages(config: DictConfig, callbacks: list[pl.Callback] | None = None) -> TrainResult:
    """Run the stages of ``config.stages`` in order (see the module's docstring) and export the
    last one's student as the run's potential."""
    start = time.perf_counter()
    resume = config.get("resume")
    if resume not in (None, "", "auto"):
        raise ConfigError(f"resume={resume}: a multi-stage run resumes with resume=auto (and its run_dir)")
    if str(config.trainer.devices) != "1":
        raise ConfigError(f"trainer.devices={config.trainer.devices}: stages run in one process (data-parallel "
                          "stages are not supported yet)")
    run_dir, _ = _run_dir_and_checkpoint(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(run_dir / "config.yaml", OmegaConf.to_yaml(config, resolve=True))
    current = copy.deepcopy(config)
    records: list[StageRecord] = []
    for number, spec in enumerate(OmegaConf.to_container(config.stages, resolve=True), start=1):
        name, options, settings = _stage_options(spec, number)
        where = f"stage {number} ({name})"
        folder = run_dir / "stages" / f"{number}-{name}"
        stage = stage_config(current, settings, where, folder)
        if not _has_source(stage):
            if not options.get("optional"):
                raise ConfigError(f"{where}: the label file {stage.data.path} has no '{stage.data.source}' labels")
            print(f"{where}: skipped, the label file has no '{stage.data.source}' labels", flush=True)
            continue
        if resume == "auto" and (folder / RECORD).is_file():
            records.append(StageRecord(**json.loads((folder / RECORD).read_text())))
            print(f"{where}: finished earlier, not run again", flush=True)
        else:
            print(f"{where}: training on {stage.data.source} labels", flush=True)
            records.append(_run_stage(stage, options, records[-1] if records else None, where, folder,
                                      resume, callbacks, number, name))
        current = stage
    if not records:
        raise ConfigError("stages: every stage was skipped; nothing was trained")
    potential_dir = _export(config, run_dir, records)
    last = records[-1]
    return TrainResult(run_dir, potential_dir, last.metrics, time.perf_counter() - start, last.valid_indices,
                       last.final_lr)


def _export(config: DictConfig, run_dir: Path, records: list[StageRecord]) -> Path:
    """``<run>/potential``: the last stage's student with every stage's errors and the curves
    of all stages."""
    first = load_potential(Path(records[0].folder) / "potential").metadata
    last = load_potential(Path(records[-1].folder) / "potential")
    metadata = last.metadata
    errors = {}
    for record in records:
        stage_errors = json.loads((Path(record.folder) / "potential" / "potential.json").read_text()).get("errors", {})
        errors.update({f"stage {record.number} {record.name}: {key}": value for key, value in stage_errors.items()})
    extra = {
        "teacher": first.get("teacher", {}),
        "data": metadata.get("data", {}),
        "errors": errors,
        "training": {"config": OmegaConf.to_container(config, resolve=True), "run_dir": str(run_dir),
                     "run_id": run_dir.name, "stages": [asdict(record) for record in records]},
    }
    potential_dir = save_potential(last.model, metadata["model"]["name"], run_dir / "potential", extra,
                                   int8=metadata.get("quantization") is not None)
    rows = combined_curves(records)
    names = [stage["name"] for stage in OmegaConf.to_container(config.stages, resolve=True)]
    write_curves(rows, (run_dir, potential_dir), stage_names=names)
    return potential_dir


def combined_curves(records: Sequence[StageRecord]) -> list[dict[str, float]]:
    """The stages' curves one after another, each row with its ``stage`` number, epochs and
    optimiser steps counted on from the previous stage's."""
    rows: list[dict[str, float]] = []
    for record in records:
        epoch_offset = rows[-1]["epoch"] + 1 if rows else 0
        step_offset = rows[-1]["step"] if rows else 0
        for row in read_curves_csv(Path(record.folder) / "curves.csv"):
            rows.append({**row, "stage": record.number, "epoch": row["epoch"] + epoch_offset, "step": row["step"] + step_offset})
    return rows
