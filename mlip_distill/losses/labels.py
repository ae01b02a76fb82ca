"""Terms on the teacher's labels: energy per atom, forces, stress and per-atom energies."""

from __future__ import annotations

from typing import Any, Literal, Mapping

import torch
from ase.data import chemical_symbols
from torch import Tensor, nn

from mlip_distill.losses.base import LossTerm, Reduction, broadcast_rows, row_weights, structure_of_rows

Kind = Literal["mse", "mae", "huber", "l2"]


def elementwise_error(error: Tensor, kind: str, huber_delta: float) -> Tensor:
    """Squared (``mse``), absolute (``mae``) or Huber (``huber``, quadratic below ``huber_delta``)
    error of each entry of the scaled error."""
    if kind == "mse":
        return error.square()
    if kind == "mae":
        return error.abs()
    if kind == "huber":
        return nn.functional.huber_loss(error, torch.zeros_like(error), reduction="none", delta=huber_delta)
    raise ValueError(f"unknown loss kind '{kind}': expected mse, mae or huber")


class LabelLoss(LossTerm):
    """A per-entry error between a predicted and a labelled quantity, dropped where the label is NaN.

    ``loss = reduce(w · f((predicted − label) / scale))`` over the kept entries, with ``f`` the
    square (``mse``), absolute value (``mae``) or Huber function (``huber``), and ``w`` the
    structure or atom weight (see :mod:`mlip_distill.losses.base` for masks and reduction).

    Args:
        kind: ``mse``, ``mae`` or ``huber`` (and ``l2`` where the class allows it).
        reduction: ``mean``, ``sum`` or ``none``.
        scale: the quantity's unit of error (eV/atom, eV/Å or eV/Å³), from dataset statistics.
        huber_delta: where Huber turns from quadratic to linear, in units of ``scale``.
    """

    per_atom: bool = False
    kinds: tuple[str, ...] = ("mse", "mae", "huber")

    def __init__(
        self, kind: Kind = "mse", reduction: Reduction = "mean", scale: float = 1.0, huber_delta: float = 0.01
    ) -> None:
        super().__init__(reduction, scale)
        if kind not in self.kinds:
            raise ValueError(f"loss '{self.name}': unknown kind '{kind}': expected one of {', '.join(self.kinds)}")
        if not huber_delta > 0:
            raise ValueError(f"loss '{self.name}': huber_delta must be positive, got {huber_delta}")
        self.kind, self.huber_delta = kind, float(huber_delta)

    def values(self, prediction: Mapping[str, Tensor], batch) -> tuple[Tensor, Tensor]:
        """Predicted and labelled values of equal shape (R, ...), one row per structure or atom."""
        raise NotImplementedError

    def forward(self, prediction: Mapping[str, Tensor], batch) -> Tensor:
        predicted, target = self.values(prediction, batch)
        rows = structure_of_rows(batch, self.per_atom)
        weight, kept = row_weights(batch, self.per_atom, predicted.dtype)
        self.check_labels(target, rows, batch, "the label")
        missing = target.isnan()
        if self.kind == "l2":
            # the norm of a vector needs all its components
            valid = kept & ~missing.reshape(len(target), -1).any(dim=1)
            self.check_finite(predicted, rows, batch, "the prediction", considered=valid)
            error = (predicted[valid] - target[valid].to(predicted.dtype)) / self.scale
            per_entry = torch.linalg.vector_norm(error, dim=-1) * weight[valid]
            entry_rows = rows[valid]
        else:
            valid = broadcast_rows(kept, target) & ~missing
            self.check_finite(predicted, rows, batch, "the prediction", considered=valid)
            error = (predicted[valid] - target[valid].to(predicted.dtype)) / self.scale
            per_entry = elementwise_error(error, self.kind, self.huber_delta) * broadcast_rows(weight, target)[valid]
            entry_rows = broadcast_rows(rows, target)[valid]
        self.check_finite(per_entry, entry_rows, batch, "the loss")
        return self.reduce(per_entry)


class EnergyPerAtomLoss(LabelLoss):
    """Error of the energy per atom.

    Entries: one per structure, ``E/N`` in eV/atom (``prediction['energy']`` and
    ``batch.energy`` (B,) eV, ``batch.n_atoms`` (B,)); ``scale`` in eV/atom, typically the spread
    of the per-atom energy in the training set.
    """

    name = "energy"
    required_labels = ("energy",)

    def values(self, prediction, batch):
        n_atoms = batch.n_atoms.to(prediction["energy"].dtype)
        return prediction["energy"] / n_atoms, self.label(batch, "energy") / n_atoms


