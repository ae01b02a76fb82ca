"""`mlip-distill train`: compose the Hydra config, train a student, export its potential."""

from __future__ import annotations

import logging
import os
import secrets
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import EarlyStopping

from ..checksums import file_sha256
from ..data.stats import DatasetStatistics
from ..data.store import LabelStore
from ..evaluate import evaluate_model
from ..losses import build_loss
from ..models import build_model
from ..models.quantize import is_prepared, remove_qat
from ..package import git_commit, library_versions, save_potential
from .calibration import refit_e0
from .callbacks import EpochSummary
from .checkpoint import (
    AtomicModelCheckpoint,
    RunRecord,
    config_differences,
    last_checkpoint,
    latest_resumable_run,
    model_state_from_checkpoint,
    read_checkpoint,
)
from .curves import CurveRecorder, write_curves
from .datamodule import LabelFileDataModule
from .ema import WeightAverage
from .errors import ConfigError
from .loggers import build_loggers
from .module import StudentModule
from .precision import MIXED, make_autocast_safe

CONFIG_MODULE = "mlip_distill.configs"
# rank 0 passes its run directory to the data-parallel processes Lightning starts
RUN_DIR_ENV = "MLIP_DISTILL_RUN_DIR"


def _quieten_lightning() -> None:
    """Keep Lightning's banners and tips out of the output; warnings still show."""
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning_fabric").setLevel(logging.WARNING)
    # config.yaml is written into the run folder before the CSV logger starts there
    warnings.filterwarnings("ignore", message="Experiment logs directory .* exists and is not empty")


def compose_config(
    overrides: Sequence[str] = (), config_dir: str | Path | None = None, return_hydra_config: bool = False
) -> DictConfig:
    """The training config: the packaged ``train.yaml`` with ``overrides`` applied.

    Args:
        overrides: Hydra overrides such as ``experiment=cu_emt`` or ``trainer.max_epochs=5``.
        config_dir: a folder of the user's own config groups, searched before the packaged ones.
        return_hydra_config: keep Hydra's own ``hydra`` node (which option each group chose).
    """
    overrides = list(overrides)
    if config_dir is not None:
        directory = Path(config_dir).resolve()
        if not directory.is_dir():
            raise FileNotFoundError(f"--config-dir {config_dir}: no such folder")
        overrides.append(f"hydra.searchpath=[file://{directory}]")
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=return_hydra_config)


def new_run_dir(experiment: str, root: str | Path = "runs") -> Path:
    """``runs/<experiment>/<date>-<id>/``, unique even for runs started in the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / experiment / f"{stamp}-{secrets.token_hex(3)}"


@dataclass
class TrainResult:
    """Where a run went and what it reached (validation metrics in meV units), and the learning
    rate of its last optimiser step."""

    run_dir: Path
    potential_dir: Path
    metrics: dict[str, float]
    seconds: float
    valid_indices: list[int]
    final_lr: float | None = field(default=None)


def _active_terms(config: DictConfig) -> dict[str, dict[str, Any]]:
    """The loss config's terms with a non-zero weight."""
    spec = OmegaConf.to_container(config.loss, resolve=True)
    return {name: dict(options) for name, options in spec.items() if float(options.get("weight", 1.0)) != 0}


def _complete_loss_spec(terms: dict[str, dict[str, Any]], datamodule: LabelFileDataModule) -> dict[str, dict]:
    """Fill in what the label file knows: the teacher's E0 for per-atom energies and the irreps
    of the teacher's feature layer."""
    with LabelStore(datamodule.path) as store:
        if "atomic_energies" in terms and terms["atomic_energies"].get("teacher_e0") is None:
            terms["atomic_energies"]["teacher_e0"] = store.isolated_atoms(datamodule.source) or None
        if "features" in terms and terms["features"].get("teacher_irreps") is None:
            layers = store.feature_layers(datamodule.source)
            terms["features"]["teacher_irreps"] = layers.get(terms["features"]["teacher_layer"])
    return terms


