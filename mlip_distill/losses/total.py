"""The weighted sum of loss terms, and its construction from a config mapping."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from torch import Tensor, nn

from mlip_distill.losses.base import LossTerm
from mlip_distill.losses.features import FeatureMatchingLoss
from mlip_distill.losses.hessian import HessianLoss
from mlip_distill.losses.labels import AtomicEnergiesLoss, EnergyPerAtomLoss, ForcesLoss, StressLoss
from mlip_distill.losses.soft_targets import BoltzmannKLLoss

TERMS: dict[str, type[LossTerm]] = {
    term.name: term
    for term in (
        EnergyPerAtomLoss,
        ForcesLoss,
        StressLoss,
        AtomicEnergiesLoss,
        FeatureMatchingLoss,
        HessianLoss,
        BoltzmannKLLoss,
    )
}


class TotalLoss(nn.Module):
    """Weighted sum of loss terms.

    ``forward`` returns ``(total, parts)`` where ``parts`` maps ``<name>`` to the raw value
    and ``<name>_weighted`` to weight × raw, for logging each term separately. The terms'
    parameters (projection heads of feature matching) are this module's parameters: they train
    with the student and are never exported with it.
    """

    def __init__(self, terms: Sequence[LossTerm], weights: Sequence[float]) -> None:
        super().__init__()
        if len(terms) != len(weights) or not terms:
            raise ValueError("TotalLoss needs one weight per term and at least one term")
        self.terms = nn.ModuleList(terms)
        self.weights = [float(w) for w in weights]

    @property
    def needs_stress(self) -> bool:
        """A term reads stress labels, so the model must compute stress."""
        return any("stress" in term.required_labels for term, w in zip(self.terms, self.weights) if w > 0)

    @property
    def requires_position_grad(self) -> bool:
        """A term differentiates forces by positions: set ``batch.pos.requires_grad_(True)``
        before the model and run it with ``create_graph=True``, in validation too."""
        return any(term.requires_position_grad for term, w in zip(self.terms, self.weights) if w > 0)

    def forward(self, prediction: Mapping[str, Any], batch) -> tuple[Tensor, dict[str, Tensor]]:
        parts: dict[str, Tensor] = {}
        total = None
        for term, weight in zip(self.terms, self.weights):
            raw = term(prediction, batch)
            parts[term.name] = raw.detach()
            parts[f"{term.name}_weighted"] = (weight * raw).detach()
            total = weight * raw if total is None else total + weight * raw
        return total, parts


def build_loss(
    spec: Mapping[str, Mapping[str, Any]], scales: Mapping[str, float], model: nn.Module | None = None
) -> TotalLoss:
    """A :class:`TotalLoss` from a config mapping ``{name: {weight, kind, ...term options}}``.

    ========================  ===============================================================
    name                      options besides ``weight`` (0 drops the term), ``kind``,
                              ``reduction`` and ``scale``
    ========================  ===============================================================
    ``energy``                ``huber_delta``; kind mse, mae, huber
    ``forces``                ``huber_delta``; kind mse, mae, huber or l2 (per-atom length)
    ``stress``                ``huber_delta``
    ``atomic_energies``       ``teacher_e0`` ``{Z: eV}``, ``student_e0`` (default: the model's)
    ``features``              ``student_layer``, ``teacher_layer``, ``teacher_irreps``,
                              ``student_irreps`` (default: the model's); kind mse or cosine
    ``hessian``               ``huber_delta``
    ``boltzmann_kl``          ``tau``, ``energy_unit`` (eV); no kind, no scale
    ========================  ===============================================================

    ``scales`` maps a term name to its unit of error from the dataset statistics (1 if absent;
    a ``scale`` option overrides it). ``model``, the student, supplies defaults that the options
    leave out.
    """
    terms, weights = [], []
    for name, options in spec.items():
        if name not in TERMS:
            raise ValueError(f"unknown loss term '{name}': expected one of {sorted(TERMS)}")
        options = dict(options)
        weight = float(options.pop("weight", 1.0))
        if weight < 0:
            raise ValueError(f"loss term '{name}': weight must not be negative, got {weight}")
        if weight == 0:
            continue
        scale = float(options.pop("scale", scales.get(name, 1.0)))
        try:
            terms.append(TERMS[name].from_config(options, scale, model))
        except TypeError as error:
            raise ValueError(f"loss term '{name}': {error}") from error
        weights.append(weight)
    return TotalLoss(terms, weights)
