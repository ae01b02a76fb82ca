"""`mlip-distill train --sanity`: the checks a careful engineer runs before a long job.

===============================  =====================================================================
check                            passes when
===============================  =====================================================================
loss falls                       the mean training loss of the last 10 of the first 100 steps is at
                                 least 10 % below that of the first 10 (the configured optimiser,
                                 schedule and data order)
every loss term has gradient     each term of the loss config, weighted, gives the student's
                                 parameters a finite, non-zero gradient on a training batch
validation = direct evaluation   the ``val_*`` metrics Lightning logs equal those of
                                 :func:`~mlip_distill.evaluate.evaluate_model` on the same weights
checkpoint resumes exactly       a run resumed from a checkpoint ends in the same state (weights,
                                 optimiser, schedule, weight average) as one never interrupted
batching does not change loss    the loss over the same structures in one batch and in batches of
                                 1-3 agree: errors are normalised per atom and per structure, never
                                 by a batch's own statistics
peak memory                      the process's peak memory in a training step on the largest batch
                                 (GPU memory when training on one, else resident CPU memory) stays
                                 under 80 % of what it can have; if not, a smaller batch with
                                 gradient accumulation is suggested
===============================  =====================================================================

The checks train on the run's own data and config, in a temporary folder, for about 130 steps:
epochs are cut to at most 25 steps, so that the checkpoint check resumes at an epoch boundary.
"""

from __future__ import annotations

import copy
import math
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import psutil
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from torch_geometric.data import Batch

from ..evaluate import evaluate_model
from .ema import WeightAverage
from .run import TrainingSetup, _quieten_lightning, build_training, require_complete

STEPS = 100  # steps over which the loss must fall
WINDOW = 10  # steps averaged at either end of them
REQUIRED_FALL = 0.1  # relative fall of the loss over STEPS
STEPS_PER_EPOCH = 25  # sanity epochs are cut to this many steps
BATCHING_STRUCTURES = 24  # structures of the batching check
BATCHING_TOLERANCE = 1e-4  # relative; float32 sums in another order differ by ~1e-7
METRIC_TOLERANCE = 1e-4  # relative
MEMORY_FRACTION = 0.8  # of the available memory a step may use
# Trainer settings that change what a step computes; the rest (epochs, loggers, strategy) are the run's
STEP_SETTINGS = ("accelerator", "precision", "gradient_clip_val", "gradient_clip_algorithm", "accumulate_grad_batches")
# terms whose entries compare the conformers that share a batch, so depend on the batching by design
BATCH_COMPARING_TERMS = ("boltzmann_kl",)


@dataclass
class Check:
    """One check's outcome: its name, whether it passed, and the numbers behind it."""

    name: str
    passed: bool
    detail: str


@dataclass
class SanityReport:
    """The outcome of every check."""

    title: str
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    def table(self) -> str:
        """A printable pass/fail table, one check per row, and a verdict."""
        width = max(len(check.name) for check in self.checks)
        lines = [self.title, f"  {'result':<6}  {'check':<{width}}  detail"]
        lines += [f"  {'PASS' if c.passed else 'FAIL':<6}  {c.name:<{width}}  {c.detail}" for c in self.checks]
        failed = sum(not check.passed for check in self.checks)
        lines.append("all checks passed" if not failed else f"{failed} of {len(self.checks)} checks failed")
        return "\n".join(lines)


def run_sanity_checks(config: DictConfig, steps: int = STEPS) -> SanityReport:
    """Run every check on the student, loss and data of ``config`` (see the module docstring)."""
    require_complete(config)
    _quieten_lightning()
    pl.seed_everything(config.seed, workers=True, verbose=False)
    setup = build_training(config)
    initial = copy.deepcopy(setup.module)
    steps_per_epoch = min(len(setup.datamodule.train_dataloader()), STEPS_PER_EPOCH)
    epochs = math.ceil(steps / steps_per_epoch)
    # first, while the allocator holds no memory of earlier steps
    memory = _peak_memory(copy.deepcopy(initial), setup)
    checks = []
    with tempfile.TemporaryDirectory(prefix="mlip-distill-sanity-") as folder, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(ReduceLROnPlateau conditioned on metric|does not have many "
                                                  "workers|Be aware that when using `ckpt_path`).*")
        folder = Path(folder)
        # one uninterrupted run of epochs + 1 epochs, saving a checkpoint after `epochs` of them
        uninterrupted = copy.deepcopy(initial)
        losses = _StepLosses()
        saved = ModelCheckpoint(dirpath=folder, filename="epoch{epoch}", auto_insert_metric_name=False,
                                every_n_epochs=epochs, save_top_k=-1, save_on_train_epoch_end=True)
        first = _fit(setup, config, uninterrupted, epochs + 1, steps_per_epoch, folder, [losses, saved])
        checks.append(_loss_falls(losses, steps, float(config.optimizer.lr)))
        checks.append(_gradients_reach_parameters(config, uninterrupted, setup))
        checks.append(_validation_matches_evaluation(setup, config, uninterrupted, folder))
        resumed = copy.deepcopy(initial)
        second = _fit(setup, config, resumed, epochs + 1, steps_per_epoch, folder, [],
                      resume_from=folder / f"epoch{epochs - 1}.ckpt")
        checks.append(_same_state(first, second, steps_per_epoch))
    checks.append(_batching_invariance(uninterrupted, setup))
    checks.append(memory)
    data = setup.datamodule.describe()
    title = (f"Sanity checks: {setup.model_name} student, {data['n_train']} training and {data['n_valid']} "
             f"validation structures of {data['path']}")
    return SanityReport(title, checks)


