"""`mlip-distill eval`: errors of a potential against every label source of a data file."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch import nn
from torch_geometric.loader import DataLoader

from .data.dataset import GraphDataset
from .data.errors import DataError
from .data.store import LabelStore, import_structures
from .metrics import ErrorMetrics
from .package import Potential, load_potential


def _is_label_file(path: Path) -> bool:
    return path.suffix.lower() in (".h5", ".hdf5")


def evaluate_model(model: nn.Module, batches: Iterable) -> dict[str, float]:
    """MAE and RMSE (meV units) of a student over labelled graph batches; stress where labelled."""
    device = next(model.parameters()).device
    metrics = ErrorMetrics()
    for batch in batches:
        batch = batch.to(device)
        with_stress = bool(torch.isfinite(batch.stress).any())
        prediction = model(batch, compute_forces=True, compute_stress=with_stress, create_graph=False)
        metrics.update(prediction, batch)
    return metrics.compute()


def evaluate_store(
    potential: Potential, store_path: str | Path, sources: Sequence[str] | None = None, batch_size: int = 16,
    indices: Sequence[int] | None = None, name: str | None = None,
) -> dict[str, dict[str, float]]:
    """MAE and RMSE (meV units) of ``potential`` against each label source of a label file.

    Returns ``{source: {"energy_mae_mev_per_atom": ..., "forces_rmse_mev_per_A": ..., ...}}``
    plus ``n_structures`` per source. ``name`` is how errors refer to the data (default its path).
    """
    name = name or str(store_path)
    model = potential.model
    dtype = next(model.parameters()).dtype
    with LabelStore(store_path) as store:
        available = store.sources()
        for index in indices if indices is not None else range(len(store)):
            potential.check_elements(store.arrays(index)["numbers"], where=f"{name}: structure {index}")
    results = {}
    for source in sources or available:
        if source not in available:
            raise DataError(f"{name}: no label source '{source}' (it has {', '.join(available) or 'none'})")
        dataset = GraphDataset(store_path, source, potential.cutoff, indices=indices, require=(), dtype=dtype)
        results[source] = {**evaluate_model(model, DataLoader(dataset, batch_size=batch_size)), "n_structures": len(dataset)}
    return results


def evaluate_file(
    potential_dir: str | Path, data_path: str | Path, sources: Sequence[str] | None = None, batch_size: int = 16
) -> dict[str, dict[str, float]]:
    """Like :func:`evaluate_store` for a package folder and a label file or any ASE-readable file.

    Labels inside an ASE file are compared as the ``reference`` source.
    """
    potential = load_potential(potential_dir)
    data_path = Path(data_path)
    if _is_label_file(data_path):
        return evaluate_store(potential, data_path, sources, batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        store_path = Path(tmp) / "labels.h5"
        import_structures(data_path, store_path, source="reference")
        return evaluate_store(potential, store_path, sources, batch_size, name=str(data_path))


def format_errors(results: dict[str, dict[str, float]]) -> str:
    """A table of MAE and RMSE per source and quantity."""
    lines = [f"{'source':<12} {'quantity':<8} {'MAE':>10} {'RMSE':>10}  unit"]
    units = {"energy": ("mev_per_atom", "meV/atom"), "forces": ("mev_per_A", "meV/Å"), "stress": ("mev_per_A3", "meV/Å³")}
    for source, metrics in results.items():
        for quantity, (key, unit) in units.items():
            mae = metrics.get(f"{quantity}_mae_{key}")
            if mae is not None:
                rmse = metrics[f"{quantity}_rmse_{key}"]
                lines.append(f"{source:<12} {quantity:<8} {mae:>10.3f} {rmse:>10.3f}  {unit}")
    return "\n".join(lines)
