"""Mixed precision for the students: e3nn layers made safe under autocast, and the error of
energies, forces and stress computed in bfloat16 or float16 against float32."""

from __future__ import annotations

import math
from typing import Any

import torch
from e3nn import o3
from torch import nn

MIXED = ("bf16-mixed", "16-mixed")


def _same_dtype_as_weights(layer: o3.Linear, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
    if not torch.is_autocast_enabled(args[0].device.type):
        return None
    dtype = layer.weight.dtype if layer.weight.numel() else torch.get_default_dtype()
    cast = [a.to(dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args]
    kwargs = {k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in kwargs.items()}
    return tuple(cast), kwargs


def make_autocast_safe(model: nn.Module) -> int:
    """Let ``model`` run inside ``torch.autocast``.

    e3nn's :class:`~e3nn.o3.Linear` contracts features and weights with ``torch.tensordot``,
    which autocast leaves alone and which refuses a bfloat16 input (the output of an autocast
    matrix product) against float32 weights. Each such layer gets its inputs cast to its weights'
    dtype, so the contraction runs in float32 while autocast still lowers the matrix products.
    Returns the number of layers changed; a second call changes none.
    """
    changed = 0
    for layer in model.modules():
        if isinstance(layer, o3.Linear) and not getattr(layer, "_autocast_safe", False):
            layer.register_forward_pre_hook(_same_dtype_as_weights, with_kwargs=True)
            layer._autocast_safe = True
            changed += 1
    return changed


def _rms(values: torch.Tensor) -> float:
    return math.sqrt(float(values.double().square().mean()))


def precision_error(model: nn.Module, batch: Any, dtype: torch.dtype) -> dict[str, float]:
    """Energy, force and stress of ``model`` on ``batch`` under autocast to ``dtype`` against
    the same model without autocast (forces and stress by autograd in both).

    Returns:
        ``energy_rmse_mev_per_atom``, ``forces_rmse_mev_per_A``, ``stress_rmse_mev_per_A3`` and
        ``forces_relative`` (RMS error over RMS force, dimensionless).
    """
    make_autocast_safe(model)
    device = batch.pos.device.type
    reference = model(batch, compute_forces=True, compute_stress=True)
    with torch.autocast(device, dtype=dtype):
        lowered = model(batch, compute_forces=True, compute_stress=True)
    n_atoms = batch.n_atoms.double()
    force_error = lowered["forces"].detach().double() - reference["forces"].detach().double()
    return {
        "energy_rmse_mev_per_atom": 1e3 * _rms((lowered["energy"].detach().double() - reference["energy"].detach().double()) / n_atoms),
        "forces_rmse_mev_per_A": 1e3 * _rms(force_error),
        "stress_rmse_mev_per_A3": 1e3 * _rms(lowered["stress"].detach().double() - reference["stress"].detach().double()),
        "forces_relative": _rms(force_error) / _rms(reference["forces"].detach()),
    }