class _StepLosses(pl.Callback):
    """The training loss of every step (skipped steps left out) and the learning rate after each."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self.learning_rates: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx: int) -> None:
        if outputs is not None:
            self.values.append(float(outputs["loss"]))
            self.learning_rates.append(float(trainer.optimizers[0].param_groups[0]["lr"]))


def _trainer(setup: TrainingSetup, config: DictConfig, epochs: int, steps_per_epoch: int, folder: Path,
             callbacks: list[pl.Callback], validate: bool = False) -> pl.Trainer:
    """One process, the run's step settings and weight average, no loggers; or, to validate,
    the weights as they are."""
    options = {key: value for key, value in setup.trainer_options.items() if key in STEP_SETTINGS}
    if config.ema.enabled and not validate:
        callbacks = [*callbacks, WeightAverage(config.ema.decay)]
    return pl.Trainer(
        default_root_dir=str(folder), max_epochs=epochs, limit_train_batches=steps_per_epoch,
        limit_val_batches=1.0 if validate else 0, num_sanity_val_steps=0, devices=1, logger=False,
        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks), callbacks=callbacks,
        enable_progress_bar=False, enable_model_summary=False, inference_mode=False, **options,
    )


@dataclass
class _EndState:
    """What a sanity run ends with: its checkpoint and its weight average (None without one)."""

    checkpoint: dict[str, Any]
    average: dict[str, torch.Tensor] | None


def _fit(setup, config, module, epochs, steps_per_epoch, folder, callbacks, resume_from: Path | None = None) -> _EndState:
    """Train ``module`` for ``epochs`` epochs (continuing from ``resume_from``) and return its end state."""
    trainer = _trainer(setup, config, epochs, steps_per_epoch, folder, callbacks)
    trainer.fit(module, datamodule=setup.datamodule, ckpt_path=resume_from, weights_only=True)
    path = folder / ("resumed.ckpt" if resume_from else "uninterrupted.ckpt")
    trainer.save_checkpoint(path)
    average = next((c.average for c in trainer.callbacks if isinstance(c, WeightAverage)), None)
    return _EndState(torch.load(path, map_location="cpu", weights_only=True), average)


def _loss_falls(record: _StepLosses, steps: int, learning_rate: float) -> Check:
    name = f"loss falls over the first {steps} steps"
    losses = record.values[:steps]
    if len(losses) < steps:
        return Check(name, False, f"only {len(losses)} of {steps} steps had a finite loss")
    first, last = float(np.mean(losses[:WINDOW])), float(np.mean(losses[-WINDOW:]))
    detail = f"mean loss of steps 1-{WINDOW} {first:.4g}, of steps {steps - WINDOW + 1}-{steps} {last:.4g}"
    if np.isfinite(last) and last <= (1 - REQUIRED_FALL) * first:
        return Check(name, True, detail)
    reached = record.learning_rates[steps - 1]
    if reached < 0.5 * learning_rate:
        return Check(name, False, f"{detail}; the warmup has brought the learning rate only to {reached:.2g} of "
                                  f"{learning_rate:.2g}: rerun with scheduler.warmup_steps=0 to test data and loss alone")
    return Check(name, False, f"{detail} at learning rate {reached:.2g}: check optimizer.lr, the loss weights and the data")


def _gradients_reach_parameters(config: DictConfig, module, setup: TrainingSetup) -> Check:
    """Gradient norm of each weighted loss term with respect to the student's parameters."""
    name = "every loss term has gradient"
    spec = OmegaConf.to_container(config.loss, resolve=True)
    problems = [f"{term}: weight 0, dropped from the loss" for term, options in spec.items()
                if float(options.get("weight", 1.0)) == 0]
    module.train()
    batch = next(iter(setup.datamodule.train_dataloader())).to(module.device)
    prediction = module._predict(batch)
    parameters = [p for p in module.model.parameters() if p.requires_grad]
    norms = {}
    for term, weight in zip(module.loss.terms, module.loss.weights):
        value = weight * term(prediction, batch)
        gradients = (torch.autograd.grad(value, parameters, retain_graph=True, allow_unused=True)
                     if value.requires_grad else [])  # a term cut off from the graph entirely
        norms[term.name] = math.sqrt(sum(float(g.square().sum()) for g in gradients if g is not None))
        if not norms[term.name] > 0 or not math.isfinite(norms[term.name]):
            problems.append(f"{term.name}: gradient norm {norms[term.name]:.3g}")
    measured = ", ".join(f"{term} {norm:.3g}" for term, norm in norms.items())
    if problems:
        return Check(name, False, "; ".join(problems) + f" (gradient norms: {measured})")
    return Check(name, True, f"gradient norms {measured}")


