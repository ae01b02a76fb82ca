"""Dataset statistics: per-element reference energies (E0), energy and force scales, neighbours.

The scales normalise a student's outputs: energies are learnt as E0 sums plus a residual whose
size is ``energy_rms_per_atom``, forces in units of ``force_rms``.
"""

from __future__ import annotations

import dataclasses
import tempfile
import warnings
from collections import Counter
from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
from ase.data import chemical_symbols

from mlip_distill.data.errors import DataError
from mlip_distill.data.graph import neighbour_list
from mlip_distill.data.store import LabelStore, import_structures


@dataclasses.dataclass
class DatasetStatistics:
    """Statistics of a set of structures and one label source.

    ==========================  =====================================================  ========
    field                       meaning                                                unit
    ==========================  =====================================================  ========
    ``source``                  label source (None: structures only)
    ``cutoff``                  neighbour cutoff                                       Å
    ``n_structures``            structures                                             count
    ``n_atoms``                 atoms in all structures                                count
    ``n_with_energy``           structures with an energy (``_forces``, ``_stress``)   count
    ``e0``                      per-element reference energy, atomic number -> value   eV
    ``e0_method``               ``isolated atoms``, ``least squares``, both, ``none``
    ``energy_rms_per_atom``     RMS over structures of (E - sum of E0) / N             eV/atom
    ``energy_mean_per_atom``    mean over structures of (E - sum of E0) / N            eV/atom
    ``force_rms``               RMS of all force components                            eV/Å
    ``mean_neighbours``         neighbours within ``cutoff`` per atom                  count
    ``element_counts``          atoms of each element, atomic number -> count          count
    ``size_histogram``          structures of each size, atoms -> structures           count
    ==========================  =====================================================  ========

    A scale without any labelled structure is NaN.
    """

    source: str | None
    cutoff: float
    n_structures: int
    n_atoms: int
    n_with_energy: int
    n_with_forces: int
    n_with_stress: int
    e0: dict[int, float]
    e0_method: str
    energy_rms_per_atom: float
    energy_mean_per_atom: float
    force_rms: float
    mean_neighbours: float
    element_counts: dict[int, int]
    size_histogram: dict[int, int]

    def as_dict(self) -> dict:
        """Plain Python types, for ``json.dump`` (integer keys become strings in JSON)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> DatasetStatistics:
        """Inverse of :meth:`as_dict`, also after a JSON round trip (string keys)."""
        values = dict(values)
        values["e0"] = {int(z): float(e) for z, e in values["e0"].items()}
        for key in ("element_counts", "size_histogram"):
            values[key] = {int(k): int(v) for k, v in values[key].items()}
        return cls(**values)


def compute_statistics(
    store_path: str | Path,
    source: str | None,
    cutoff: float,
    indices: Sequence[int] | None = None,
    e0_from: str = "isolated",
) -> DatasetStatistics:
    """Statistics of the structures ``indices`` (default all) of a label store.

    With ``e0_from="isolated"`` E0 comes from the store's isolated-atom energies of ``source``;
    elements without one get E0 from a least-squares fit of the energies on element counts
    (with a warning), the known E0 held fixed. With ``e0_from="fit"`` every E0 is fitted.

    Raises:
        DataError: no structures, or ``source`` is not in the store.
    """
    with LabelStore(store_path) as store:
        indices = np.arange(len(store)) if indices is None else np.asarray(indices, dtype=np.int64)
        if len(indices) == 0:
            raise DataError(f"{store_path}: no structures to compute statistics of")
        if e0_from not in ("isolated", "fit"):
            raise ValueError(f"e0_from must be 'isolated' or 'fit', not '{e0_from}'")
        use_isolated = source is not None and e0_from == "isolated"
        isolated = store.isolated_atoms(source) if use_isolated else {}
        element_counts: Counter[int] = Counter()
        compositions, sizes, energies = [], [], []
        n_edges, n_with_forces, n_with_stress = 0, 0, 0
        force_square_sum, n_force_components = 0.0, 0
        for index in indices:
            arrays = store.arrays(index)
            numbers = arrays["numbers"]
            composition = Counter(numbers.tolist())
            element_counts.update(composition)
            compositions.append(composition)
            sizes.append(len(numbers))
            centres, _, _ = neighbour_list(
                arrays["positions"], arrays["cell"], arrays["pbc"], cutoff
            )
            n_edges += len(centres)
            if source is None:
                energies.append(np.nan)
                continue
            labels = store.labels(source, index, features=(), hessian=False)
            energies.append(float(labels["energy"]))
            if np.isfinite(labels["forces"]).all():
                n_with_forces += 1
                force_square_sum += float(np.sum(labels["forces"] ** 2))
                n_force_components += labels["forces"].size
            n_with_stress += bool(np.isfinite(labels["stress"]).all())

    elements = sorted(element_counts)
    counts = np.array([[c[z] for z in elements] for c in compositions], dtype=np.float64)
    energies = np.array(energies)
    sizes = np.array(sizes)
    has_energy = np.isfinite(energies)
    e0, e0_method = _reference_energies(
        elements, counts[has_energy], energies[has_energy], isolated, f"source '{source}'", warn=use_isolated
    )
    if has_energy.any():
        e0_sums = counts[has_energy] @ np.array([e0[z] for z in elements])
        residual = (energies[has_energy] - e0_sums) / sizes[has_energy]
        energy_rms, energy_mean = float(np.sqrt(np.mean(residual**2))), float(np.mean(residual))
    else:
        energy_rms = energy_mean = float("nan")
    return DatasetStatistics(
        source=source,
        cutoff=float(cutoff),
        n_structures=len(indices),
        n_atoms=int(sizes.sum()),
        n_with_energy=int(has_energy.sum()),
        n_with_forces=n_with_forces,
        n_with_stress=n_with_stress,
        e0=e0,
        e0_method=e0_method,
        energy_rms_per_atom=energy_rms,
        energy_mean_per_atom=energy_mean,
        force_rms=float(np.sqrt(force_square_sum / n_force_components))
        if n_force_components
        else float("nan"),
        mean_neighbours=n_edges / int(sizes.sum()),
        element_counts={z: element_counts[z] for z in elements},
        size_histogram=dict(sorted(Counter(sizes.tolist()).items())),
    )


def _reference_energies(
    elements: list[int],
    counts: np.ndarray,
    energies: np.ndarray,
    isolated: dict[int, float],
    where: str,
    warn: bool = True,
) -> tuple[dict[int, float], str]:
    """E0 per element: isolated-atom energies where known, the rest fitted by least squares.

    Args:
        elements: atomic numbers present.  counts: (S, len(elements)) atoms of each element in
        each structure with an energy.  energies: (S,) eV.  isolated: atomic number -> eV.
    Returns:
        E0 (atomic number -> eV; elements neither known nor fittable are absent) and the method.
    """
    e0 = dict(isolated)
    missing = [k for k, z in enumerate(elements) if z not in isolated]
    if not missing:
        return e0, "isolated atoms"
    symbols = ", ".join(chemical_symbols[elements[k]] for k in missing)
    if len(energies) == 0:
        if isolated:
            warnings.warn(f"{where}: no energies, so no E0 for {symbols}", stacklevel=3)
        return e0, "isolated atoms" if isolated else "none"
    known = [k for k in range(len(elements)) if k not in missing]
    residual = energies - counts[:, known] @ np.array([isolated[elements[k]] for k in known])
    solution, _, rank, _ = np.linalg.lstsq(counts[:, missing], residual, rcond=None)
    e0.update({elements[k]: float(value) for k, value in zip(missing, solution)})
    underdetermined = (
        "; the compositions do not determine them uniquely (minimum-norm solution)"
        if rank < len(missing)
        else ""
    )
    if warn or underdetermined:
        warnings.warn(
            f"{where}: no isolated-atom energy for {symbols}: E0 fitted by least squares on "
            f"element counts{underdetermined}",
            stacklevel=3,
        )
    return e0, "isolated atoms and least squares" if isolated else "least squares"


def format_statistics(stats: DatasetStatistics) -> str:
    """A readable multi-line table of :class:`DatasetStatistics`."""
    source = f"source '{stats.source}'" if stats.source is not None else "no labels"
    lines = [
        f"Statistics ({source}, cutoff {stats.cutoff:g} Å)",
        f"  structures            {stats.n_structures:>10d}    with energy {stats.n_with_energy},"
        f" forces {stats.n_with_forces}, stress {stats.n_with_stress}",
        f"  atoms                 {stats.n_atoms:>10d}",
        f"  neighbours per atom   {stats.mean_neighbours:>10.2f}    within {stats.cutoff:g} Å",
        f"  energy RMS            {stats.energy_rms_per_atom:>10.4f}    eV/atom, after E0"
        f" ({stats.e0_method}); mean {stats.energy_mean_per_atom:.4f} eV/atom",
        f"  force RMS             {stats.force_rms:>10.4f}    eV/Å, per component",
        "",
        "  element        atoms        E0 (eV)",
    ]
    for z in sorted(set(stats.element_counts) | set(stats.e0)):
        e0 = f"{stats.e0[z]:>14.6f}" if z in stats.e0 else f"{'-':>14}"
        lines.append(f"  {chemical_symbols[z]:<8} {stats.element_counts.get(z, 0):>10d} {e0}")
    lines += ["", "  atoms per structure   structures"]
    lines += [f"  {size:>19d}   {count:>10d}" for size, count in stats.size_histogram.items()]
    return "\n".join(lines)


def statistics_for_file(
    path: str | Path, cutoff: float = 5.0, source: str | None = None
) -> DatasetStatistics:
    """Statistics of a label store (``.h5``) or of any ASE-readable structure file.

    Args:
        path: the file.  cutoff: neighbour cutoff, Å.
        source: label source of a store (default ``teacher``, else ``reference``, else the
            first); an ASE file's own labels are read as this source (default ``reference``).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.suffix in (".h5", ".hdf5") or h5py.is_hdf5(path):
        with LabelStore(path) as store:
            sources = store.sources()
        if source is None and sources:
            source = next((s for s in ("teacher", "reference") if s in sources), sources[0])
        return compute_statistics(path, source, cutoff)
    source = source or "reference"
    with tempfile.TemporaryDirectory() as folder:
        store_path = Path(folder) / "labels.h5"
        if import_structures(path, store_path, source=source) == 0:
            raise DataError(f"{path}: holds no structures besides isolated atoms")
        with LabelStore(store_path) as store:
            has_labels = source in store.sources()
        return compute_statistics(store_path, source if has_labels else None, cutoff)
