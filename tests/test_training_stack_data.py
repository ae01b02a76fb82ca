"""Data loading and reproducibility: gradient accumulation, one seed, loader workers,
deterministic mode, and the lock file of exact versions."""

from __future__ import annotations

import csv
import re
from importlib.metadata import version
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from mlip_distill.training.run import compose_config, train

TINY = ["model.channels=8", "model.num_layers=1", "model.radial_hidden=16", "trainer.enable_progress_bar=false",
        "data.n_valid=8", "scheduler.warmup_steps=2", "logger=csv"]
ROOT = Path(__file__).resolve().parents[1]


class FirstGradient(pl.Callback):
    """The gradient of the first optimiser step, and the number of steps taken."""

    def __init__(self):
        self.gradient, self.steps = None, 0

    def on_before_optimizer_step(self, trainer, module, optimizer):
        self.steps += 1
        if self.gradient is None:
            self.gradient = torch.cat([p.grad.flatten() for p in module.model.parameters() if p.grad is not None])


def test_two_accumulated_batches_of_four_step_like_one_batch_of_eight(copper_label_file, tmp_path):
    gradients = {}
    for batch_size, accumulate in ((8, 1), (4, 2)):
        probe = FirstGradient()
        train(compose_config([f"data.path={copper_label_file}", f"run_dir={tmp_path / str(accumulate)}", *TINY,
                              "trainer.max_epochs=1", f"data.batch_size={batch_size}",
                              f"trainer.accumulate_grad_batches={accumulate}", "+trainer.num_sanity_val_steps=0"]),
              callbacks=[probe])
        assert probe.steps == 4  # 32 training structures, 8 per optimiser step
        gradients[accumulate] = probe.gradient
    torch.testing.assert_close(gradients[2], gradients[1], rtol=1e-4, atol=1e-7)


def curve(run_dir) -> list[dict[str, str]]:
    with open(Path(run_dir) / "curves.csv") as handle:
        return list(csv.DictReader(handle))


def test_one_seed_makes_runs_repeat_with_workers_and_in_deterministic_mode(copper_label_file, tmp_path):
    common = [f"data.path={copper_label_file}", *TINY, "trainer.max_epochs=1", "data.batch_size=8"]
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        first = train(compose_config([*common, f"run_dir={tmp_path / 'a'}", "seed=5"]))
        workers = train(compose_config([*common, f"run_dir={tmp_path / 'b'}", "seed=5", "data.num_workers=1",
                                        "trainer.deterministic=true"]))
    finally:
        torch.use_deterministic_algorithms(was_deterministic)
    other_seed = train(compose_config([*common, f"run_dir={tmp_path / 'c'}", "seed=6"]))
    assert curve(workers.run_dir) == curve(first.run_dir)
    assert curve(other_seed.run_dir) != curve(first.run_dir)


def test_requirements_lock_pins_the_installed_libraries():
    lock = (ROOT / "requirements.lock").read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==(\S+)$", lock, flags=re.M))
    assert not any(name.lower().replace("_", "-") == "mlip-distill" for name in pins)
    for name in ("torch", "e3nn", "torch-geometric", "pytorch-lightning", "hydra-core", "numpy", "ase", "h5py"):
        if name not in pins:
            pytest.fail(f"requirements.lock does not pin {name}")
        assert pins[name] == version(name), f"{name}: locked {pins[name]}, installed {version(name)}"
