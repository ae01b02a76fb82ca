"""Error metrics of predictions against labels, accumulated over batches.

One mechanism serves validation during training and ``mlip-distill eval``. Errors are reported
in meV/atom (energy per atom), meV/Å (force components) and meV/Å³ (stress components), under
keys such as ``energy_mae_mev_per_atom``, ``forces_rmse_mev_per_A`` and ``stress_mae_mev_per_A3``.
Entries whose label is NaN are left out.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.distributed as dist
from torch import Tensor

QUANTITIES = {
    "energy": "mev_per_atom",
    "forces": "mev_per_A",
    "stress": "mev_per_A3",
}


def _pairs(prediction: Mapping[str, Tensor], batch) -> dict[str, tuple[Tensor, Tensor]]:
    pairs = {}
    if "energy" in prediction:
        n_atoms = batch.n_atoms.to(prediction["energy"].dtype)
        pairs["energy"] = (prediction["energy"] / n_atoms, batch.energy / n_atoms)
    for key in ("forces", "stress"):
        if key in prediction:
            pairs[key] = (prediction[key], batch[key])
    return pairs


class ErrorMetrics:
    """Running sums of absolute and squared errors per quantity (float64 on the CPU)."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._abs: dict[str, float] = {key: 0.0 for key in QUANTITIES}
        self._sq: dict[str, float] = {key: 0.0 for key in QUANTITIES}
        self._count: dict[str, int] = {key: 0 for key in QUANTITIES}

    def update(self, prediction: Mapping[str, Tensor], batch) -> None:
        """Add one batch: ``prediction`` as returned by a student, ``batch`` with labels."""
        for key, (predicted, target) in _pairs(prediction, batch).items():
            valid = torch.isfinite(target)
            error = (predicted.detach()[valid] - target[valid]).double()
            self._abs[key] += error.abs().sum().item()
            self._sq[key] += error.square().sum().item()
            self._count[key] += int(valid.sum())

    def compute(self, all_processes: bool = False) -> dict[str, float]:
        """MAE and RMSE in meV units for every quantity that had a valid label.

        ``all_processes``: under data parallelism, first add up the errors of every process, so
        that each gets the errors over all the data (every process must then call this together;
        averaging each process's RMSE instead would be wrong).
        """
        sums = torch.tensor([[self._abs[k], self._sq[k], self._count[k]] for k in QUANTITIES], dtype=torch.float64)
        if all_processes and dist.is_available() and dist.is_initialized():
            dist.all_reduce(sums)
        result = {}
        for (key, unit), (absolute, squared, n) in zip(QUANTITIES.items(), sums.tolist()):
            if n == 0:
                continue
            result[f"{key}_mae_{unit}"] = 1000.0 * absolute / n
            result[f"{key}_rmse_{unit}"] = 1000.0 * (squared / n) ** 0.5
        return result
