"""Energy + forces + stress per call of several ASE calculators on the same cells, in turns.

The models take turns call by call, so that load from other processes falls on all alike; the
medians of wall and CPU time per call are reported.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from statistics import median

from ase import Atoms
from ase.build import bulk


def rattled_diamond(repeat: int, seed: int = 0) -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=seed)
    return atoms


def diamond_cells(seed: int) -> list[Atoms]:
    """The cells :func:`timings` times by default: rattled diamond Si of 64 and 216 atoms."""
    return [rattled_diamond(2, seed), rattled_diamond(3, seed)]


def timings(calculators: dict[str, object], repeats: int = 9, warmup: int = 2,
            cells: Callable[[int], list[Atoms]] = diamond_cells) -> dict[str, dict[int, dict]]:
    """Median wall and CPU ms of an energy + forces + stress call per model and cell size (atoms);
    the models take turns call by call. ``cells(k)`` gives the k-th call's new cells, one per size."""
    sizes = [len(atoms) for atoms in cells(0)]
    wall = {name: {n: [] for n in sizes} for name in calculators}
    cpu = {name: {n: [] for n in sizes} for name in calculators}
    for k in range(warmup + repeats):
        for atoms in cells(k):
            for name, calculator in calculators.items():
                probe = atoms.copy()
                probe.calc = calculator
                start, start_cpu = time.perf_counter(), time.process_time()
                probe.get_potential_energy(), probe.get_forces(), probe.get_stress()
                if k >= warmup:
                    wall[name][len(atoms)].append(time.perf_counter() - start)
                    cpu[name][len(atoms)].append(time.process_time() - start_cpu)
    return {name: {n: {"wall_ms": 1e3 * median(wall[name][n]), "cpu_ms": 1e3 * median(cpu[name][n])} for n in sizes}
            for name in calculators}
