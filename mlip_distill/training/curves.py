"""Learning curves: one row per epoch, kept in checkpoints, written as ``curves.csv`` and
``curves.png`` at the end of a run."""

from __future__ import annotations

import csv
import math
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import pytorch_lightning as pl

FIRST_COLUMNS = ("stage", "epoch", "step", "lr", "grad_norm", "train_loss")


class CurveRecorder(pl.Callback):
    """Collects one row per epoch: ``epoch``, ``step`` (optimiser steps so far), the epoch means
    of ``lr``, ``grad_norm``, ``train_loss``, every ``train_<term>`` and the loss weights
    ``weight_<term>`` (logged while they ramp between stages), and the ``val_*``
    metrics of the epoch (losses, errors in meV units). Its rows are saved in checkpoints, so a
    resumed run's curves continue the killed run's."""

    state_key = "curves"

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._sums, self._counts = {}, {}

    def on_train_batch_end(self, trainer: pl.Trainer, module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        if outputs is None:  # a skipped step
            return
        for key, value in trainer.callback_metrics.items():
            if key in ("lr", "grad_norm") or key.startswith("weight_") or (key.startswith("train_") and "_mev_" not in key):
                self._sums[key] = self._sums.get(key, 0.0) + float(value)
                self._counts[key] = self._counts.get(key, 0) + 1

    def _close_epoch(self, trainer: pl.Trainer) -> None:
        epoch = trainer.current_epoch
        if self.rows and self.rows[-1]["epoch"] == epoch:
            return
        row: dict[str, float] = {"epoch": epoch, "step": trainer.global_step}
        row.update({key: self._sums[key] / self._counts[key] for key in self._sums})
        row.update({key: float(value) for key, value in trainer.callback_metrics.items() if key.startswith("val_")})
        self.rows.append(row)

    # After validation and before the checkpoints are written (Lightning runs checkpoint
    # callbacks last), so a checkpoint's curves include its own epoch.
    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._close_epoch(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._close_epoch(trainer)  # epochs without validation

    def state_dict(self) -> dict[str, Any]:
        return {"rows": [dict(row) for row in self.rows]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows = [dict(row) for row in state["rows"]]


def write_curves_csv(rows: Sequence[dict[str, float]], path: str | Path) -> Path:
    """Rows as CSV, columns ``stage`` (multi-stage runs), ``epoch, step, lr, grad_norm,
    train_loss``, the other ``train_*``, then the rest (``val_*``, ``weight_*``); a value an
    epoch lacks is left empty. Written atomically."""
    path = Path(path)
    keys = {key for row in rows for key in row}
    columns = [key for key in FIRST_COLUMNS if key in keys]
    columns += sorted(k for k in keys if k.startswith("train_") and k not in columns)
    columns += sorted(k for k in keys if k not in columns)
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: _format(row[key]) if key in row else "" for key in columns})
    os.replace(tmp, path)
    return path


def write_curves(rows: Sequence[dict[str, float]], folders: Sequence[str | Path], stage_names: Sequence[str] = ()) -> None:
    """``curves.csv`` and ``curves.png`` into the first of ``folders``, copied into the others
    (the plot is drawn once: it takes seconds)."""
    first = Path(folders[0])
    written = [write_curves_csv(rows, first / "curves.csv"), plot_curves(rows, first / "curves.png", stage_names)]
    for folder in folders[1:]:
        for path in written:
            tmp = Path(folder) / f"{path.name}.tmp"
            shutil.copyfile(path, tmp)
            os.replace(tmp, Path(folder) / path.name)


def read_curves_csv(path: str | Path) -> list[dict[str, float]]:
    """The rows :func:`write_curves_csv` wrote, without the values an epoch lacks."""
    with open(path, newline="") as handle:
        return [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(handle)]


def _format(value: float) -> str | int:
    return int(value) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def plot_curves(rows: Sequence[dict[str, float]], path: str | Path, stage_names: Sequence[str] = ()) -> Path:
    """Four panels against the epoch: training loss terms, validation errors (meV units),
    learning rate and gradient norm (log scales). Rows with a ``stage`` number get a dashed line
    where each stage begins, labelled with its name from ``stage_names`` (1-based numbers
    index it). Written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    epochs = [row["epoch"] for row in rows]
    keys = sorted({key for row in rows for key in row})
    panels = [
        ("training loss (scaled units)", [k for k in keys if k.startswith("train_") and "_weighted" not in k]),
        ("validation errors (meV/atom, meV/Å, meV/Å³) and loss", [k for k in keys if k.startswith("val_")]),
        ("learning rate", ["lr"]),
        ("gradient norm before clipping", ["grad_norm"]),
    ]
    figure, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for axis, (title, columns) in zip(axes.flat, panels):
        for key in columns:
            points = [(e, row[key]) for e, row in zip(epochs, rows) if key in row and math.isfinite(row[key])]
            if points:
                axis.plot(*zip(*points), label=key, marker="." if len(points) < 30 else None)
        if axis.lines:
            if all(y > 0 for line in axis.lines for y in line.get_ydata()):
                axis.set_yscale("log")
            axis.legend(fontsize=7)
        axis.set_title(title, fontsize=9)
    for axis in axes[-1]:
        axis.set_xlabel("epoch")
    _mark_stages(axes.flat, rows, stage_names)
    figure.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=100)
    plt.close(figure)
    os.replace(tmp, path)
    return path


def _mark_stages(axes, rows: Sequence[dict[str, float]], stage_names: Sequence[str]) -> None:
    starts = [row for k, row in enumerate(rows) if "stage" in row and (k == 0 or rows[k - 1].get("stage") != row["stage"])]
    for axis in axes:
        for row in starts:
            axis.axvline(row["epoch"] - 0.5, color="grey", linestyle="--", linewidth=0.8)
            number = int(row["stage"])
            name = stage_names[number - 1] if number <= len(stage_names) else f"stage {number}"
            axis.text(row["epoch"] - 0.4, 1.0, name, transform=axis.get_xaxis_transform(), fontsize=7,
                      va="top", color="grey")
