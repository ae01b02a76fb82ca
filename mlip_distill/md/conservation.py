"""Energy conservation of NVE (velocity Verlet) runs: the drift of the total energy."""

from __future__ import annotations

import numpy as np


def energy_drift(times_ps: np.ndarray, total_energy: np.ndarray, n_atoms: int) -> float:
    """Slope of a least-squares line through the total energy, meV/atom/ps.

    Args:
        times_ps: (T,) ps.  total_energy: (T,) eV, whole system.
    """
    slope_ev_per_ps = np.polyfit(np.asarray(times_ps, float), np.asarray(total_energy, float), 1)[0]
    return float(1000.0 * slope_ev_per_ps / n_atoms)


def drift_ratio(times_ps: np.ndarray, total_energy: np.ndarray, kinetic_energy: np.ndarray) -> float:
    """The fitted change of the total energy over the whole run, divided by the standard
    deviation of the kinetic energy: how far the drift has gone compared with the energy's
    natural fluctuations (well below 1 for a good integration). Dimensionless.

    Args:
        times_ps: (T,) ps.  total_energy, kinetic_energy: (T,) eV, whole system.
    """
    times_ps = np.asarray(times_ps, float)
    slope = np.polyfit(times_ps, np.asarray(total_energy, float), 1)[0]
    return float(abs(slope) * (times_ps[-1] - times_ps[0]) / np.std(kinetic_energy))
