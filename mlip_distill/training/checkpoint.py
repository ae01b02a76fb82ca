"""Checkpoints: written atomically, carrying the run's provenance and random-number states,
found again for ``resume=auto``, and read back without unpickling code."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

LAST = "last.ckpt"


class AtomicModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, but each file is written to a temporary name and renamed.

    A crash while saving leaves the previous checkpoint of that name intact.
    """

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        tmp = f"{filepath}.tmp"
        try:
            trainer.save_checkpoint(tmp, self.save_weights_only)
            if trainer.is_global_zero:
                os.replace(tmp, filepath)
        finally:
            if trainer.is_global_zero:  # another process must not remove the file rank 0 is renaming
                Path(tmp).unlink(missing_ok=True)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath


def _rng_states() -> dict[str, Any]:
    """torch, numpy and Python random states as tensors, lists and ints (loadable with
    ``weights_only=True``)."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def _set_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    numpy = states["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["gauss"]))
    python = states["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))


class RunRecord(pl.Callback):
    """Adds to every checkpoint what is needed to trust and resume it: ``run`` (run id, full
    config, git commit, library versions, checksums of the data files) and ``rng`` (torch, numpy
    and Python random states, restored on resume so that shuffling continues as it would have).

    Args:
        provenance: the ``run`` entry, plain Python values.
    """

    state_key = "run_record"

    def __init__(self, provenance: Mapping[str, Any]) -> None:
        self.provenance = dict(provenance)

    def on_save_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict) -> None:
        checkpoint["run"] = self.provenance
        checkpoint["rng"] = _rng_states()

    def on_load_checkpoint(self, trainer: pl.Trainer, module: pl.LightningModule, checkpoint: dict) -> None:
        if "rng" in checkpoint:
            _set_rng_states(checkpoint["rng"])


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint, loaded with ``weights_only=True``: reading it cannot run code."""
    return torch.load(path, map_location="cpu", weights_only=True)


def model_state_from_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The student's weights (keys without the ``model.`` prefix) from a training checkpoint:
    the exponential moving average of its parameters when the run kept one, else the weights."""
    checkpoint = read_checkpoint(path)
    state = {k.removeprefix("model."): v for k, v in checkpoint["state_dict"].items() if k.startswith("model.")}
    average = checkpoint.get("callbacks", {}).get("ema", {}).get("average", {})
    return {**state, **average}


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any], prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two configs (plain nested dicts)."""
    differences = []
    for key in sorted(set(saved) | set(current), key=str):
        name = f"{prefix}{key}"
        old, new = saved.get(key), current.get(key)
        if isinstance(old, Mapping) and isinstance(new, Mapping):
            differences += config_differences(old, new, f"{name}.")
        elif old != new:
            differences.append(name)
    return differences


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """``checkpoints/last.ckpt`` of a run directory, if it has one."""
    path = Path(run_dir) / "checkpoints" / LAST
    return path if path.is_file() else None


def latest_resumable_run(experiment_dir: str | Path) -> Path | None:
    """The run directory under ``runs/<experiment>/`` whose last checkpoint (of the run, or of
    one of its stages under ``stages/<n>-<name>/``) is newest."""
    runs = {p: p.parent.parent for p in Path(experiment_dir).glob(f"*/checkpoints/{LAST}")}
    runs.update({p: p.parents[3] for p in Path(experiment_dir).glob(f"*/stages/*/checkpoints/{LAST}")})
    candidates = [p for p in runs if p.is_file()]
    return runs[max(candidates, key=lambda p: p.stat().st_mtime)] if candidates else None
