"""A sampling plan: which generators to run on the seeds, how many structures each, and how.

The command line's ``sample`` options and the ``distill`` pipeline both describe what to sample
as one flat mapping whose keys are the fields of :class:`SamplingPlan` (each also a command-line
option: ``md_frames`` is ``--md-frames``), for example::

    {"rattle_strain": 100, "vacancies": 20, "supercell": "2x2x2",
     "md_temperatures": [300, 1000], "md_frames": 20, "md_interval": 10}

:func:`sample_plan` runs it. Generators run in the order rattle-strain, vacancy, relax, MD,
each from its own random stream, so adding one generator leaves the others' structures as
they were.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from mlip_distill.sampling.defects import sample_vacancies
from mlip_distill.sampling.dynamics import check_md_settings, teacher_md
from mlip_distill.sampling.errors import SamplingError
from mlip_distill.sampling.perturb import sample_structures, write_extxyz
from mlip_distill.sampling.relax import check_relax_settings, rattle_relax
from mlip_distill.sampling.seeds import parse_supercell, seed_structures
from mlip_distill.teachers.base import Teacher
from mlip_distill.teachers.registry import load_teacher

#: Rattle-strain structures of a plan that names no generator at all.
DEFAULT_RATTLE_STRAIN = 100


@dataclass
class SamplingPlan:
    """What to sample from the seeds. Counts of 0 switch a generator off.

    ==================  ==========================================================================
    field               meaning
    ==================  ==========================================================================
    rattle_strain       strained and rattled copies (``None``: 100 when no other generator runs)
    rattle              range of the Gaussian displacement width σ, Å; also used by the
                        vacancy and relax generators
    strain              largest strain component (dimensionless); with shear
    supercell           repeats of each seed, ``(2, 2, 2)`` or ``"2x2x2"``, before any generator
    min_distance        structures with two atoms closer than this (Å) are rejected
    vacancies           structures with 1 to ``max_vacancies`` atoms removed, then rattled
    max_vacancies       a count (≥ 1) or a fraction of the atoms (< 1) per structure
    relax               frames of rattle–relax–repeat with the teacher
    relax_steps         optimiser steps per relaxation
    relax_fmax          force below which a relaxation stops early, eV/Å
    relax_temperature   of the Boltzmann choice of parents, K
    relax_optimizer     ``FIRE`` or ``BFGS``
    md_temperatures     teacher Langevin MD at each of these, K (empty: no MD)
    md_frames           frames per temperature, shared among the seeds
    md_interval         MD steps between kept frames
    md_equilibration    MD steps before the first kept frame
    md_timestep         MD time step, fs
    ==================  ==========================================================================
    """

    rattle_strain: int | None = None
    rattle: tuple[float, float] = (0.05, 0.15)
    strain: float = 0.01
    supercell: tuple[int, int, int] | str | None = None
    min_distance: float = 0.5
    vacancies: int = 0
    max_vacancies: float = 1
    relax: int = 0
    relax_steps: int = 5
    relax_fmax: float = 0.05
    relax_temperature: float = 300.0
    relax_optimizer: str = "FIRE"
    md_temperatures: Sequence[float] = ()
    md_frames: int = 10
    md_interval: int = 10
    md_equilibration: int = 200
    md_timestep: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.supercell, str):
            self.supercell = parse_supercell(self.supercell)
        for name in ("rattle_strain", "vacancies", "relax"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and value >= 0):
                raise SamplingError(
                    f"{name} (--{name.replace('_', '-')}) must be a whole number of structures, "
                    f"0 or more, not {value!r}"
                )
        if self.rattle_strain is None:
            others = self.vacancies or self.relax or self.md_temperatures
            self.rattle_strain = 0 if others else DEFAULT_RATTLE_STRAIN
        self.md_temperatures = tuple(self.md_temperatures)
        check_relax_settings(
            self.relax_steps, self.relax_fmax, self.relax_temperature, self.relax_optimizer
        )
        check_md_settings(
            self.md_temperatures,
            self.md_frames,
            self.md_interval,
            self.md_equilibration,
            self.md_timestep,
        )

    @classmethod
    def from_mapping(cls, plan: Mapping[str, Any]) -> SamplingPlan:
        """The plan of a mapping of field names to values; unknown keys are refused."""
        known = [field.name for field in dataclasses.fields(cls)]
        unknown = sorted(set(plan) - set(known))
        if unknown:
            raise SamplingError(
                f"unknown sampling option {', '.join(unknown)}; known: {', '.join(known)}"
            )
        return cls(**plan)

    @property
    def needs_teacher(self) -> bool:
        """Whether a generator of the plan runs the teacher (relax or MD)."""
        return bool(self.relax or self.md_temperatures)


def as_plan(plan: SamplingPlan | Mapping[str, Any]) -> SamplingPlan:
    """``plan`` itself, or the :class:`SamplingPlan` of a mapping (checked)."""
    return plan if isinstance(plan, SamplingPlan) else SamplingPlan.from_mapping(plan)


def sample_plan(
    seeds: Sequence[Atoms],
    plan: SamplingPlan | Mapping[str, Any],
    teacher: Teacher | None = None,
    seed: int = 0,
) -> list[Atoms]:
    """The structures of ``plan`` sampled from ``seeds``, rattle-strain first, then vacancy,
    relax and MD frames.

    Every structure carries ``info["config_type"]`` (``rattle-strain``, ``vacancy``, ``relax``,
    ``md-<T>K``), and the index of its seed in ``seeds`` as ``info["source_index"]`` and
    ``info["system_id"]``; the generators' own keys are documented with them
    (:func:`~mlip_distill.sampling.perturb.sample_structures`,
    :func:`~mlip_distill.sampling.defects.sample_vacancies`,
    :func:`~mlip_distill.sampling.relax.rattle_relax`,
    :func:`~mlip_distill.sampling.dynamics.teacher_md`). Structures with close contacts are
    rejected and their number logged as a warning per generator.

    Raises :class:`SamplingError` for a bad plan, or one that runs relaxations or MD without a
    ``teacher``.
    """
    plan = as_plan(plan)
    if plan.needs_teacher and teacher is None:
        raise SamplingError(
            "relax (--relax) and md_temperatures (--md-temperatures) need a teacher "
            "(--teacher SPEC, e.g. --teacher emt)"
        )
    rattle_strain_rng, vacancy_rng, relax_rng, md_rng = (
        np.random.default_rng(stream) for stream in np.random.SeedSequence(seed).spawn(4)
    )
    shared = {"supercell": plan.supercell, "min_distance": plan.min_distance}
    structures: list[Atoms] = []
    if plan.rattle_strain:
        structures += sample_structures(
            seeds, plan.rattle_strain, plan.rattle, plan.strain, seed=rattle_strain_rng, **shared
        )
    if plan.vacancies:
        structures += sample_vacancies(
            seeds,
            plan.vacancies,
            max_vacancies=plan.max_vacancies,
            rattle_sigma=plan.rattle,
            rng=vacancy_rng,
            **shared,
        )
    if plan.relax:
        structures += rattle_relax(
            seeds,
            teacher,
            plan.relax,
            rattle_sigma=plan.rattle,
            steps=plan.relax_steps,
            fmax=plan.relax_fmax,
            temperature=plan.relax_temperature,
            optimizer=plan.relax_optimizer,
            rng=relax_rng,
            **shared,
        )
    if plan.md_temperatures:
        structures += teacher_md(
            seeds,
            teacher,
            plan.md_temperatures,
            frames=plan.md_frames,
            interval=plan.md_interval,
            equilibration=plan.md_equilibration,
            timestep_fs=plan.md_timestep,
            rng=md_rng,
            **shared,
        )
    return structures


def sample_plan_file(
    seeds: str | Path,
    out_path: str | Path,
    plan: SamplingPlan | Mapping[str, Any],
    teacher: str | Teacher | None = None,
    seed: int = 0,
) -> list[Atoms]:
    """:func:`sample_plan` from ``seeds`` (a file or a ``bulk:`` spec, see
    :func:`~mlip_distill.sampling.seeds.seed_structures`) into the extxyz file ``out_path``,
    which appears only once complete; ``teacher`` may be a spec
    (:func:`~mlip_distill.teachers.load_teacher`). Returns the structures written."""
    plan = as_plan(plan)
    if isinstance(teacher, str):
        teacher = load_teacher(teacher)
    structures = sample_plan(seed_structures(seeds), plan, teacher=teacher, seed=seed)
    write_extxyz(structures, out_path)
    return structures
