"""One monitored, timed MD run: energies and temperature at every step, frames at intervals,
the step where it failed (if it did), and its speed with the warm-up excluded."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from ase import Atoms, units
from ase.md.md import MolecularDynamics

# (atoms, step, temperature K, potential energy eV) -> the reason the run failed, or None
StepCheck = Callable[[Atoms, int, float, float], "str | None"]


@dataclass
class Trace:
    """What one run recorded, step by step (T steps run, F frames kept).

    Attributes:
        times_ps: (T,) time after each step, ps.  temperature: (T,) K.
        potential_energy, kinetic_energy: (T,) eV, whole system.
        frames: copies of the atoms (positions, velocities) every ``frame_interval`` steps.
        frame_times_ps: (F,) ps.  failure: why the run stopped early, or None.
        timed_steps, seconds: steps after the warm-up and their wall time, s.
        threads: torch threads during the run.
    """

    n_atoms: int
    timestep_fs: float
    times_ps: np.ndarray
    temperature: np.ndarray
    potential_energy: np.ndarray
    kinetic_energy: np.ndarray
    frames: list[Atoms] = field(repr=False)
    frame_times_ps: np.ndarray
    failure: str | None
    timed_steps: int
    seconds: float
    threads: int

    @property
    def total_energy(self) -> np.ndarray:
        """(T,) potential plus kinetic energy, eV."""
        return self.potential_energy + self.kinetic_energy

    @property
    def simulated_ps(self) -> float:
        """Time simulated before the run ended or failed, ps."""
        return float(self.times_ps[-1]) if len(self.times_ps) else 0.0

    @property
    def steps_per_s(self) -> float | None:
        """Speed after the warm-up; None when the run ended during it."""
        return self.timed_steps / self.seconds if self.timed_steps and self.seconds > 0 else None


def run_monitored(
    atoms: Atoms,
    dynamics: MolecularDynamics,
    steps: int,
    check: StepCheck,
    warmup: int = 10,
    frame_interval: int = 10,
    on_step: Callable[[], None] | None = None,
) -> Trace:
    """Run ``steps`` steps of ``dynamics`` (which moves ``atoms``, calculator attached), calling
    ``check`` after each; stop at the first step it reports a failure.

    The clock starts after ``warmup`` steps (first calls, graph building and allocation excluded
    from the speed); every step, the warm-up included, counts as simulated time.
    """
    timestep_fs = dynamics.dt / units.fs
    times, temperatures, potential, kinetic, frames, frame_times = [], [], [], [], [], []
    failure, start, timed_steps = None, None, 0
    for step in range(1, steps + 1):
        if step == warmup + 1:
            start = time.perf_counter()
        dynamics.step()
        if start is not None:
            timed_steps += 1
        energy, temperature = float(atoms.get_potential_energy()), float(atoms.get_temperature())
        times.append(step * timestep_fs / 1000.0)
        temperatures.append(temperature)
        potential.append(energy)
        kinetic.append(float(atoms.get_kinetic_energy()))
        if step % frame_interval == 0:
            frames.append(_snapshot(atoms))
            frame_times.append(times[-1])
        if on_step is not None:
            on_step()
        failure = check(atoms, step, temperature, energy)
        if failure is not None:
            break
    seconds = time.perf_counter() - start if start is not None else 0.0
    return Trace(
        n_atoms=len(atoms), timestep_fs=timestep_fs, times_ps=np.asarray(times), temperature=np.asarray(temperatures),
        potential_energy=np.asarray(potential), kinetic_energy=np.asarray(kinetic), frames=frames,
        frame_times_ps=np.asarray(frame_times), failure=failure, timed_steps=timed_steps, seconds=seconds,
        threads=torch.get_num_threads(),
    )


def _snapshot(atoms: Atoms) -> Atoms:
    """Positions, velocities and cell of ``atoms``, without calculator or constraints."""
    copy = Atoms(atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    copy.set_velocities(atoms.get_velocities())
    return copy
