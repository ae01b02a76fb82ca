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
    atoms.set_constraint(FixCom())
    atoms.calc = calculator
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    dynamics = Langevin(
        atoms,
        timestep=timestep_fs * units.fs,
        temperature_K=temperature,
        friction=friction_per_fs / units.fs,
        fixcm=False,
        rng=np.random.default_rng(seed + 1),
    )
    dynamics.run(warmup)
    temperatures = []
    dynamics.attach(lambda: temperatures.append(atoms.get_temperature()), interval=1)
    start = time.perf_counter()
    dynamics.run(steps)
    seconds = time.perf_counter() - start
    return LangevinRun(steps, len(atoms), seconds, np.asarray(temperatures[1:]), torch.get_num_threads())
