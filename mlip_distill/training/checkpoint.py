"""Checkpoints written atomically, and the best weights read back without unpickling code."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint


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
            Path(tmp).unlink(missing_ok=True)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath


def model_state_from_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """The student's weights (keys without the ``model.`` prefix) from a training checkpoint.

    Loaded with ``weights_only=True``: a checkpoint cannot run code when read.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}
