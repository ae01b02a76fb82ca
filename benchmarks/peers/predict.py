"""Energy, forces and stress of a trained peer model on every structure of a file, through the
peer's own ASE calculator. Run with the peer's Python (it imports only ASE, torch and the peer):

    python predict.py {sevenn,mace} MODEL STRUCTURES.xyz OUT.xyz

MODEL: sevenn's ``checkpoint_best.pth`` or MACE's ``NAME.model``. OUT.xyz holds the structures
with the predictions as their calculator results (eV, eV/Å, eV/Å³ Voigt, ASE's sign), for
``peers_sevennet_si.py`` to score; the model's parameter count is printed as JSON on the last
line of standard output.
"""

import argparse
import json

from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write


def load(trainer: str, model: str):
    """The peer's calculator and its torch module."""
    if trainer == "sevenn":
        from sevenn.calculator import SevenNetCalculator

        calculator = SevenNetCalculator(model, device="cpu")
        return calculator, calculator.model
    from mace.calculators import MACECalculator

    calculator = MACECalculator(model_paths=model, device="cpu", default_dtype="float32")
    return calculator, calculator.models[0]


def predict(calculator, structures: list[Atoms]) -> list[Atoms]:
    """Copies of ``structures`` holding ``calculator``'s energy, forces and stress as results."""
    predicted = []
    for atoms in structures:
        atoms = atoms.copy()
        atoms.calc = calculator
        results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "stress": atoms.get_stress()}
        atoms.calc = SinglePointCalculator(atoms, **results)
        predicted.append(atoms)
    return predicted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("trainer", choices=["sevenn", "mace"])
    parser.add_argument("model")
    parser.add_argument("structures")
    parser.add_argument("out")
    args = parser.parse_args()
    calculator, module = load(args.trainer, args.model)
    write(args.out, predict(calculator, read(args.structures, ":")), format="extxyz")
    print(json.dumps({"n_parameters": sum(p.numel() for p in module.parameters())}))


if __name__ == "__main__":
    main()
