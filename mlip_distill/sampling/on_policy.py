"""On-policy sampling: frames of the student's own MD where a committee of students disagrees.

A student trained on rattled crystals drifts in MD into configurations its data never showed
it. Running MD with the student and asking the teacher about the frames it visits closes that
gap. Not every frame is worth a teacher call: a committee of students trained alike but from
different seeds agrees where the data pin the potential down and disagrees where they do not,
so the frames with the largest spread of predicted forces are the ones to label.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator

from mlip_distill.md.langevin import langevin_dynamics
from mlip_distill.sampling.contacts import CloseContactCheck, has_close_contact
from mlip_distill.sampling.dynamics import FRICTION_PER_FS
from mlip_distill.sampling.errors import SamplingError
from mlip_distill.sampling.perturb import RandomSource, bare_copy, seed_cells

logger = logging.getLogger(__name__)

#: ``info["config_type"]`` of on-policy frames.
CONFIG_TYPE = "on-policy"

Selection = Literal["disagreement", "random"]


@dataclass
class StoppedTrajectory:
    """A student trajectory stopped at ``step`` (counted from its start) because it blew up;
    ``reason`` says how."""

    seed_index: int
    step: int
    reason: str


@dataclass
class OnPolicySample:
    """What :func:`on_policy_frames` kept and what it saw.

    ``frames`` are the selected frames; ``n_candidates`` the frames collected from the
    trajectories after ``n_close_contacts`` were rejected; ``stopped`` the trajectories that
    blew up (their frames up to that point remain candidates).
    """

    frames: list[Atoms]
    n_candidates: int
    n_close_contacts: int
    stopped: list[StoppedTrajectory] = field(default_factory=list)


def committee_force_std(forces: np.ndarray) -> float:
    """The committee's disagreement on one structure, eV/Å.

    Args:
        forces: (K, N, 3) forces of K committee members on N atoms, eV/Å.
    Returns:
        the largest, over atoms, of the standard deviation of the force vector across members:
        max_i sqrt(Σ_c Var_k F_kic), the variance taken over the K members (ddof 0).
    """
    per_atom = np.sqrt(forces.var(axis=0).sum(axis=-1))
    return float(per_atom.max(initial=0.0))


def _blow_up_reason(atoms: Atoms, blow_up_distance: float) -> str | None:
    """Why a trajectory frame counts as blown up, or None: a non-finite energy, force or
    position, or two atoms closer than ``blow_up_distance`` Å."""
    if not np.isfinite(atoms.positions).all():
        return "non-finite positions"
    if not np.isfinite(atoms.get_potential_energy()):
        return "non-finite energy"
    if not np.isfinite(atoms.get_forces()).all():
        return "non-finite forces"
    if has_close_contact(atoms, blow_up_distance):
        return f"atoms closer than {blow_up_distance:g} Å"
    return None


def _as_calculator(member: str | Path | Calculator) -> Calculator:
    """A committee member as an ASE calculator: a package folder becomes a
    :class:`~mlip_distill.calculator.StudentCalculator`."""
    if isinstance(member, Calculator):
        return member
    # imported here: the calculator loads torch, which sampling otherwise does not need
    from mlip_distill.calculator import StudentCalculator

    return StudentCalculator(member)


def on_policy_frames(
    potentials: Sequence[str | Path | Calculator],
    seeds: Sequence[Atoms],
    n_frames: int,
    temperature: float,
    steps: int,
    interval: int,
    selection: Selection = "disagreement",
    seed: RandomSource = 0,
    *,
    timestep_fs: float = 2.0,
    min_distance: float = 0.5,
    blow_up_distance: float = 0.3,
) -> OnPolicySample:
    """``n_frames`` frames of Langevin MD driven by the first committee member.

    Each seed runs one trajectory of ``steps`` steps of ``timestep_fs`` fs at ``temperature`` K
    (:func:`~mlip_distill.md.langevin.langevin_dynamics`, friction
    :data:`~mlip_distill.sampling.dynamics.FRICTION_PER_FS`), from Maxwell–Boltzmann velocities,
    and offers a candidate frame every ``interval`` steps. Candidates with atoms closer than
    ``min_distance`` Å are rejected and counted. A trajectory is stopped, and reported, at the
    first step whose energy, forces or positions are not finite or whose atoms come closer than
    ``blow_up_distance`` Å.

    Every committee member then predicts the forces of every candidate, and the frames kept are
    the ``n_frames`` with the largest :func:`committee_force_std` (``"disagreement"``, which
    needs two members or more) or ``n_frames`` drawn at random (``"random"``); all candidates
    when there are fewer, with a warning. Frames come in the order they were generated.

    Args:
        potentials: the committee: student package folders, or any ASE calculators.
        seeds: starting structures (their labels are dropped).
        seed: of the trajectories' velocities and random forces, and of a random selection.
    Returns:
        the frames, without labels; ``info`` carries ``config_type = "on-policy"``,
        ``committee_force_std`` (eV/Å), ``temperature`` (K), ``md_step`` and the seed index as
        ``source_index`` and ``system_id``.
    """
    if selection not in ("disagreement", "random"):
        raise SamplingError(f"selection must be 'disagreement' or 'random', not {selection!r}")
    if not potentials:
        raise SamplingError("on-policy sampling needs at least one student potential")
    if selection == "disagreement" and len(potentials) < 2:
        raise SamplingError(
            f"selection by disagreement needs a committee of 2 or more, not {len(potentials)}"
        )
    for name, value in (("n_frames", n_frames), ("steps", steps), ("interval", interval)):
        if value < 1:
            raise SamplingError(f"{name} must be 1 or more, not {value}")
    if not temperature > 0:
        raise SamplingError(f"temperature must be above 0 K, not {temperature}")
    if not 0 <= blow_up_distance <= min_distance:
        raise SamplingError(
            f"blow_up_distance {blow_up_distance} Å must lie between 0 and min_distance "
            f"{min_distance} Å"
        )
    rng = np.random.default_rng(seed)
    committee = [_as_calculator(member) for member in potentials]
    check = CloseContactCheck(min_distance, CONFIG_TYPE)
    candidates: list[Atoms] = []
    stopped: list[StoppedTrajectory] = []
    for seed_index, base in enumerate(seed_cells(seeds)):
        atoms = base.copy()
        atoms.calc = committee[0]
        dynamics = langevin_dynamics(
            atoms, temperature, timestep_fs, FRICTION_PER_FS, seed=int(rng.integers(2**31))
        )
        for step in range(1, steps + 1):
            dynamics.run(1)
            reason = _blow_up_reason(atoms, blow_up_distance)
            if reason is not None:
                stopped.append(StoppedTrajectory(seed_index, step, reason))
                logger.warning(
                    "stopped the on-policy trajectory of seed %d at step %d: %s",
                    seed_index, step, reason,
                )
                break
            if step % interval == 0 and check.accepts(atoms):
                frame = bare_copy(atoms)
                frame.info.update(
                    config_type=CONFIG_TYPE,
                    temperature=float(temperature),
                    md_step=step,
                    source_index=seed_index,
                    system_id=seed_index,
                )
                candidates.append(frame)
    check.report()

    for frame in candidates:
        forces = []
        for calculator in committee:
            frame.calc = calculator
            forces.append(frame.get_forces())
        frame.calc = None
        frame.info["committee_force_std"] = committee_force_std(np.stack(forces))

    if len(candidates) <= n_frames:
        if len(candidates) < n_frames:
            logger.warning(
                "on-policy MD gave %d candidate frames, fewer than the %d asked for; keeping all",
                len(candidates), n_frames,
            )
        chosen = np.arange(len(candidates))
    elif selection == "disagreement":
        spread = np.array([frame.info["committee_force_std"] for frame in candidates])
        chosen = np.argsort(-spread, kind="stable")[:n_frames]
    else:
        chosen = rng.choice(len(candidates), size=n_frames, replace=False)
    frames = [candidates[k] for k in np.sort(chosen)]
    return OnPolicySample(frames, len(candidates), check.n_rejected, stopped)
