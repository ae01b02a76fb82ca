"""Experiment loggers of a run: CSV always, TensorBoard and Weights & Biases (offline) on request."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from pytorch_lightning.loggers import CSVLogger, Logger

from .errors import ConfigError

LOGGERS = ("tensorboard", "wandb")


def build_loggers(options: Mapping[str, Any] | None, run_dir: Path, run_id: str) -> list[Logger]:
    """The run's loggers, all writing inside ``run_dir``.

    Args:
        options: the ``logger`` config: a mapping from ``tensorboard`` / ``wandb`` to its settings.
        run_dir: the run directory.
        run_id: the run's id (the W&B run id and name).
    Returns:
        ``metrics.csv`` in ``run_dir`` first, then TensorBoard (``run_dir/tensorboard``) and
        W&B (``run_dir/wandb``) as asked. W&B runs offline unless ``mode: online``, and
        ``WANDB_MODE`` is set accordingly, so it never asks for a login.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(LOGGERS))
    if unknown:
        raise ConfigError(f"logger: unknown logger(s) {', '.join(unknown)}; expected csv, {', '.join(LOGGERS)}")
    loggers: list[Logger] = [CSVLogger(str(run_dir), name="", version="")]
    if "tensorboard" in options:
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(run_dir), name="tensorboard", version="", default_hp_metric=False,
                                         **dict(options["tensorboard"] or {})))
    if "wandb" in options:
        from pytorch_lightning.loggers import WandbLogger

        settings = dict(options["wandb"] or {})
        mode = settings.pop("mode", "offline")
        if mode not in ("offline", "online"):
            raise ConfigError(f"logger.wandb.mode '{mode}': expected offline or online")
        os.environ["WANDB_MODE"] = mode
        os.environ.setdefault("WANDB_SILENT", "true")
        loggers.append(WandbLogger(save_dir=str(run_dir), id=run_id, name=run_id, offline=mode == "offline",
                                   **settings))
    return loggers
