"""Student potentials and the registry that builds them by name.

``build_model(name, **hyperparameters)`` rebuilds any student from ``model.hyperparameters()``.
"""

from __future__ import annotations

from typing import Any

from mlip_distill.models.base import StudentPotential
from mlip_distill.models.nequip import NequIP
from mlip_distill.models.painn import PaiNN

MODELS: dict[str, type[StudentPotential]] = {"nequip": NequIP, "painn": PaiNN}
MODEL_NAMES: tuple[str, ...] = tuple(MODELS)


def build_model(name: str, **hyperparameters: Any) -> StudentPotential:
    """A student of architecture ``name`` (one of :data:`MODEL_NAMES`) with fresh weights."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    return MODELS[name](**hyperparameters)


__all__ = ["MODEL_NAMES", "NequIP", "PaiNN", "StudentPotential", "build_model"]
