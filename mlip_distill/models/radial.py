"""Radial functions of the interatomic distance: a Bessel basis and a smooth cutoff envelope."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class BesselBasis(nn.Module):
    """Radial Bessel functions ``sqrt(2/c) sin(n π r / c) / r``, n = 1 … num_basis.

    Args:
        cutoff: c, Å.
        num_basis: number of functions.
        trainable: learn the frequencies ``n π / c`` instead of keeping them fixed.

    Shapes:
        ``distances`` (E,) Å → (E, num_basis), Å^-3/2.
    """

    def __init__(self, cutoff: float, num_basis: int = 8, trainable: bool = False) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.num_basis = int(num_basis)
        frequencies = torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype()) * math.pi / cutoff
        if trainable:
            self.frequencies = nn.Parameter(frequencies)
        else:
            self.register_buffer("frequencies", frequencies)
        self.prefactor = math.sqrt(2.0 / cutoff)

    def forward(self, distances: Tensor) -> Tensor:
        r = distances.unsqueeze(-1)
        return self.prefactor * torch.sin(self.frequencies * r) / r


class PolynomialCutoff(nn.Module):
    """NequIP's polynomial envelope u(r/c): 1 at r = 0, and it and its first ``p - 1``
    derivatives vanish at r = c (so energies, forces and force derivatives are continuous).

    ``u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^{p+1} - p(p+1)/2 x^{p+2}`` for x < 1, else 0.

    Shapes:
        ``distances`` (E,) Å → (E,), dimensionless.
    """

    def __init__(self, cutoff: float, power: int = 6) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.power = int(power)

    def forward(self, distances: Tensor) -> Tensor:
        p = float(self.power)
        x = distances / self.cutoff
        envelope = (
            1.0
            - (p + 1.0) * (p + 2.0) / 2.0 * torch.pow(x, p)
            + p * (p + 2.0) * torch.pow(x, p + 1.0)
            - p * (p + 1.0) / 2.0 * torch.pow(x, p + 2.0)
        )
        return envelope * (x < 1.0).to(envelope.dtype)
