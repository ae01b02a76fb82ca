"""Calls per second of an ASE calculator on one structure; imports only numpy, so both the project's
environment and the peers' (``benchmarks/peers/.venv-mace``) can use it."""

import statistics
import time

import numpy as np


def calls_per_second(calculator, atoms, calls: int) -> float:
    """Energy-and-forces calls per second of ``calculator`` on copies of ``atoms``, each call on
    positions displaced by up to 0.01 Å so that nothing is cached; median of 3 rounds of ``calls``
    calls after a warm-up round."""
    atoms = atoms.copy()
    atoms.calc = calculator
    rng = np.random.default_rng(0)
    start_positions = atoms.positions.copy()
    rounds = []
    for _ in range(4):
        displacements = rng.uniform(-0.01, 0.01, (calls, len(atoms), 3))
        start = time.perf_counter()
        for shift in displacements:
            atoms.positions = start_positions + shift
            atoms.get_forces()
        rounds.append(calls / (time.perf_counter() - start))
    return statistics.median(rounds[1:])
