"""Both students on the demo's task: EMT copper, 200 rattled and strained 32-atom cells.

For each architecture (NequIP-style and PaiNN-style): train with ``experiment=cu_emt`` (at most
3 minutes), errors against EMT on the 20 held-out cells, the largest deviation of the exported
calculator's forces and stress from ASE's finite differences (float64), and Langevin MD speed
of a 108-atom cell against EMT in the same process.

    python benchmarks/cu_emt.py            # writes benchmarks/results/cu_emt.{json,md}
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

from mlip_distill.calculator import StudentCalculator
from mlip_distill.data.store import LabelStore
from mlip_distill.md.langevin import run_langevin
from mlip_distill.sampling.perturb import sample_file
from mlip_distill.sampling.seeds import seed_structures
from mlip_distill.teachers import label_file, load_teacher
from mlip_distill.training.run import compose_config, train

RESULTS = Path(__file__).parent / "results"


def finite_difference_deviation(potential_dir: Path, labels: Path, indices: list[int]) -> dict[str, float]:
    """Largest |analytic - numerical| / max|analytic| of forces and stress over some structures."""
    worst = {"forces": 0.0, "stress": 0.0}
    with LabelStore(labels) as store:
        structures = [store.structure(i) for i in indices]
    for atoms in structures:
        atoms.calc = StudentCalculator(potential_dir, dtype="float64")
        forces, stress = atoms.get_forces(), atoms.get_stress()
        numerical = {
            "forces": calculate_numerical_forces(atoms, eps=1e-4),
            "stress": calculate_numerical_stress(atoms, eps=1e-5),
        }
        for key, analytic in (("forces", forces), ("stress", stress)):
            deviation = np.abs(analytic - numerical[key]).max() / np.abs(analytic).max()
            worst[key] = max(worst[key], float(deviation))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs/benchmarks/cu_emt", help="where runs are written")
    parser.add_argument("--md-steps", type=int, default=300, help="timed MD steps per calculator")
    args = parser.parse_args()
    root = Path(args.root) / time.strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True)
    structures, labels = root / "structures.xyz", root / "labels.h5"
    sample_file("bulk:Cu:fcc:a=3.61:cubic:2x2x2", structures, 200, rattle_sigma=(0.05, 0.15), max_strain=0.01)
    label_file(structures, load_teacher("emt"), labels, progress=False)
    md_cell = seed_structures("bulk:Cu:fcc:a=3.61:cubic:3x3x3")[0]
    teacher_md = run_langevin(md_cell, EMT(), args.md_steps)

    results = {"threads": torch.get_num_threads(), "emt_md_steps_per_s": teacher_md.steps_per_s, "students": {}}
    for model in ("nequip", "painn"):
        config = compose_config(
            ["experiment=cu_emt", f"data.path={labels.resolve()}", f"model={model}", f"run_dir={root / model}",
             "trainer.enable_progress_bar=false"]
        )
        result = train(config)
        student_md = run_langevin(md_cell, StudentCalculator(result.potential_dir), args.md_steps)
        n_parameters = json.loads((result.potential_dir / "potential.json").read_text())["n_parameters"]
        results["students"][model] = {
            "potential": str(result.potential_dir),
            "n_parameters": n_parameters,
            "training_seconds": result.seconds,
            "errors_vs_emt": result.metrics,
            "finite_difference_deviation": finite_difference_deviation(
                result.potential_dir, labels, result.valid_indices[:3]
            ),
            "md_steps_per_s": student_md.steps_per_s,
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cu_emt.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "cu_emt.md").write_text(table(results))
    print(table(results))


def table(results: dict) -> str:
    lines = [
        "| student | parameters | train (s) | E RMSE (meV/atom) | F RMSE (meV/Å) | S RMSE (meV/Å³) "
        "| FD dev. F / S | MD steps/s (108 atoms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["students"].items():
        e = r["errors_vs_emt"]
        fd = r["finite_difference_deviation"]
        lines.append(
            f"| {name} | {r['n_parameters']:,} | {r['training_seconds']:.0f} | {e['energy_rmse_mev_per_atom']:.2f} "
            f"| {e['forces_rmse_mev_per_A']:.1f} | {e['stress_rmse_mev_per_A3']:.1f} "
            f"| {fd['forces']:.1e} / {fd['stress']:.1e} | {r['md_steps_per_s']:.1f} |"
        )
    lines.append(f"| EMT (teacher) | | | | | | | {results['emt_md_steps_per_s']:.1f} |")
    lines.append(f"\n{results['threads']} threads; errors on the 20 held-out cells; FD: ASE finite differences, float64.\n")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
