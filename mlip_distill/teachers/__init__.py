"""Teachers: whatever supplies the labels a student learns from.

Every teacher follows :class:`Teacher` (``base.py``); :func:`load_teacher` builds one from a
spec string (``registry.py``); :func:`label_file` labels a whole structure file with one
(``labelling.py``). ASE calculators are wrapped by ``ase_calculator.py``; a potential package
trained by mlip-distill teaches, with node features and exact Hessian-vector products, through
``potential.py``.
"""

from mlip_distill.teachers.ase_calculator import ASECalculatorTeacher
from mlip_distill.teachers.base import Teacher, TeacherError, probe_vectors
from mlip_distill.teachers.labelling import LabelSummary, label_file
from mlip_distill.teachers.potential import PotentialTeacher
from mlip_distill.teachers.registry import load_teacher

__all__ = [
    "ASECalculatorTeacher",
    "LabelSummary",
    "PotentialTeacher",
    "Teacher",
    "TeacherError",
    "label_file",
    "load_teacher",
    "probe_vectors",
]
