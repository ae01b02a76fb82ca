"""Timed Langevin (NVT) molecular dynamics with any ASE calculator."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.constraints import FixCom
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution


@dataclass
class LangevinRun:
    """Outcome of :func:`run_langevin`: speed (warm-up excluded) and the temperature trace (K)."""

    steps: int
    n_atoms: int
    seconds: float
    temperatures: np.ndarray
    threads: int

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds

    @property
    def finite(self) -> bool:
        return bool(np.isfinite(self.temperatures).all())


def langevin_dynamics(
    atoms: Atoms,
    temperature: float,
    timestep_fs: float,
    friction_per_fs: float,
    seed: int,
) -> Langevin:
    """Langevin (NVT) dynamics of ``atoms``, whose calculator is attached, at ``temperature`` K.

    The velocities start from a Maxwell–Boltzmann distribution at ``temperature``; the centre of
    mass is fixed (a :class:`~ase.constraints.FixCom` constraint is set on ``atoms``).

    Args:
        timestep_fs: integration time step, fs.  friction_per_fs: Langevin friction, 1/fs.
        seed: of the initial velocities (``seed``) and of the random forces (``seed + 1``).
    """
    atoms.set_constraint(FixCom())
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    return Langevin(
        atoms,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=np.random.default_rng(seed + 1),
    )


def run_langevin(
    atoms: Atoms,
    calculator: Calculator,
    steps: int,
    temperature: float = 300.0,
    timestep_fs: float = 2.0,
    friction_per_fs: float = 0.01,
    warmup: int = 5,
    seed: int = 0,
) -> LangevinRun:
    """Run ``warmup`` untimed steps, then ``steps`` timed steps of Langevin MD on a copy of ``atoms``.

    Args:
        temperature: target and initial temperature, K.
        timestep_fs: integration time step, fs.  friction_per_fs: Langevin friction, 1/fs.
    """
    atoms = atoms.copy()
    atoms.calc = calculator
    dynamics = langevin_dynamics(atoms, temperature, timestep_fs, friction_per_fs, seed)
    dynamics.run(warmup)
    temperatures = []
    dynamics.attach(lambda: temperatures.append(atoms.get_temperature()), interval=1)
    start = time.perf_counter()
    dynamics.run(steps)
    seconds = time.perf_counter() - start
    return LangevinRun(steps, len(atoms), seconds, np.asarray(temperatures[1:]), torch.get_num_threads())