def _validation_matches_evaluation(setup: TrainingSetup, config: DictConfig, module, folder: Path) -> Check:
    name = "validation = direct evaluation"
    trainer = _trainer(setup, config, 1, 1, folder, [], validate=True)
    logged = trainer.validate(module, datamodule=setup.datamodule, verbose=False)[0]
    module.model.eval()
    direct = evaluate_model(module.model, setup.datamodule.val_dataloader())
    # a quantity outside the loss (stress, say) is not predicted in validation: nothing to compare
    common = [key for key in direct if f"val_{key}" in logged]
    if not common:
        return Check(name, False, f"none of {', '.join(direct)} logged in validation")
    differences = {key: abs(logged[f"val_{key}"] - direct[key]) / max(abs(direct[key]), 1e-12) for key in common}
    worst = max(differences, key=differences.get)
    detail = (f"{worst} {logged[f'val_{worst}']:.6g} logged, {direct[worst]:.6g} direct "
              f"(largest relative difference of {len(common)} metrics: {differences[worst]:.1g})")
    return Check(name, differences[worst] <= METRIC_TOLERANCE, detail)


def _same_state(uninterrupted: _EndState, resumed: _EndState, steps_per_epoch: int) -> Check:
    """The states compared are the trained objects', not only what the checkpoints record, so
    that a state never saved (or never restored) shows."""
    name = "checkpoint resumes exactly"
    first, second = uninterrupted.checkpoint, resumed.checkpoint
    differences: dict[str, float] = {}
    for part in ("state_dict", "optimizer_states", "lr_schedulers", "global_step", "epoch"):
        _compare(first.get(part), second.get(part), part, differences)
    _compare(uninterrupted.average, resumed.average, "weight average", differences)
    worst = max(differences, key=differences.get) if differences else None
    if worst is None or differences[worst] == 0:
        return Check(name, True, f"weights, optimiser, schedule and weight average equal after {steps_per_epoch} "
                                 "steps resumed from a checkpoint")
    return Check(name, False, f"{worst} differs from the uninterrupted run by {differences[worst]:.3g} (relative)")


def _compare(first: Any, second: Any, where: str, differences: dict[str, float]) -> None:
    """Relative differences of two nested checkpoint parts, by path; inf where their structure differs."""
    if isinstance(first, Mapping) and isinstance(second, Mapping):
        for key in first.keys() | second.keys():
            _compare(first.get(key), second.get(key), f"{where}.{key}", differences)
    elif isinstance(first, (list, tuple)) and isinstance(second, (list, tuple)) and len(first) == len(second):
        for index, (a, b) in enumerate(zip(first, second)):
            _compare(a, b, f"{where}[{index}]", differences)
    elif isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor) and first.shape == second.shape:
        a, b = first.double(), second.double()
        differences[where] = float((a - b).abs().max() / a.abs().max().clamp(min=1e-30)) if a.numel() else 0.0
    elif isinstance(first, float) and isinstance(second, float):
        differences[where] = 0.0 if first == second or (math.isnan(first) and math.isnan(second)) else math.inf
    else:
        differences[where] = 0.0 if first == second else math.inf


