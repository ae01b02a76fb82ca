"""Teacher MD: Langevin trajectories of the seeds at several temperatures, sampled at intervals.

Frames of the teacher's own dynamics cover the thermally accessible region a student will visit
in MD, with the correlations between neighbours that independent rattles lack. Hotter
trajectories reach further from the lattice.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms

from mlip_distill.md.langevin import langevin_dynamics
from mlip_distill.sampling.contacts import CloseContactCheck
from mlip_distill.sampling.errors import SamplingError
from mlip_distill.sampling.perturb import RandomSource, bare_copy, seed_cells
from mlip_distill.teachers.base import Teacher

#: Langevin friction, 1/fs: a thermostat relaxation time of 50 fs, short enough for a seed to
#: reach its temperature within a few hundred equilibration steps.
FRICTION_PER_FS = 0.02


def md_config_type(temperature: float) -> str:
    """``info["config_type"]`` of MD frames at ``temperature`` K: ``300`` → ``"md-300K"``."""
    return f"md-{temperature:g}K"


def check_md_settings(
    temperatures: Sequence[float],
    frames: int,
    interval: int,
    equilibration: int,
    timestep_fs: float,
) -> None:
    """Raise :class:`SamplingError` naming the first setting of :func:`teacher_md` that cannot
    work."""
    if not all(temperature > 0 for temperature in temperatures):
        raise SamplingError(
            f"md_temperatures (--md-temperatures) must be above 0 K, not {list(temperatures)}"
        )
    if frames < 1:
        raise SamplingError(f"md_frames (--md-frames) must be 1 or more, not {frames}")
    if interval < 1:
        raise SamplingError(f"md_interval (--md-interval) must be 1 step or more, not {interval}")
    if equilibration < 0:
        raise SamplingError(
            f"md_equilibration (--md-equilibration) must be 0 steps or more, not {equilibration}"
        )
    if not timestep_fs > 0:
        raise SamplingError(f"md_timestep (--md-timestep) must be above 0 fs, not {timestep_fs}")


def teacher_md(
    seeds: Sequence[Atoms],
    teacher: Teacher,
    temperatures: Sequence[float],
    *,
    frames: int,
    interval: int,
    equilibration: int,
    timestep_fs: float,
    supercell: tuple[int, int, int] | None,
    min_distance: float,
    rng: RandomSource,
) -> list[Atoms]:
    """Frames of Langevin MD driven by ``teacher``, ``frames`` per temperature.

    At each temperature (K) the frames are shared among the seeds (prepared by
    :func:`~mlip_distill.sampling.perturb.seed_cells`) in turn, so seed i of S runs one
    trajectory giving ``frames // S`` frames, one more when ``i < frames % S``. A trajectory
    starts from the seed with Maxwell–Boltzmann velocities at the temperature, runs
    ``equilibration`` steps of ``timestep_fs`` fs unsampled, then keeps a frame every
    ``interval`` steps (:func:`~mlip_distill.md.langevin.langevin_dynamics`, friction
    :data:`FRICTION_PER_FS`). Frames with atoms closer than ``min_distance`` Å are dropped and
    their number logged: the teacher let atoms collide, which no redraw would hide.

    Every frame's ``info`` carries ``config_type`` (``"md-300K"``, :func:`md_config_type`),
    ``temperature`` (the thermostat's, K), ``md_step`` (steps since equilibration) and the seed
    index as ``source_index`` and ``system_id``.
    """
    check_md_settings(temperatures, frames, interval, equilibration, timestep_fs)
    bases = seed_cells(seeds, supercell)
    rng = np.random.default_rng(rng)
    calculator = teacher.ase_calculator()
    sampled: list[Atoms] = []
    for temperature in temperatures:
        check = CloseContactCheck(min_distance, md_config_type(temperature))
        for seed_index, base in enumerate(bases):
            n_frames = frames // len(bases) + (seed_index < frames % len(bases))
            if n_frames == 0:
                continue
            atoms = base.copy()
            atoms.calc = calculator
            dynamics = langevin_dynamics(
                atoms, temperature, timestep_fs, FRICTION_PER_FS, seed=int(rng.integers(2**31))
            )
            dynamics.run(equilibration)
            for frame_index in range(1, n_frames + 1):
                dynamics.run(interval)
                if check.accepts(atoms):
                    frame = bare_copy(atoms)
                    frame.info.update(
                        config_type=md_config_type(temperature),
                        temperature=float(temperature),
                        md_step=frame_index * interval,
                        source_index=seed_index,
                        system_id=seed_index,
                    )
                    sampled.append(frame)
        check.report()
    return sampled
