"""Re-fit the student's per-element E0 to the training energies after training."""

from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np
import torch


def refit_e0(model, batches: Iterable, start: Mapping[int, float] | None = None) -> dict[int, float]:
    """Shift each element's E0 so that the mean energy error on ``batches`` is zero.

    With fitted E0s, a lightly weighted energy term leaves the student's energies offset by a
    few meV/atom; forces and stress do not see a constant per-element shift, so this least-squares
    correction of ``E_label - E_student`` on element counts only removes that offset. Where the
    structures cannot tell elements apart (one composition, as in a single molecule's frames),
    the smallest shift is taken, so the E0s should start close: pass ``start``.

    Args:
        model: a student (:class:`~mlip_distill.models.base.StudentPotential`), updated in place.
        batches: labelled graph batches, e.g. the training loader.
        start: E0s to shift from, ``{Z: eV}`` for every element of the model (e.g. the
            isolated-atom energies of the labels' source); default the model's own.
    Returns:
        The new E0s, ``{Z: eV}``.
    """
    if start is not None:
        model.set_e0({z: float(start[z]) for z in model.elements})
    elements = list(model.elements)
    device = next(model.parameters()).device
    counts, residuals = [], []
    for batch in batches:
        batch = batch.to(device)
        with torch.no_grad():
            energy = model(batch, compute_forces=False)["energy"]
        per_structure = torch.zeros(batch.num_graphs, len(elements), dtype=torch.float64, device=device)
        ones = torch.ones(batch.num_nodes, dtype=torch.float64, device=device)
        per_structure.index_put_((batch.batch, model.species(batch.numbers)), ones, accumulate=True)
        labelled = torch.isfinite(batch.energy)
        counts.append(per_structure[labelled].cpu().numpy())
        residuals.append((batch.energy - energy)[labelled].double().cpu().numpy())
    if not counts or not sum(len(r) for r in residuals):
        return dict(model.e0)
    shift, *_ = np.linalg.lstsq(np.concatenate(counts), np.concatenate(residuals), rcond=None)
    new_e0 = {z: model.e0[z] + float(shift[k]) for k, z in enumerate(elements)}
    model.set_e0(new_e0)
    return new_e0
