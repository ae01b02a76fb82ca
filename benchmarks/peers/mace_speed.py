"""Speed of a MACE of the MACE paper's rMD17 size through MACE's own ASE calculator, on one
molecule. Run with the MACE venv's Python (benchmarks/peers/setup_venvs.sh):

    OMP_NUM_THREADS=1 .venv-mace/bin/python mace_speed.py MOLECULE.xyz --out mace_speed.json

The weights are random (speed does not depend on them): ScaleShiftMACE, 2 interactions,
256 channels, spherical harmonics to l = 3, correlation order 3, 8 Bessel functions, 5 Å cutoff;
hidden irreps 256x0e + 256x1o + 256x2e (L = 2) in float64, as the paper trained it, and in
float32, and 256x0e (L = 0, the cheapest MACE of that width) in float32 as a lower bound on its
cost. Timing by ``call_timing.calls_per_second``, as rmd17.py times the student, but with fewer calls (``--calls``, default 5; a call
of the L = 2 model takes seconds on one thread): energy and forces calls on the first frame,
each on positions displaced by up to 0.01 Å, median of 3 rounds after a warm-up round. Prints
and writes calls per second and parameter counts as JSON.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from ase.io import read
from mace import modules  # before e3nn: e3nn 0.4.4's import torch.loads what newer torch refuses until mace allows it
from mace.calculators import MACECalculator
from e3nn import o3  # noqa: I001

from call_timing import calls_per_second

#: (name, hidden irreps, dtype) of the models timed
MODELS = (
    ("L=2, float64", "256x0e + 256x1o + 256x2e", torch.float64),
    ("L=2, float32", "256x0e + 256x1o + 256x2e", torch.float32),
    ("L=0, float32", "256x0e", torch.float32),
)


def paper_sized_mace(numbers: list[int], hidden_irreps: str, dtype: torch.dtype) -> torch.nn.Module:
    torch.set_default_dtype(dtype)
    return modules.ScaleShiftMACE(
        r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        num_interactions=2, num_elements=len(numbers), hidden_irreps=o3.Irreps(hidden_irreps),
        MLP_irreps=o3.Irreps("16x0e"), atomic_energies=np.zeros(len(numbers)), avg_num_neighbors=8.0,
        atomic_numbers=numbers, correlation=3, gate=torch.nn.functional.silu,
        atomic_inter_scale=1.0, atomic_inter_shift=0.0,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("structures", help="an ASE-readable file; its first frame is timed")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON here too")
    parser.add_argument("--calls", type=int, default=5, help="calls per timed round")
    args = parser.parse_args()
    atoms = read(args.structures, index=0)
    numbers = sorted(set(int(z) for z in atoms.numbers))
    result = {"max_ell": 3, "correlation": 3, "num_interactions": 2, "r_max": 5.0, "threads": torch.get_num_threads(),
              "n_atoms": len(atoms), "calls_per_round": args.calls, "models": []}
    for name, hidden_irreps, dtype in MODELS:
        model = paper_sized_mace(numbers, hidden_irreps, dtype)
        calculator = MACECalculator(models=model, device="cpu", default_dtype=str(dtype).removeprefix("torch."))
        result["models"].append({"name": name, "hidden_irreps": hidden_irreps, "dtype": str(dtype),
                                 "n_parameters": sum(p.numel() for p in model.parameters()),
                                 "calls_per_s": calls_per_second(calculator, atoms, args.calls)})
        print(json.dumps(result["models"][-1]), flush=True)
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
