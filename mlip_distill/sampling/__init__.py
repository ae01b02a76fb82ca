"""Sampling: new structures for the teacher to label, made from seed structures.

``seeds.py`` reads or builds the seeds; ``perturb.py`` rattles and strains them; ``defects.py``
removes atoms (vacancies); ``relax.py`` runs rattle–relax–repeat and ``dynamics.py`` Langevin MD
with the teacher (through :meth:`~mlip_distill.teachers.base.Teacher.ase_calculator`); ``contacts.py`` rejects structures with
atoms too close; ``plan.py`` composes the generators from one mapping.
"""

from mlip_distill.sampling.contacts import CloseContactCheck, has_close_contact
from mlip_distill.sampling.defects import remove_atoms, sample_vacancies, vacancy_limit
from mlip_distill.sampling.dynamics import md_config_type, teacher_md
from mlip_distill.sampling.errors import SamplingError
from mlip_distill.sampling.perturb import (
    rattle,
    sample_file,
    sample_structures,
    seed_cells,
    strain,
)
from mlip_distill.sampling.plan import SamplingPlan, sample_plan, sample_plan_file
from mlip_distill.sampling.relax import boltzmann_weights, rattle_relax
from mlip_distill.sampling.seeds import bulk_crystal, parse_supercell, seed_structures

__all__ = [
    "CloseContactCheck",
    "SamplingError",
    "SamplingPlan",
    "boltzmann_weights",
    "bulk_crystal",
    "has_close_contact",
    "md_config_type",
    "parse_supercell",
    "rattle",
    "rattle_relax",
    "remove_atoms",
    "sample_file",
    "sample_plan",
    "sample_plan_file",
    "sample_structures",
    "sample_vacancies",
    "seed_cells",
    "seed_structures",
    "strain",
    "teacher_md",
    "vacancy_limit",
]
