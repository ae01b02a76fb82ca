"""Loss terms: each an ``nn.Module`` with one job, combined with weights by :class:`TotalLoss`.

Contract of a term (the distillation-specific terms join through the same contract):

==================  =====================================================================
member              meaning
==================  =====================================================================
``name``            key under which the term is logged (``loss_<name>``)
``required_labels`` label keys of the batch the term reads; missing (NaN) entries are masked
``forward``         ``(prediction, batch) -> Tensor``: the reduced loss (dimensionless)
==================  =====================================================================

``prediction`` is the model's output dict (``energy`` (B,) eV, ``forces`` (N, 3) eV/Å,
``stress`` (B, 6) eV/Å³); ``batch`` the graph batch of :mod:`mlip_distill.data.graph` carrying
the labels under the same keys. Every error is divided by a scale from the dataset statistics
(energy per atom, force RMS, stress RMS) so that a weight of one means the same for each term.

Reduction and data parallelism: with ``reduction='mean'`` the sum of the per-entry errors is
divided by the number of valid entries *summed over all ranks*. Averaging each rank's mean
instead would weight an atom in a batch of small structures more than an atom in a batch of
large ones, so the result would depend on how the data are sharded. DDP averages gradients over
ranks, so the local sum is multiplied by the world size to undo that average.
"""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import torch
import torch.distributed as dist
from torch import Tensor, nn

Kind = Literal["mse", "mae", "huber"]
Reduction = Literal["mean", "sum", "none"]


def _global_count(count: Tensor) -> tuple[Tensor, int]:
    """Number of valid entries over all data-parallel ranks, and the world size."""
    if dist.is_available() and dist.is_initialized():
        count = count.detach().clone()
        dist.all_reduce(count)
        return count, dist.get_world_size()
    return count, 1


def _elementwise(error: Tensor, kind: Kind, huber_delta: float) -> Tensor:
    if kind == "mse":
        return error.square()
    if kind == "mae":
        return error.abs()
    if kind == "huber":
        return nn.functional.huber_loss(error, torch.zeros_like(error), reduction="none", delta=huber_delta)
    raise ValueError(f"unknown loss kind '{kind}': expected mse, mae or huber")


class LabelLoss(nn.Module):
    """A per-entry error between a predicted and a labelled quantity, masked where the label is NaN.

    Args:
        kind: ``mse``, ``mae`` or ``huber`` (on the scaled error; ``huber_delta`` in scaled units).
        reduction: ``mean`` (over valid entries of all ranks), ``sum`` or ``none`` (the valid
            entries' values, flattened: their mean equals the ``mean`` reduction on one rank).
        scale: the quantity's unit of error (eV/atom, eV/Å or eV/Å³), from dataset statistics.
    """

    name: str = ""
    required_labels: tuple[str, ...] = ()

    def __init__(
        self, kind: Kind = "mse", reduction: Reduction = "mean", scale: float = 1.0, huber_delta: float = 0.01
    ) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"loss '{self.name}': scale must be positive, got {scale}")
        self.kind, self.reduction, self.scale, self.huber_delta = kind, reduction, float(scale), huber_delta

    def values(self, prediction: Mapping[str, Tensor], batch) -> tuple[Tensor, Tensor]:
        """Predicted and labelled values of equal shape, in the same units."""
        raise NotImplementedError

    def forward(self, prediction: Mapping[str, Tensor], batch) -> Tensor:
        predicted, target = self.values(prediction, batch)
        valid = torch.isfinite(target)
        error = (predicted[valid] - target[valid]) / self.scale
        per_entry = _elementwise(error, self.kind, self.huber_delta)
        if self.reduction == "none":
            return per_entry
        total = per_entry.sum()
        if self.reduction == "sum":
            return total
        count, world = _global_count(valid.sum().to(total.dtype))
        return total * world / count.clamp(min=1)


class EnergyPerAtomLoss(LabelLoss):
    """Error of the energy per atom, E/N (eV/atom), one entry per structure."""

    name = "energy"
    required_labels = ("energy",)

    def values(self, prediction, batch):
        n_atoms = batch.n_atoms.to(prediction["energy"].dtype)
        return prediction["energy"] / n_atoms, batch.energy / n_atoms


class ForcesLoss(LabelLoss):
    """Error of the force components (eV/Å), three entries per atom."""

    name = "forces"
    required_labels = ("forces",)

    def values(self, prediction, batch):
        return prediction["forces"], batch.forces


class StressLoss(LabelLoss):
    """Error of the six Voigt stress components (eV/Å³); structures without stress skip it."""

    name = "stress"
    required_labels = ("stress",)

    def values(self, prediction, batch):
        return prediction["stress"], batch.stress


TERMS: dict[str, type[LabelLoss]] = {
    term.name: term for term in (EnergyPerAtomLoss, ForcesLoss, StressLoss)
}


class TotalLoss(nn.Module):
    """Weighted sum of loss terms.

    ``forward`` returns ``(total, parts)`` where ``parts`` maps ``<name>`` to the raw value
    and ``<name>_weighted`` to weight × raw, for logging each term separately.
    """

    def __init__(self, terms: Sequence[LabelLoss], weights: Sequence[float]) -> None:
        super().__init__()
        if len(terms) != len(weights) or not terms:
            raise ValueError("TotalLoss needs one weight per term and at least one term")
        self.terms = nn.ModuleList(terms)
        self.weights = [float(w) for w in weights]

    @property
    def needs_stress(self) -> bool:
        return any("stress" in term.required_labels for term, w in zip(self.terms, self.weights) if w > 0)

    def forward(self, prediction: Mapping[str, Tensor], batch) -> tuple[Tensor, dict[str, Tensor]]:
        parts: dict[str, Tensor] = {}
        total = None
        for term, weight in zip(self.terms, self.weights):
            raw = term(prediction, batch)
            parts[term.name] = raw.detach()
            parts[f"{term.name}_weighted"] = (weight * raw).detach()
            total = weight * raw if total is None else total + weight * raw
        return total, parts


def build_loss(spec: Mapping[str, Mapping], scales: Mapping[str, float]) -> TotalLoss:
    """A :class:`TotalLoss` from a config mapping ``{name: {weight, kind, huber_delta}}``.

    ``scales`` maps each term name to its unit of error from the dataset statistics.
    """
    terms, weights = [], []
    for name, options in spec.items():
        if name not in TERMS:
            raise ValueError(f"unknown loss term '{name}': expected one of {sorted(TERMS)}")
        options = dict(options)
        weight = float(options.pop("weight", 1.0))
        if weight == 0:
            continue
        terms.append(TERMS[name](scale=scales.get(name, 1.0), **options))
        weights.append(weight)
    return TotalLoss(terms, weights)
