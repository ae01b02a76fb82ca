"""mlip-distill: distil machine-learned interatomic potentials into small equivariant students.

Units everywhere: Å, eV, eV/Å, stress in eV/Å³ with ASE's sign (tensile positive), Voigt order
xx, yy, zz, yz, xz, xy.
"""

__version__ = "0.1.0"
