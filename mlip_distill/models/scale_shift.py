"""Per-element energy reference (E0) and energy scale applied to the network's raw output."""

from __future__ import annotations

from typing import Mapping

import torch
from ase.data import chemical_symbols
from torch import Tensor, nn


def normalise_e0(elements: list[int], e0: Mapping[int | str, float] | None) -> dict[int, float]:
    """E0 as ``{Z: eV}`` for every element; keys may be strings (as after a JSON round trip).

    Without ``e0`` every reference is 0 eV. Raises ``ValueError`` naming elements without one.
    """
    if e0 is None:
        return {z: 0.0 for z in elements}
    by_number = {int(z): float(value) for z, value in e0.items()}
    missing = [chemical_symbols[z] for z in elements if z not in by_number]
    if missing:
        raise ValueError(f"E0 missing for element(s) {', '.join(missing)}")
    return {z: by_number[z] for z in elements}


class AtomicEnergyScaleShift(nn.Module):
    """``atomic_energy = scale * raw + E0[element]``.

    Args:
        elements: atomic numbers, in the order of the species indices.
        e0: isolated-atom energy per element, eV (see :func:`normalise_e0`).
        scale: energy scale, eV (from data statistics, e.g. the force RMS times a length).
        learn_scale: make ``scale`` a trainable parameter.

    Shapes:
        ``raw`` (N,) dimensionless, ``species`` (N,) species index → (N,) eV.
    """

    def __init__(
        self,
        elements: list[int],
        e0: Mapping[int | str, float] | None = None,
        scale: float = 1.0,
        learn_scale: bool = False,
    ) -> None:
        super().__init__()
        references = normalise_e0(elements, e0)
        self.register_buffer("e0", torch.tensor([references[z] for z in elements]))
        scale_tensor = torch.tensor(float(scale))
        if learn_scale:
            self.scale = nn.Parameter(scale_tensor)
        else:
            self.register_buffer("scale", scale_tensor)

    def forward(self, raw: Tensor, species: Tensor) -> Tensor:
        return self.scale * raw + self.e0[species]
