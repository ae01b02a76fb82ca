"""Acetylacetone (C5H8O2, PBE+D3/def2-SVP): trained on 300 K MD frames, tested on 300 K MD.

A NequIP-style student is trained on the ``reference`` labels of ``acac/train_300K.xyz`` (500
frames, 25 held out to choose the best epoch), E0 fitted on its energies or taken from
``acac/isolated_atoms.xyz`` (``--e0-from``), for a fixed wall-time budget; its root-mean-square errors on ``acac/test_MD_300K.xyz`` (650 frames; energy
in meV per molecule, forces in meV/Å per component) sit beside the MACE paper's Table 3.

    python benchmarks/acac.py --data ../shared/data --minutes 5
    # writes benchmarks/results/acac.{json,md} and regenerates benchmarks/README.md
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

# MACE paper, Table 3, 300 K test set (RMSE; energy meV per molecule, forces meV/Å).
PUBLISHED = {"MACE": (0.9, 5.1), "NequIP": (0.81, 5.90)}
N_VALID = 25


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="folder with acac/")
    parser.add_argument("--minutes", type=float, default=5.0, help="training wall time, minutes")
    parser.add_argument("--e0-from", default="fit", choices=["fit", "isolated"],
                        help="E0: fitted on the training energies (default), or the isolated atoms of acac/")
    parser.add_argument("--root", type=Path, default=Path("runs/benchmarks/acac"), help="where runs are written")
    args = parser.parse_args()
    root = args.root / time.strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True)
    folder = args.data / "acac"
    test_path = folder / "test_MD_300K.xyz"

    labels, n_frames = reference_label_file(folder / "train_300K.xyz", folder / "isolated_atoms.xyz", root / "labels.h5")
    result = train_for(labels, root / "run", args.minutes, N_VALID, args.e0_from)
    results = {
        "e0_from": args.e0_from,
        "threads": torch.get_num_threads(), "minutes_per_run": args.minutes, "n_frames": n_frames, "n_valid": N_VALID,
        "training_seconds": result.seconds, "epochs": epochs_completed(result.run_dir),
        "potential": str(result.potential_dir),
        "test": errors_on_test_set(result.potential_dir, test_path, len(read(test_path, index=0))),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "acac.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "acac.md").write_text(table(results))
    regenerate_readme()
    print(table(results))


def table(results: dict) -> str:
    test = results["test"]
    lines = [
        "| model | E RMSE (meV) | F RMSE (meV/Å) | training |",
        "|---|---|---|---|",
        f"| this student (NequIP-style, 3 × 16 ch, l ≤ 1) | **{test['energy_rmse_mev']:.1f}** "
        f"| **{test['forces_rmse_mev_per_A']:.1f}** | {results['training_seconds'] / 60:.1f} min ({results['epochs']} epoch(s)), "
        f"{results['threads']} CPU threads |",
    ]
    lines += [f"| {name} (MACE paper, Table 3) | {e} | {f} | to convergence, GPU |" for name, (e, f) in PUBLISHED.items()]
    lines.append(
        f"\nTrained on `train_300K` ({results['n_frames']} frames, {results['n_valid']} of them held out to pick "
        f"the best epoch), tested on all {test['n_test']} frames of `test_MD_300K`; energy per molecule. "
        f"E0: {results['e0_from']}. Training stopped after {results['minutes_per_run']:g} min of wall time on a CPU "
        "shared with other jobs (the training column is the whole run): far from converged.\n"
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
