"""rMD17: NequIP-style students trained directly on the DFT labels, next to the MACE paper.

For each molecule and training-set size N (1,000 and 50 frames of split 01's training file,
drawn at random with seed 0), a student is trained on the ``reference`` labels for a fixed
wall-time budget, with E0 fitted on the training energies or taken from the BOTNet isolated
atoms (``ethanol_botnet/isolated_atoms.xyz``; ``--e0-from``), 5 % of the N frames (at least 5)
held out to choose the best epoch. Its mean absolute errors on the 1,000 test frames (energy in meV per molecule, forces in meV/Å per component) sit
beside the MACE paper's Table 1 (Batatia et al. 2022), whose models trained for days on a GPU.

    python benchmarks/rmd17.py --data ../shared/data --molecules ethanol --e0-from fit isolated
    # writes benchmarks/results/rmd17.{json,md} and regenerates benchmarks/README.md
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from ase.io import read

from reference_training import (
    RESULTS, default_data_dir, epochs_completed, errors_on_test_set, reference_label_file, regenerate_readme, train_for,
)

# MACE paper, Table 1 (MAE; energy meV per molecule, forces meV/Å): {molecule: {N: (E, F)}}.
PUBLISHED = {
    "ethanol": {"MACE": {1000: (0.4, 2.1), 50: (6.7, 32.6)}, "NequIP": {1000: (0.4, 2.8), 50: (8.7, 40.2)}},
    "malonaldehyde": {"MACE": {1000: (0.8, 4.1), 50: (10.0, 43.3)}, "NequIP": {1000: (0.8, 5.1), 50: (12.7, 52.5)}},
    "aspirin": {"MACE": {1000: (2.2, 6.6), 50: (17.0, 43.9)}, "NequIP": {1000: (2.3, 8.2), 50: (19.5, 52.0)}},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="folder with rmd17/ and ethanol_botnet/")
    parser.add_argument("--molecules", nargs="+", default=["ethanol"], choices=sorted(PUBLISHED))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 50], help="training frames (at most 1000)")
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall time per run, minutes")
    parser.add_argument("--e0-from", nargs="+", default=["fit"], choices=["fit", "isolated"],
                        help="E0 of each run: fitted on the training energies, or the BOTNet isolated atoms")
    parser.add_argument("--root", type=Path, default=Path("runs/benchmarks/rmd17"), help="where runs are written")
    args = parser.parse_args()
    root = args.root / time.strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True)
    isolated_atoms = args.data / "ethanol_botnet" / "isolated_atoms.xyz"

    runs = []
    for molecule in args.molecules:
        train_path, test_path = (args.data / "rmd17" / f"{molecule}_{part}.xyz" for part in ("train", "test"))
        n_atoms = len(read(test_path, index=0))
        for size in args.sizes:
            labels, n_frames = reference_label_file(train_path, isolated_atoms, root / f"{molecule}_{size}.h5", size)
            n_valid = max(5, n_frames // 20)
            for e0_from in args.e0_from:
                result = train_for(labels, root / f"{molecule}_{size}_{e0_from}", args.minutes, n_valid, e0_from)
                runs.append({
                    "molecule": molecule, "n_frames": n_frames, "n_train": n_frames - n_valid, "n_valid": n_valid,
                    "e0_from": e0_from, "training_seconds": result.seconds, "epochs": epochs_completed(result.run_dir),
                    "potential": str(result.potential_dir),
                    "test": errors_on_test_set(result.potential_dir, test_path, n_atoms),
                })
                print(json.dumps(runs[-1], indent=2), flush=True)

    results = {"threads": torch.get_num_threads(), "minutes_per_run": args.minutes, "runs": runs}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rmd17.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "rmd17.md").write_text(table(results))
    regenerate_readme()
    print(table(results))


def table(results: dict) -> str:
    lines = [
        "| molecule | N train | E0 | this student E / F | MACE E / F | NequIP E / F | training |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in results["runs"]:
        test, published = run["test"], PUBLISHED[run["molecule"]]
        mace, nequip = published["MACE"][run["n_frames"]], published["NequIP"][run["n_frames"]]
        lines.append(
            f"| {run['molecule']} | {run['n_frames']} ({run['n_valid']} of them for validation) | {run['e0_from']} "
            f"| **{test['energy_mae_mev']:.1f} / {test['forces_mae_mev_per_A']:.1f}** "
            f"| {mace[0]} / {mace[1]} | {nequip[0]} / {nequip[1]} | {run['training_seconds'] / 60:.1f} min, {run['epochs']} epoch(s) |"
        )
    lines.append(
        f"\nMean absolute errors on the {results['runs'][0]['test']['n_test']} test frames of split 01: energy in meV "
        "per molecule, forces in meV/Å per component. This student: NequIP-style, 3 layers, 16 channels, "
        f"l ≤ 1, 5 Å cutoff; E0 `isolated`: the BOTNet isolated-atom energies, `fit`: least squares on the training energies (the isolated E0s plus a mean shift per atom for one molecule); training stopped after {results['minutes_per_run']:g} "
        f"minutes of wall time on {results['threads']} CPU threads shared with other jobs (the training column is the "
        "whole run, with data loading and the final validation), so these students are far from converged; the published models trained to "
        "convergence on a GPU (MACE paper, Table 1; N = 50 columns for the 50-frame rows). Only the molecules and "
        "sizes listed were run.\n"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