def _batching_invariance(module, setup: TrainingSetup) -> Check:
    """The loss over the same structures, batched whole and in batches of 1, 2 and 3."""
    name = "batching does not change the loss"
    loss = copy.deepcopy(module.loss)
    compared = [(term, weight) for term, weight in zip(loss.terms, loss.weights) if term.name not in BATCH_COMPARING_TERMS]
    if not compared:
        return Check(name, True, "no term to compare (every term compares the conformers within a batch)")
    for term, _ in compared:
        term.reduction = "none"
    graphs = [setup.datamodule.train_set[i] for i in range(min(len(setup.datamodule.train_set), BATCHING_STRUCTURES))]
    sizes, start = [], 0
    while start < len(graphs):
        sizes.append(min(1 + len(sizes) % 3, len(graphs) - start))
        start += sizes[-1]
    module.eval()

    def dataset_loss(batch_sizes: list[int]) -> float:
        entries: dict[str, list[torch.Tensor]] = {term.name: [] for term, _ in compared}
        offsets = np.cumsum([0, *batch_sizes])
        for begin, end in zip(offsets[:-1], offsets[1:]):
            batch = Batch.from_data_list(graphs[begin:end]).to(module.device)
            prediction = module._predict(batch)
            for term, _ in compared:
                entries[term.name].append(term(prediction, batch).detach())
        return sum(weight * float(torch.cat(entries[term.name]).double().mean()) for term, weight in compared)

    whole, split = dataset_loss([len(graphs)]), dataset_loss(sizes)
    difference = abs(split - whole) / max(abs(whole), 1e-30)
    left_out = [term.name for term in loss.terms if term.name in BATCH_COMPARING_TERMS]
    detail = (f"{len(graphs)} structures in one batch {whole:.6g}, in batches of 1-3 {split:.6g} "
              f"(relative difference {difference:.1g})" + (f"; {', '.join(left_out)} left out" if left_out else ""))
    if difference > BATCHING_TOLERANCE:
        detail += ": a term normalises by a batch's own statistics; normalise per atom or per structure"
    return Check(name, difference <= BATCHING_TOLERANCE, detail)


def _largest_batch(setup: TrainingSetup) -> list:
    """The training structures of the batch with the most atoms the run can draw."""
    data = setup.datamodule
    n_atoms = data.training_values("n_atoms")
    largest_first = np.argsort(n_atoms, kind="stable")[::-1]
    if not data.max_atoms_per_batch:
        return [data.train_set[int(i)] for i in largest_first[: data.batch_size]]
    chosen, atoms = [], 0
    for position in largest_first:  # the largest first, then whatever still fits the budget
        if atoms + n_atoms[position] <= data.max_atoms_per_batch:
            chosen.append(data.train_set[int(position)])
            atoms += n_atoms[position]
    return chosen


def _training_device(setup: TrainingSetup) -> torch.device:
    accelerator = str(setup.trainer_options.get("accelerator", "auto"))
    wants_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return torch.device("cuda" if wants_gpu and torch.cuda.is_available() else "cpu")


def _available_memory(device: torch.device) -> int:
    """Bytes this process can have: what it holds now and what is free (on the GPU, or the
    machine's available memory)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device)
    return psutil.virtual_memory().available + psutil.Process().memory_info().rss


def _step_memory(module, batch, device: torch.device) -> int:
    """Peak bytes of this process (allocated on the GPU, or resident) during a training step
    (forward, loss, backward) on ``batch``."""
    module.to(device=device, dtype=batch.pos.dtype).train()
    batch = batch.to(device)

    def step() -> None:
        total, _ = module.loss(module._predict(batch), batch)
        total.backward()
        module.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device)
    return _peak_rss_during(step)


def _peak_rss_during(work: Callable[[], None]) -> int:
    """Peak resident memory of this process while ``work`` runs, sampled every millisecond."""
    process = psutil.Process()
    peak = process.memory_info().rss
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, process.memory_info().rss)
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        work()
    finally:
        done.set()
        sampler.join()
    return max(peak, process.memory_info().rss)


def _peak_memory(module, setup: TrainingSetup) -> Check:
    graphs = _largest_batch(setup)
    device = _training_device(setup)
    needed = _step_memory(module, Batch.from_data_list(graphs), device)
    available = _available_memory(device)
    atoms = sum(int(graph.n_atoms) for graph in graphs)
    where = "GPU" if device.type == "cuda" else "CPU"
    detail = (f"{where}: peak {needed / 2**20:.0f} MiB in a step on the largest batch ({len(graphs)} structures, "
              f"{atoms} atoms); {available / 2**20:.0f} MiB available to the process")
    if needed <= MEMORY_FRACTION * available:
        return Check("peak memory", True, detail)
    parts = math.ceil(needed / (MEMORY_FRACTION * available))
    data = setup.datamodule
    if data.max_atoms_per_batch:
        key, size, least = "data.max_atoms_per_batch", data.max_atoms_per_batch, max(int(g.n_atoms) for g in graphs)
    else:
        key, size, least = "data.batch_size", data.batch_size, 1
    smaller = max(least, size // parts)
    if smaller >= size:
        return Check("peak memory", False, f"{detail}: the batch cannot shrink; try a smaller student (model.channels, "
                                           "model.num_layers) or a machine with more memory")
    accumulate = math.ceil(size / smaller) * int(setup.trainer_options.get("accumulate_grad_batches", 1) or 1)
    return Check("peak memory", False, f"{detail}: try {key}={smaller} trainer.accumulate_grad_batches={accumulate}"
                                       " (the same effective batch)")
