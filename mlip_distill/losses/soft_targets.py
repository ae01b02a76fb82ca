"""Temperature-scaled KL divergence on soft targets: class logits, and Boltzmann weights of the
conformers of one system."""

from __future__ import annotations

import warnings
from typing import Any, Mapping

import torch
from ase.units import kB
from torch import Tensor, nn

from mlip_distill.losses.base import LossTerm, Reduction, reduce_entries, row_weights

ROOM_TEMPERATURE_ENERGY = kB * 300.0
"""k_B · 300 K, eV (≈ 25.9 meV)."""


def log_softmax_by_group(logits: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """``log p_i`` with ``p_i = exp(logit_i) / Σ_{j in group(i)} exp(logit_j)``, (M,), for
    logits (M,) and their group index (M,) in ``[0, num_groups)``."""
    maxima = torch.full((num_groups,), -torch.inf, dtype=logits.dtype, device=logits.device)
    maxima = maxima.scatter_reduce(0, group, logits.detach(), reduce="amax")
    shifted = logits - maxima[group]
    sums = torch.zeros(num_groups, dtype=logits.dtype, device=logits.device).index_add(0, group, shifted.exp())
    return shifted - sums.log()[group]


def tempered_kl(
    student_logits: Tensor, teacher_logits: Tensor, group: Tensor, num_groups: int, tau: float
) -> Tensor:
    """``τ² · KL(p_teacher ‖ p_student)`` per group, (G,), with ``p = softmax(logits / τ)``
    taken within each group; logits (M,), group index (M,)."""
    log_p_student = log_softmax_by_group(student_logits / tau, group, num_groups)
    log_p_teacher = log_softmax_by_group(teacher_logits.to(student_logits.dtype) / tau, group, num_groups)
    terms = log_p_teacher.exp() * (log_p_teacher - log_p_student)
    divergence = torch.zeros(num_groups, dtype=terms.dtype, device=terms.device).index_add(0, group, terms)
    return tau**2 * divergence


class SoftTargetKL(nn.Module):
    """Knowledge distillation on class logits (Hinton, Vinyals and Dean, "Distilling the knowledge
    in a neural network", 2015).

    ``loss_r = τ² Σ_c p_c^teacher (log p_c^teacher − log p_c^student)`` per row, with
    ``p = softmax(logits / τ)``. Softening by τ exposes the teacher's relative preferences among
    unlikely classes; the gradient of the softened KL shrinks as 1/τ², which τ² restores, so the
    term's weight means the same at any τ.

    Args:
        tau: temperature, > 0 (typically 1–20).
        reduction: ``mean`` or ``sum`` over rows, or ``none`` (R,).

    Shapes: ``student_logits`` and ``teacher_logits`` (R, C), dimensionless.
    """

    def __init__(self, tau: float = 1.0, reduction: Reduction = "mean") -> None:
        super().__init__()
        if not tau > 0:
            raise ValueError(f"SoftTargetKL: tau must be positive, got {tau}")
        self.tau, self.reduction = float(tau), reduction

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
            raise ValueError(
                f"SoftTargetKL: logits must both be (rows, classes), got {tuple(student_logits.shape)} "
                f"and {tuple(teacher_logits.shape)}"
            )
        rows, classes = student_logits.shape
        group = torch.arange(rows, device=student_logits.device).repeat_interleave(classes)
        per_row = tempered_kl(student_logits.reshape(-1), teacher_logits.reshape(-1), group, rows, self.tau)
        return reduce_entries(per_row, self.reduction)


class BoltzmannKLLoss(LossTerm):
    """KL divergence between the teacher's and the student's Boltzmann weights of the conformers
    of one system, one entry per system with at least two conformers in the batch.

    For the structures ``i`` of one system (same ``batch.system_id``, same atom count),
    ``p_i ∝ exp(−E_i / (τ ε))`` with E the total energy (``prediction['energy']`` and
    ``batch.energy`` (B,) eV), ``ε`` the energy unit (eV, default k_B · 300 K) and ``τ`` the
    distillation temperature (1–20); ``entry = τ² KL(p_teacher ‖ p_student)`` (dimensionless,
    ≥ 0). It depends only on energy differences within a system, so a constant offset between
    student and teacher (different E0) costs nothing; it penalises a wrong energy ordering of
    the conformers. τ² keeps the gradient's size comparable across τ (Hinton, Vinyals and Dean,
    "Distilling the knowledge in a neural network", 2015). A system's weight is the mean weight
    of its structures; masked structures and those without a teacher energy leave their system.

    The batches must hold several conformers of a system
    (:class:`~mlip_distill.data.sampler.SystemBatchSampler`); a batch with none contributes
    nothing, with a warning the first time.

    Args:
        tau: distillation temperature, > 0.
        energy_unit: ε, eV.
        reduction: see :class:`~mlip_distill.losses.base.LossTerm` (entries are systems).
    """

    name = "boltzmann_kl"
    required_labels = ("energy",)

    def __init__(
        self, tau: float = 1.0, energy_unit: float = ROOM_TEMPERATURE_ENERGY, reduction: Reduction = "mean"
    ) -> None:
        super().__init__(reduction)
        if not tau > 0 or not energy_unit > 0:
            raise ValueError(f"loss '{self.name}': tau and energy_unit must be positive, got {tau} and {energy_unit}")
        self.tau, self.energy_unit = float(tau), float(energy_unit)
        self.warned = False

    @classmethod
    def from_config(cls, options: dict[str, Any], scale: float, model: nn.Module | None) -> BoltzmannKLLoss:
        """The dataset scale plays no part: the energy unit is ``energy_unit``."""
        return cls(**options)

    def forward(self, prediction: Mapping[str, Tensor], batch) -> Tensor:
        predicted, target = prediction["energy"], self.label(batch, "energy")
        structures = torch.arange(len(predicted), device=predicted.device)
        weight, kept = row_weights(batch, False, predicted.dtype)
        self.check_labels(target, structures, batch, "the teacher's energy")
        kept = kept & ~target.isnan()
        _, system = torch.unique(self.label(batch, "system_id"), return_inverse=True)
        kept_conformers = torch.bincount(system[kept], minlength=len(system))
        in_ensemble = kept & (kept_conformers[system] >= 2)
        if not bool(in_ensemble.any()) and not self.warned:
            self.warned = True
            warnings.warn(
                f"loss '{self.name}': a batch holds no two conformers of one system, so the term adds "
                "nothing; batch with mlip_distill.data.sampler.SystemBatchSampler",
                stacklevel=2,
            )
        self.check_finite(predicted, structures, batch, "the predicted energy", considered=in_ensemble)

        members = structures[in_ensemble]
        ensembles, group = torch.unique(system[in_ensemble], return_inverse=True)
        count = len(ensembles)
        self._check_same_atom_counts(batch, members, group, count)
        logits_student = -self._relative(predicted[members], group, count) / self.energy_unit
        logits_teacher = -self._relative(target[members].to(predicted.dtype), group, count) / self.energy_unit
        per_system = tempered_kl(logits_student, logits_teacher, group, count, self.tau)
        per_system = per_system * self._group_mean(weight[members], group, count)
        first_conformer = torch.full_like(ensembles, len(predicted)).scatter_reduce(0, group, members, reduce="amin")
        self.check_finite(per_system, first_conformer, batch, "the loss")
        return self.reduce(per_system)

    @staticmethod
    def _group_mean(values: Tensor, group: Tensor, count: int) -> Tensor:
        sums = torch.zeros(count, dtype=values.dtype, device=values.device).index_add(0, group, values)
        return sums / torch.bincount(group, minlength=count).to(values.dtype)

    @classmethod
    def _relative(cls, energies: Tensor, group: Tensor, count: int) -> Tensor:
        """Energies relative to their system's mean: exact offset invariance, and no precision
        lost dividing total energies of hundreds of eV by a few meV."""
        return energies - cls._group_mean(energies, group, count)[group]

    def _check_same_atom_counts(self, batch, members: Tensor, group: Tensor, count: int) -> None:
        n_atoms = batch.n_atoms[members]
        fewest = n_atoms.new_zeros(count).scatter_reduce(0, group, n_atoms, reduce="amin", include_self=False)
        most = n_atoms.new_zeros(count).scatter_reduce(0, group, n_atoms, reduce="amax", include_self=False)
        mixed = (fewest != most)[group]
        if bool(mixed.any()):
            positions = members[mixed]
            ids = batch.structure_id[positions] if "structure_id" in batch else positions
            raise ValueError(
                f"loss '{self.name}': the structures at batch positions {positions.tolist()} (dataset "
                f"structure_id {ids.tolist()}) share a system_id but have different atom counts "
                f"{n_atoms[mixed].tolist()}; conformers of one system must have the same atoms"
            )
