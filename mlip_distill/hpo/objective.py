"""What a search minimises: a weighted sum of a run's validation errors, and the pruning callback.

``hpo.objective`` is a weighted sum such as ``val_forces_mae_mev_per_A + 0.5*val_energy_mae_mev_per_atom``.
A term is ``<labels>_<error>``:

- ``<error>`` is an error of :mod:`mlip_distill.metrics`: ``energy_mae_mev_per_atom``,
  ``forces_rmse_mev_per_A``, ``stress_mae_mev_per_A3``, ...
- ``<labels>`` is ``val`` for the labels the student learns (``data.source``, usually the teacher)
  on the held-out structures, as the runs log them each epoch; or the name of another label
  source of the data file (``reference``: DFT or other ground truth), evaluated on the same
  held-out structures once the run has ended.

A trial's value is the weighted sum for its exported potential (the best checkpoint, E0 refitted).
Each epoch the ``val`` terms of the sum are reported to Optuna, which may prune the trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import optuna
import pytorch_lightning as pl

from ..data.store import LabelStore
from ..evaluate import evaluate_store
from ..metrics import QUANTITIES
from ..package import load_potential
from .errors import SearchError

ERRORS = tuple(f"{quantity}_{kind}_{unit}" for quantity, unit in QUANTITIES.items() for kind in ("mae", "rmse"))
LEARNED = "val"


@dataclass(frozen=True)
class Term:
    """One objective term: ``weight`` x the ``error`` against the labels of ``labels``."""

    name: str
    labels: str
    error: str
    weight: float

    @property
    def quantity(self) -> str:
        return self.error.split("_")[0]


@dataclass(frozen=True)
class Objective:
    """The weighted sum of errors a search minimises (meV units, weights dimensionless)."""

    terms: tuple[Term, ...]

    @classmethod
    def parse(cls, text: str) -> Objective:
        """From ``"val_forces_mae_mev_per_A + 0.5*reference_energy_mae_mev_per_atom"`` (a weight
        defaults to 1); raises :class:`SearchError` on an unknown term or a bad weight."""
        terms = []
        for part in str(text or "").split("+"):
            weight_text, star, name = part.strip().rpartition("*")
            name = name.strip()
            where = f"hpo.objective: {part.strip() or '(empty)'}"
            labels, error = _split(name)
            if error not in ERRORS:
                raise SearchError(f"{where}: not an error the runs report; write terms as [weight*]<labels>_<error> "
                                  f"joined by +, with labels 'val' or a label source such as 'reference', and "
                                  f"error one of {', '.join(ERRORS)}")
            try:
                weight = float(weight_text) if star else 1.0
            except ValueError:
                raise SearchError(f"{where}: the weight must be a number, not {weight_text.strip()!r}") from None
            if not math.isfinite(weight) or weight <= 0:
                raise SearchError(f"{where}: the weight must be positive, not {weight:g}")
            terms.append(Term(name, labels, error, weight))
        return cls(tuple(terms))

    @property
    def per_epoch(self) -> tuple[Term, ...]:
        """The terms the runs log every epoch (against the learned labels)."""
        return tuple(term for term in self.terms if term.labels == LEARNED)

    def describe(self) -> str:
        return " + ".join(f"{term.weight:g} × {term.name}" for term in self.terms)

    def check_data(self, data_path: str | Path, learned_source: str) -> None:
        """Raise :class:`SearchError` unless the label file has every term's labels somewhere."""
        with LabelStore(data_path) as store:
            sources = store.sources()
            for term in self.terms:
                source = learned_source if term.labels == LEARNED else term.labels
                if source not in sources:
                    raise SearchError(f"hpo.objective.{term.name}: {data_path} has no label source '{source}' "
                                      f"(it has {', '.join(sources) or 'none'})")
                if not store.has_label(source, term.quantity).any():
                    raise SearchError(f"hpo.objective.{term.name}: {data_path} has no {term.quantity} labels "
                                      f"in source '{source}', so the runs cannot report this error")

    def epoch_value(self, logged: Mapping[str, float]) -> float | None:
        """The per-epoch part of the sum from the metrics a run logged this epoch (``None`` when
        no term is logged per epoch). Raises :class:`SearchError` for a term the run did not log."""
        terms = self.per_epoch
        for term in terms:
            if term.name not in logged:
                known = ", ".join(sorted(key for key in logged if key.startswith(f"{LEARNED}_"))) or "none"
                raise SearchError(f"hpo.objective.{term.name}: the runs do not log this metric (they log {known})")
        return sum(term.weight * float(logged[term.name]) for term in terms) if terms else None

    def value(self, errors: Mapping[str, float]) -> float:
        """The whole sum from ``errors`` (``{term name: error}``, see :func:`final_errors`)."""
        missing = [term.name for term in self.terms if term.name not in errors]
        if missing:
            raise SearchError(f"hpo.objective.{missing[0]}: the run's held-out structures have no such labels")
        return sum(term.weight * errors[term.name] for term in self.terms)


def _split(name: str) -> tuple[str, str]:
    """``reference_forces_mae_mev_per_A`` -> ``("reference", "forces_mae_mev_per_A")``."""
    for error in ERRORS:
        if name.endswith(f"_{error}") and len(name) > len(error) + 1:
            return name[: -len(error) - 1], error
    return "", name


def final_errors(objective: Objective, result, data_path: str | Path) -> dict[str, float]:
    """The errors of a finished run's potential, named as objective terms: ``val_*`` from the
    run's own evaluation, ``<source>_*`` against other label sources on the same held-out
    structures (``result`` is a :class:`~mlip_distill.training.run.TrainResult`)."""
    errors = {f"{LEARNED}_{key}": value for key, value in result.metrics.items()}
    other = sorted({term.labels for term in objective.terms if term.labels != LEARNED})
    if other:
        by_source = evaluate_store(load_potential(result.potential_dir), data_path, other, indices=result.valid_indices)
        for source, values in by_source.items():
            errors.update({f"{source}_{key}": value for key, value in values.items() if key in ERRORS})
    return errors


class ReportToTrial(pl.Callback):
    """Reports the per-epoch part of the objective to an Optuna trial after every validation,
    and stops the run (raising :class:`optuna.TrialPruned`) when the study's pruner says so.

    It checks the objective's metrics at the first validation, so that a metric the runs do
    not log ends the search after one epoch rather than after a whole trial.
    """

    def __init__(self, trial: optuna.Trial, objective: Objective) -> None:
        self.trial = trial
        self.objective = objective

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        logged = {key: float(value) for key, value in trainer.callback_metrics.items()}
        value = self.objective.epoch_value(logged)
        if value is None:
            return
        epoch = trainer.current_epoch
        self.trial.report(value, step=epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} at {value:.4g}")
