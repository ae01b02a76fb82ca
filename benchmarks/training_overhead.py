"""Cost of the training stack per optimiser step: a bare PyTorch loop against Lightning, on the
same student and the same batch.

Three loops take the same steps (AdamW, energy + forces loss, gradient clipping at 10) on one
batch of the demo's 32-atom EMT copper cells, with the demo's NequIP student:

- ``bare``: forward, loss, backward, clip, step; nothing else;
- ``lightning``: :class:`~mlip_distill.training.module.StudentModule` in a Trainer without
  callbacks or logger (Lightning's loop, the module's gradient norm, non-finite guard and
  float32 loss);
- ``stack``: the same with the run's callbacks (EMA, curves, checkpoint bookkeeping, provenance)
  and the CSV logger writing every step.

Each step is timed on its own (the median of ``--steps`` after ``--warmup``), in CPU time of
this process (``time.process_time``, one torch thread) as well as wall time: CPU time is what
the stack adds and is little disturbed by other jobs on a shared machine, wall time is not. The
three loops run in turn ``--repeats`` times, so that load from other processes hits them alike.

    python benchmarks/training_overhead.py   # writes benchmarks/results/training_overhead.{json,md}
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from mlip_distill.data.dataset import GraphDataset
from mlip_distill.losses import build_loss
from mlip_distill.models import build_model
from mlip_distill.sampling.perturb import sample_file
from mlip_distill.teachers import label_file, load_teacher
from mlip_distill.training.module import StudentModule
from mlip_distill.training.run import _quieten_lightning, _run_callbacks, compose_config
from mlip_distill.training.loggers import build_loggers

RESULTS = Path(__file__).parent / "results"
SCALES = {"energy": 0.01, "forces": 0.5}


def make_batch(folder: Path, batch_size: int):
    structures, labels = folder / "cells.xyz", folder / "labels.h5"
    sample_file("bulk:Cu:fcc:a=3.61:cubic:2x2x2", structures, batch_size, rattle_sigma=(0.05, 0.15), max_strain=0.01)
    label_file(structures, load_teacher("emt"), labels, progress=False)
    dataset = GraphDataset(labels, "teacher", 5.0)
    from torch_geometric.loader import DataLoader as GraphLoader

    return next(iter(GraphLoader(dataset, batch_size=batch_size)))


def new_student(config) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    options = OmegaConf.to_container(config.model, resolve=True)
    name = options.pop("name")
    model = build_model(name, elements=[29], e0={29: -0.0}, avg_num_neighbors=40.0, scale=0.5, **options)
    loss = build_loss(OmegaConf.to_container(config.loss, resolve=True), SCALES)
    return model, loss


def clocks() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def bare_loop(config, batch, steps: int) -> list[tuple[float, float]]:
    model, loss = new_student(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, amsgrad=True)
    times = []
    for _ in range(steps):
        start = clocks()
        optimizer.zero_grad()
        prediction = model(batch, compute_forces=True, create_graph=True)
        total, _ = loss(prediction, batch)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        times.append(tuple(b - a for a, b in zip(start, clocks())))
    return times


class StepTimer(pl.Callback):
    def __init__(self):
        self.times, self.start = [], None

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        now = clocks()
        if self.start is not None:
            self.times.append(tuple(b - a for a, b in zip(self.start, now)))
        self.start = now


def lightning_loop(config, batch, steps: int, with_stack: bool, folder: Path) -> list[tuple[float, float]]:
    model, loss = new_student(config)
    module = StudentModule(model, loss, {"name": "adamw", "lr": 1e-3, "amsgrad": True},
                           {"name": "constant", "warmup_steps": 0}, guards=config.guards)
    timer = StepTimer()
    callbacks = [timer]
    if with_stack:
        callbacks = [*_run_callbacks(config, folder, {"run_id": folder.name}, progress_bar=False), timer]
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps + 1, limit_val_batches=0, num_sanity_val_steps=0,
        gradient_clip_val=10.0, inference_mode=False, enable_model_summary=False, enable_progress_bar=False,
        enable_checkpointing=with_stack, callbacks=callbacks, default_root_dir=str(folder),
        logger=build_loggers({}, folder, folder.name) if with_stack else False, log_every_n_steps=1,
    )
    loader = DataLoader([batch] * (steps + 1), batch_size=None)
    trainer.fit(module, train_dataloaders=loader)
    return timer.times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per loop and repeat")
    parser.add_argument("--warmup", type=int, default=5, help="first steps of each loop left out")
    parser.add_argument("--repeats", type=int, default=3, help="rounds of the three loops")
    parser.add_argument("--batch-size", type=int, default=4, help="32-atom cells per batch (the demo's 4)")
    args = parser.parse_args()
    _quieten_lightning()
    torch.set_num_threads(1)
    config = compose_config(["experiment=cu_emt", "data.path=unused.h5", "monitor=train_loss"])
    times: dict[str, list[tuple[float, float]]] = {"bare": [], "lightning": [], "stack": []}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        batch = make_batch(folder, args.batch_size)
        for round_ in range(args.repeats):
            total = args.steps + args.warmup
            times["bare"] += bare_loop(config, batch, total)[args.warmup:]
            times["lightning"] += lightning_loop(config, batch, total, False, folder / f"l{round_}")[args.warmup:]
            times["stack"] += lightning_loop(config, batch, total, True, folder / f"s{round_}")[args.warmup:]
    cpu = {name: [t[0] for t in values] for name, values in times.items()}
    wall = {name: [t[1] for t in values] for name, values in times.items()}
    median = {name: 1e3 * statistics.median(values) for name, values in cpu.items()}
    quartiles = {name: [1e3 * q for q in statistics.quantiles(values, n=4)[::2]] for name, values in cpu.items()}
    wall_median = {name: 1e3 * statistics.median(values) for name, values in wall.items()}
    result = {
        "batch": f"{args.batch_size} x 32-atom Cu cells, NequIP (experiment=cu_emt: 32 channels, 2 layers)",
        "steps_per_loop": args.steps, "repeats": args.repeats,
        "median_cpu_ms_per_step": median, "quartiles_cpu_ms": quartiles, "median_wall_ms_per_step": wall_median,
        "overhead_cpu_ms": {name: median[name] - median["bare"] for name in ("lightning", "stack")},
        "overhead_percent": {name: 100 * (median[name] / median["bare"] - 1) for name in ("lightning", "stack")},
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} thread",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "training_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        "# Training stack overhead per optimiser step",
        "",
        f"{result['batch']}; median of {args.steps} steps x {args.repeats} rounds after {args.warmup} warm-up "
        f"steps each; {result['machine']}.",
        "",
        "| loop | median CPU ms/step | quartiles CPU ms | overhead vs bare (CPU) | median wall ms/step |",
        "|---|---|---|---|---|",
    ]
    for name in ("bare", "lightning", "stack"):
        overhead = "" if name == "bare" else f"{result['overhead_cpu_ms'][name]:+.1f} ms ({result['overhead_percent'][name]:+.1f} %)"
        q = quartiles[name]
        lines.append(f"| {name} | {median[name]:.1f} | {q[0]:.1f}-{q[1]:.1f} | {overhead} | {wall_median[name]:.1f} |")
    (RESULTS / "training_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
