"""End-of-run diagnosis: read a run's per-epoch curves and say what went wrong and what to try.

Three pathologies are looked for, each with a concrete suggestion:

=============  ==================================================================  ==============================
finding        what the curves show                                                suggestion
=============  ==================================================================  ==============================
divergence     a non-finite loss, or the training loss ending far above its        lower learning rate, warmup,
               minimum after having risen for several epochs                       clipping
plateau        the monitored validation error no longer improves over the last     learning rate schedule, or a
               epochs (and a loss term that stalled while the others fell)         larger student; loss weights
overfitting    validation error rising while the training loss keeps falling       more or on-policy data
=============  ==================================================================  ==============================

The curves are ``curves.csv`` of the run directory (one row per epoch: ``epoch``, ``step``,
``lr``, ``grad_norm``, ``train_loss``, ``train_<term>``, ``val_<metric>``), or, when the run has
none, Lightning's ``metrics.csv`` averaged per epoch.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: validation metrics tried in turn as the one that measures progress
PROGRESS_METRICS = ("val_forces_rmse_mev_per_A", "val_energy_rmse_mev_per_atom", "val_loss")
MIN_EPOCHS = 4  # fewer epochs are too few to tell a trend from noise
DIVERGENCE_FACTOR = 3.0  # training loss ending this many times above its minimum
PLATEAU_IMPROVEMENT = 0.02  # relative improvement of the best validation error over the last third
OVERFIT_RISE = 0.05  # relative rise of the validation error above its minimum
OVERFIT_TRAIN_FALL = 0.05  # relative fall of the training loss over the same epochs
STALLED_TERM_FALL = 0.05  # a loss term that fell less than this while the total fell ...
TOTAL_LOSS_FALL = 0.3  # ... by more than this is stalled
DECAYED_LR = 1e-5  # below this learning rate a plateau is the student's limit, not the schedule's


@dataclass
class Finding:
    """One pathology: its kind, what the curves show, and what to try."""

    kind: str
    evidence: str
    suggestion: str


@dataclass
class Diagnosis:
    """The findings of one run, and the progress of its validation error."""

    epochs: int
    metric: str | None
    first: float = math.nan
    last: float = math.nan
    best: float = math.nan
    best_epoch: int = -1
    findings: list[Finding] = field(default_factory=list)

    @property
    def healthy(self) -> bool:
        return not self.findings

    def summary(self) -> str:
        """A few printable lines: progress, then each finding with its suggestion."""
        lines = [f"End-of-run diagnosis ({self.epochs} epochs):"]
        if self.metric is not None:
            lines.append(
                f"  {self.metric}: {self.first:.4g} -> {self.last:.4g} (best {self.best:.4g} at epoch {self.best_epoch})"
            )
        if self.healthy:
            judged = self.epochs >= MIN_EPOCHS and self.metric is not None
            lines.append("  no divergence, plateau or overfitting found" if judged else
                         "  too few epochs or no validation metric: trends not judged")
        for finding in self.findings:
            lines.append(f"  [{finding.kind}] {finding.evidence}")
            lines.append(f"      try: {finding.suggestion}")
        return "\n".join(lines)


Curves = dict[str, np.ndarray]


def read_curves(run_dir: str | Path) -> Curves:
    """Per-epoch curves of a run: column name -> (E,) float array, NaN where not logged.

    Reads ``curves.csv``; without it, ``metrics.csv`` (Lightning's CSV logger), whose step-wise
    rows are averaged per epoch and whose learning-rate column (``lr-<optimiser>``) becomes ``lr``.

    Raises:
        FileNotFoundError: the run directory holds neither file.
    """
    run_dir = Path(run_dir)
    if (run_dir / "curves.csv").is_file():
        rows = _read_rows(run_dir / "curves.csv")
        return {name: np.array([_number(row.get(name)) for row in rows]) for name in (rows[0] if rows else {})}
    if (run_dir / "metrics.csv").is_file():
        return _epoch_means(_read_rows(run_dir / "metrics.csv"))
    raise FileNotFoundError(f"{run_dir}: no curves.csv or metrics.csv to diagnose")


def _read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "") else math.nan
    except ValueError:
        return math.nan


def _epoch_means(rows: list[dict[str, str]]) -> Curves:
    """Lightning's metrics rows (some without an epoch, such as the learning rate's) as per-epoch means."""
    epoch_of_step = {row["step"]: row["epoch"] for row in rows if row.get("epoch")}
    values: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        epoch = row.get("epoch") or epoch_of_step.get(row.get("step", ""))
        if not epoch:
            continue
        for name, text in row.items():
            value = _number(text)
            if name not in ("epoch", "step") and not math.isnan(value):
                values["lr" if name.startswith("lr-") else name][int(float(epoch))].append(value)
    epochs = sorted({int(float(row["epoch"])) for row in rows if row.get("epoch")})
    curves: Curves = {"epoch": np.array(epochs, dtype=float)}
    for name, per_epoch in values.items():
        curves[name] = np.array([np.mean(per_epoch[e]) if per_epoch.get(e) else math.nan for e in epochs])
    return curves


def diagnose(curves: Curves) -> Diagnosis:
    """Look for divergence, a plateau and overfitting in per-epoch ``curves`` (see module docstring)."""
    epochs = len(next(iter(curves.values()), []))
    metric = next((name for name in PROGRESS_METRICS if _finite(curves.get(name)).size), None)
    diagnosis = Diagnosis(epochs=epochs, metric=metric)
    if metric is not None:
        values = curves[metric]
        finite = np.flatnonzero(np.isfinite(values))
        diagnosis.first, diagnosis.last = float(values[finite[0]]), float(values[finite[-1]])
        diagnosis.best_epoch = int(finite[np.argmin(values[finite])])
        diagnosis.best = float(values[diagnosis.best_epoch])
    divergence = _divergence(curves)
    if divergence is not None:
        diagnosis.findings.append(divergence)
        return diagnosis  # a diverged run's other trends mean nothing
    if epochs < MIN_EPOCHS or metric is None:
        return diagnosis
    for check in (_overfitting, _plateau, _stalled_terms):
        diagnosis.findings.extend(check(curves, metric))
    return diagnosis


def diagnose_run(run_dir: str | Path) -> Diagnosis:
    """:func:`diagnose` on the curves of a run directory."""
    return diagnose(read_curves(run_dir))


def _finite(values: np.ndarray | None) -> np.ndarray:
    return np.array([]) if values is None else values[np.isfinite(values)]


def _lr_advice(curves: Curves) -> str:
    learning_rates = _finite(curves.get("lr"))
    return f" (now {learning_rates[-1]:.2g})" if learning_rates.size else ""


def _divergence(curves: Curves) -> Finding | None:
    loss = curves.get("train_loss")
    if loss is None or not np.isfinite(loss).any():
        return None
    lower_lr = (
        f"lower optimizer.lr by 3-10x{_lr_advice(curves)}, warm up longer, keep trainer.gradient_clip_val "
        "set; with 16-mixed precision try bf16-mixed or 32"
    )
    logged = np.flatnonzero(~np.isnan(loss))
    not_finite = logged[~np.isfinite(loss[logged])]
    if not_finite.size:
        return Finding("divergence", f"training loss is not finite from epoch {not_finite[0]}", lower_lr)
    best = int(np.nanargmin(loss))
    tail = loss[best:]
    if loss[-1] > DIVERGENCE_FACTOR * loss[best] and np.count_nonzero(np.diff(tail[np.isfinite(tail)]) > 0) >= 2:
        return Finding(
            "divergence",
            f"training loss rose from {loss[best]:.3g} (epoch {best}) to {loss[-1]:.3g} (epoch {len(loss) - 1})",
            lower_lr,
        )
    return None


def _overfitting(curves: Curves, metric: str) -> list[Finding]:
    values, loss = curves[metric], curves.get("train_loss")
    best = int(np.nanargmin(values))
    if loss is None or best >= len(values) - 2:
        return []
    rise = values[-1] / values[best] - 1.0
    train_before, train_after = loss[best], loss[-1]
    train_fall = 1.0 - train_after / train_before if train_before > 0 else 0.0
    if rise > OVERFIT_RISE and train_fall > OVERFIT_TRAIN_FALL:
        return [Finding(
            "overfitting",
            f"{metric} rose {100 * rise:.0f}% above its best (epoch {best}) while the training loss fell "
            f"{100 * train_fall:.0f}%",
            "more training structures, or on-policy data (mlip-distill distill --rounds N adds the frames the "
            "student gets wrong in MD); meanwhile keep the best checkpoint and stop earlier",
        )]
    return []


def _plateau(curves: Curves, metric: str) -> list[Finding]:
    values = curves[metric]
    window = max(MIN_EPOCHS - 1, len(values) // 3)
    earlier, recent = values[:-window], values[-window:]
    if not np.isfinite(earlier).any() or not np.isfinite(recent).any():
        return []
    best_before, best_recent = np.nanmin(earlier), np.nanmin(recent)
    improvement = 1.0 - best_recent / best_before if best_before > 0 else 0.0
    if improvement >= PLATEAU_IMPROVEMENT or best_recent > best_before * (1.0 + OVERFIT_RISE):
        return []
    learning_rates = _finite(curves.get("lr"))
    if learning_rates.size and learning_rates[-1] < DECAYED_LR:
        suggestion = (
            "the learning rate has already decayed, so the student is at its limit: a larger student "
            "(model.channels, model.num_layers, model.lmax) or more informative loss terms"
        )
    else:
        suggestion = (
            f"lower the learning rate{_lr_advice(curves)} or let it decay (scheduler=plateau or cosine); if "
            "that does not help, a larger student (model.channels, model.num_layers)"
        )
    return [Finding(
        "plateau",
        f"{metric} improved only {100 * max(improvement, 0.0):.1f}% over the last {window} epochs",
        suggestion,
    )]


def _stalled_terms(curves: Curves, metric: str) -> list[Finding]:
    """Loss terms that stopped falling while the total loss fell: their weight is too small."""
    loss = curves.get("train_loss")
    if loss is None:
        return []
    half = len(loss) // 2
    total_fall = _relative_fall(loss, half)
    if total_fall < TOTAL_LOSS_FALL:
        return []
    findings = []
    # a raw term is logged beside its weighted value: train_forces and train_forces_weighted
    for name in sorted(name for name in curves if f"{name}_weighted" in curves):
        term = name.removeprefix("train_")
        term_fall = _relative_fall(curves[name], half)
        if term_fall < STALLED_TERM_FALL:
            findings.append(Finding(
                "stalled term",
                f"the {term} loss fell {100 * max(term_fall, 0.0):.0f}% over the last {len(loss) - half} epochs "
                f"while the total fell {100 * total_fall:.0f}%",
                f"raise loss.{term}.weight (e.g. 3-10x) so that it is not drowned by the other terms",
            ))
    return findings


def _relative_fall(values: np.ndarray, start: int) -> float:
    """1 − (last finite value / finite value at or after ``start``); 0 without enough values."""
    tail = _finite(values[start:])
    return float(1.0 - tail[-1] / tail[0]) if tail.size >= 2 and tail[0] > 0 else 0.0
