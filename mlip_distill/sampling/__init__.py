"""Sampling: new structures for the teacher to label, made from seed structures.

``seeds.py`` reads or builds the seeds; ``perturb.py`` rattles and strains them.
"""

from mlip_distill.sampling.errors import SamplingError
from mlip_distill.sampling.perturb import (
    has_close_contact,
    rattle,
    sample_file,
    sample_structures,
    strain,
)
from mlip_distill.sampling.seeds import bulk_crystal, seed_structures

__all__ = [
    "SamplingError",
    "bulk_crystal",
    "has_close_contact",
    "rattle",
    "sample_file",
    "sample_structures",
    "seed_structures",
    "strain",
]