class ForcesLoss(LabelLoss):
    """Error of the forces, eV/Å (``prediction['forces']`` and ``batch.forces`` (N, 3)).

    ``mse``, ``mae``, ``huber``: three entries per atom, one per Cartesian component.
    ``l2``: one entry per atom, the length ‖F_pred − F_label‖ / scale of its force error (an atom
    is kept only with all three components labelled). ``scale`` is the force RMS, eV/Å.
    """

    name = "forces"
    required_labels = ("forces",)
    per_atom = True
    kinds = ("mse", "mae", "huber", "l2")

    def values(self, prediction, batch):
        return prediction["forces"], self.label(batch, "forces")


class StressLoss(LabelLoss):
    """Error of the six Voigt stress components, eV/Å³ (``prediction['stress']`` and
    ``batch.stress`` (B, 6), ASE sign). Structures without a stress label (NaN, e.g. molecules,
    whose predicted stress is NaN too) are skipped. ``scale`` is the stress RMS, eV/Å³."""

    name = "stress"
    required_labels = ("stress",)

    def values(self, prediction, batch):
        return prediction["stress"], self.label(batch, "stress")


class AtomicEnergiesLoss(LabelLoss):
    """Error of the per-atom energies, each measured from its own side's isolated-atom energy.

    ``entry_i = (E_i^student − E0_student[Z_i]) − (E_i^teacher − E0_teacher[Z_i])``, eV, one per
    atom (``prediction['atomic_energies']`` and ``batch.atomic_energies`` (N,), NaN where the
    teacher gives none). Teacher and student may reference their energies differently (a
    student's E0 is often fitted to the data); the share of the binding energy each atom carries
    is what the teacher can teach, so each side loses its own E0 first. With ``teacher_e0`` left
    out, both sides are taken to share one reference and the raw per-atom energies are compared.
    ``scale`` is in eV, typically the spread of the per-atom energy.

    Args:
        teacher_e0: the teacher's isolated-atom energy per element, ``{Z: eV}`` (string keys
            accepted), e.g. from the label file's ``isolated_atoms``.
        student_e0: the student's E0 (``model.e0``); required with ``teacher_e0``.
        kind, reduction, scale, huber_delta: as for :class:`LabelLoss`.
    """

    name = "atomic_energies"
    required_labels = ("atomic_energies",)
    per_atom = True

    def __init__(
        self,
        teacher_e0: Mapping[int | str, float] | None = None,
        student_e0: Mapping[int | str, float] | None = None,
        kind: Kind = "mse",
        reduction: Reduction = "mean",
        scale: float = 1.0,
        huber_delta: float = 0.01,
    ) -> None:
        super().__init__(kind, reduction, scale, huber_delta)
        if (teacher_e0 is None) != (student_e0 is None):
            raise ValueError(
                f"loss '{self.name}': give both teacher_e0 and student_e0, or neither (one shared reference)"
            )
        self.referenced = teacher_e0 is not None
        self.register_buffer("teacher_e0", _e0_table(teacher_e0), persistent=False)
        self.register_buffer("student_e0", _e0_table(student_e0), persistent=False)

    @classmethod
    def from_config(cls, options: dict[str, Any], scale: float, model: nn.Module | None) -> AtomicEnergiesLoss:
        """``student_e0`` defaults to the model's E0 when ``teacher_e0`` is given."""
        if options.get("teacher_e0") is not None and options.get("student_e0") is None and model is not None:
            options = {**options, "student_e0": model.e0}
        return cls(scale=scale, **options)

    def values(self, prediction, batch):
        predicted, target = prediction["atomic_energies"], self.label(batch, "atomic_energies")
        if not self.referenced:
            return predicted, target
        numbers = batch.numbers
        teacher_e0, student_e0 = self.teacher_e0[numbers], self.student_e0[numbers]
        unknown = teacher_e0.isnan() | student_e0.isnan()
        if bool(unknown.any()):
            names = sorted({chemical_symbols[z] for z in numbers[unknown].tolist()})
            raise ValueError(f"loss '{self.name}': no E0 for element(s) {', '.join(names)}")
        return predicted - student_e0.to(predicted.dtype), target - teacher_e0.to(target.dtype)


def _e0_table(e0: Mapping[int | str, float] | None) -> Tensor:
    """E0 indexed by atomic number, NaN for elements without one."""
    table = torch.full((len(chemical_symbols),), float("nan"), dtype=torch.float64)
    for number, energy in (e0 or {}).items():
        table[int(number)] = float(energy)
    return table