def _scales(stats, datamodule: LabelFileDataModule, terms: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each loss term's unit of error from the training split's statistics.

    The energy unit is the spread (standard deviation) of the per-atom energy after E0, not its
    RMS: the RMS is dominated by the cohesive energy, which a constant learns, and would make
    the energy term almost weightless.
    """
    energy_spread = max(max(stats.energy_rms_per_atom**2 - stats.energy_mean_per_atom**2, 0.0) ** 0.5, 1e-3)
    scales = {"energy": energy_spread, "atomic_energies": energy_spread, "forces": max(stats.force_rms, 1e-3)}
    if "stress" in terms:
        scales["stress"] = max(datamodule.label_rms("stress") or 1e-3, 1e-4)
    if "hessian" in terms:
        scales["hessian"] = datamodule.label_rms("hvp_hv") or 1.0
    if "features" in terms:
        scales["features"] = datamodule.label_rms(f"features/{terms['features']['teacher_layer']}") or 1.0
    return scales


def _run_dir_and_checkpoint(config: DictConfig) -> tuple[Path, Path | None]:
    """The run directory, and the checkpoint to resume from (``resume``: null, auto or a path)."""
    resume = config.get("resume")
    if config.run_dir:
        run_dir = Path(config.run_dir)
    elif os.environ.get(RUN_DIR_ENV) and os.environ.get("LOCAL_RANK", "0") != "0":
        run_dir = Path(os.environ[RUN_DIR_ENV])  # a data-parallel process started by rank 0
    elif resume == "auto":
        run_dir = latest_resumable_run(Path("runs") / config.experiment_name) or new_run_dir(config.experiment_name)
    else:
        run_dir = new_run_dir(config.experiment_name)
    if resume in (None, ""):
        return run_dir, None
    if resume == "auto":
        return run_dir, last_checkpoint(run_dir)
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint")
    return run_dir, path


def _provenance(config: DictConfig, run_id: str, data_path: Path) -> dict[str, Any]:
    """What a checkpoint records about its run: id, config, code, libraries and data."""
    return {
        "run_id": run_id,
        "config": OmegaConf.to_container(config, resolve=True),
        "git_commit": git_commit(),
        # plain strings (torch's version is a str subclass that weights_only loading refuses)
        "versions": {name: str(v) for name, v in {**library_versions(), "pytorch_lightning": pl.__version__}.items()},
        "data": {"path": str(data_path.resolve()), "sha256": file_sha256(data_path)},
    }


# settings that may change on resuming without changing what is being trained
RESUMABLE_CHANGES = ("resume", "run_dir", "trainer.max_epochs", "trainer.max_time", "trainer.enable_progress_bar")


def _warn_on_changed_settings(checkpoint_path: Path, config: DictConfig) -> None:
    """Warn when a run resumes with other settings than the checkpoint was trained with."""
    saved = read_checkpoint(checkpoint_path).get("run", {}).get("config")
    if saved is None:
        return
    changed = [k for k in config_differences(saved, OmegaConf.to_container(config, resolve=True))
               if k not in RESUMABLE_CHANGES]
    if changed:
        logging.getLogger("mlip_distill.training").warning(
            "resuming %s with settings changed since it was written: %s", checkpoint_path, ", ".join(changed))


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _run_callbacks(config: DictConfig, run_dir: Path, provenance: dict[str, Any], progress_bar: bool):
    """The stack's callbacks: checkpoints (best, last, every N epochs), provenance and random
    states, curves, weight average, early stopping and the per-epoch summary line."""
    best_and_last = AtomicModelCheckpoint(
        dirpath=run_dir / "checkpoints", filename="best", monitor=config.monitor, mode="min", save_last=True
    )
    callbacks: list[pl.Callback] = [best_and_last, RunRecord(provenance), CurveRecorder()]
    every = int(config.checkpoints.every_n_epochs or 0)
    if every:
        callbacks.append(AtomicModelCheckpoint(
            dirpath=run_dir / "checkpoints", filename="epoch{epoch:04d}", auto_insert_metric_name=False,
            every_n_epochs=every, save_top_k=-1,
        ))
    if config.ema.enabled:
        callbacks.append(WeightAverage(config.ema.decay))
    if config.early_stopping.patience is not None:
        callbacks.append(EarlyStopping(config.monitor, min_delta=config.early_stopping.min_delta,
                                       patience=config.early_stopping.patience, mode="min"))
    if not progress_bar:
        callbacks.append(EpochSummary())
    return callbacks


def _of_type(callbacks: list[pl.Callback], kind: type):
    return next((c for c in callbacks if isinstance(c, kind)), None)


def require_complete(config: DictConfig) -> None:
    """Raise :class:`ConfigError` naming the required settings ``config`` leaves unset."""
    missing = sorted(OmegaConf.missing_keys(config))
    if missing:
        raise ConfigError(f"missing required setting(s) {', '.join(missing)}: give them as key=value, e.g. data.path=labels.h5")


class TrainingSetup(NamedTuple):
    """What a config trains: the Trainer's options (precision resolved), the data, their
    statistics, the student and the LightningModule that trains it."""

    trainer_options: dict[str, Any]
    datamodule: LabelFileDataModule
    stats: DatasetStatistics
    model_name: str
    model: torch.nn.Module
    module: StudentModule


def build_training(config: DictConfig) -> TrainingSetup:
    """The data module, student, loss and LightningModule of ``config``, untrained (also used
    by the sanity checks, so that they check what a run trains)."""
    trainer_options: dict[str, Any] = OmegaConf.to_container(config.trainer, resolve=True)
    float64 = str(trainer_options.get("precision")) in ("64", "64-true")
    if float64:
        trainer_options["precision"] = "64-true"
    data_options = OmegaConf.to_container(config.data, resolve=True)
    terms = _active_terms(config)
    datamodule = LabelFileDataModule(
        cutoff=config.model.cutoff,
        dtype=torch.float64 if float64 else torch.float32,
        features=(terms["features"]["teacher_layer"],) if "features" in terms else (),
        hessian="hessian" in terms,
        shuffle_seed=config.seed,
        **data_options,
    )
    stats = datamodule.statistics(config.e0_from)
    model_options = OmegaConf.to_container(config.model, resolve=True)
    model_name = model_options.pop("name")
    model = build_model(
        model_name,
        elements=sorted(stats.element_counts),
        e0=stats.e0,
        scale=stats.force_rms,
        avg_num_neighbors=stats.mean_neighbours,
        **model_options,
    )
    if str(trainer_options.get("precision")) in (*MIXED, "bf16", "16"):
        make_autocast_safe(model)
    terms = _complete_loss_spec(terms, datamodule)
    loss = build_loss(terms, _scales(stats, datamodule, terms), model=model)
    module = StudentModule(model, loss, config.optimizer, config.scheduler, guards=config.guards)
    return TrainingSetup(trainer_options, datamodule, stats, model_name, model, module)


def train(config: DictConfig, callbacks: list[pl.Callback] | None = None) -> TrainResult:
    """Train a student as ``config`` says and write its run directory.

    The run directory ``runs/<experiment>/<date>-<id>/`` (its name is the run id) holds
    ``config.yaml`` (the full resolved config), ``metrics.csv`` and the other loggers' files,
    ``checkpoints/`` (best, last and every N epochs, each with optimiser, scheduler, weight
    average, scaler and random states and the run's provenance), ``curves.csv`` and
    ``curves.png`` (one row per epoch) and ``potential/`` (the exported package: the weight
    average, or the weights, of the best epoch on the monitored validation metric).
    ``callbacks`` are extra Lightning callbacks (a hyperparameter search's pruning, say).
    """
    require_complete(config)
    if config.get("stages"):
        from .stages import train_stages

        return train_stages(config, callbacks)
    run_dir, resume_from = _run_dir_and_checkpoint(config)
    return train_in(config, run_dir, resume_from, callbacks)


def train_in(
    config: DictConfig,
    run_dir: Path,
    resume_from: Path | None,
    callbacks: list[pl.Callback] | None = None,
    prepare: Callable[[TrainingSetup], list[pl.Callback]] | None = None,
    extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Train in ``run_dir`` (continuing from the checkpoint ``resume_from`` when given) as
    :func:`train` describes. ``prepare`` is called with the untrained setup before the trainer
    starts (to load weights, freeze parameters, ...) and returns more callbacks; ``extra`` is
    added to the exported package's metadata. A student prepared for quantisation-aware
    training is exported with int8 weights."""
    start = time.perf_counter()
    _quieten_lightning()
    pl.seed_everything(config.seed, workers=True, verbose=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ[RUN_DIR_ENV] = str(run_dir)
    _atomic_write(run_dir / "config.yaml", OmegaConf.to_yaml(config, resolve=True))

    setup = build_training(config)
    trainer_options, datamodule, stats, model_name, model, module = setup
    prepared = prepare(setup) if prepare is not None else []
    if resume_from is not None:
        _warn_on_changed_settings(resume_from, config)

    provenance = _provenance(config, run_dir.name, datamodule.path)
    stack = _run_callbacks(config, run_dir, provenance, trainer_options.get("enable_progress_bar", True))
    trainer = pl.Trainer(
        default_root_dir=str(run_dir),
        logger=build_loggers(config.get("logger"), run_dir, run_dir.name),
        callbacks=[*stack, *prepared, *(callbacks or [])],
        inference_mode=False,
        enable_model_summary=False,
        **trainer_options,
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    final_lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None
    if not trainer.is_global_zero:  # data-parallel processes end with the same model: rank 0 exports it
        return TrainResult(run_dir, run_dir / "potential", {}, time.perf_counter() - start, datamodule.valid_store_indices)

    checkpoint, average = _of_type(stack, AtomicModelCheckpoint), _of_type(stack, WeightAverage)
    if checkpoint.best_model_path:
        model.load_state_dict(model_state_from_checkpoint(checkpoint.best_model_path))
    elif average is not None:
        average.swap(module)
    model.eval()
    if config.e0_from == "fit":
        refit_e0(model, datamodule.train_dataloader())
    metrics = evaluate_model(model, datamodule.val_dataloader())
    int8 = is_prepared(model)  # the fake-quantised errors above are those of the int8 weights
    if int8:
        remove_qat(model)
    with LabelStore(datamodule.path) as store:
        teacher = store.provenance(datamodule.source) if datamodule.source in store.sources() else {}
    potential_dir = save_potential(
        model,
        model_name,
        run_dir / "potential",
        extra={
            "teacher": teacher,
            "data": {**datamodule.describe(), "statistics": stats.as_dict(), "sha256": provenance["data"]["sha256"]},
            "errors": {f"valid_vs_{datamodule.source}": metrics},
            "training": {"config": provenance["config"], "run_dir": str(run_dir), "run_id": run_dir.name},
            **(extra or {}),
        },
        int8=int8,
    )
    rows = _of_type(stack, CurveRecorder).rows
    if trainer.is_global_zero and rows:
        write_curves(rows, (run_dir, potential_dir))
    return TrainResult(run_dir, potential_dir, metrics, time.perf_counter() - start, datamodule.valid_store_indices,
                       final_lr)
