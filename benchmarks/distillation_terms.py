"""Does Hessian matching or feature matching help, at equal wall time?

Two comparisons on the demo's copper cells (200 rattled and strained 32-atom cells, 20 held out),
each pair of runs given the same training time on the same labels:

1. Hessian matching on EMT labels. EMT's Hessian-vector products (one random probe per cell)
   come from central differences of its forces. Runs: the demo's loss (energy + forces) against
   the same plus ``hessian``.
2. Feature matching from a large student to a small one. The teacher is the run of comparison 1
   without Hessian matching (NequIP-style, 32 channels); its energies, forces and ``layer_1``
   features label the same cells. The small student (8 channels) trains on energy + forces
   against the same plus ``features``.

Errors are against each comparison's teacher, on the held-out cells.

    python benchmarks/distillation_terms.py   # writes benchmarks/results/distillation_terms.{json,md}
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from mlip_distill.sampling.perturb import sample_file
from mlip_distill.teachers import label_file, load_teacher
from mlip_distill.training.run import compose_config, train

RESULTS = Path(__file__).parent / "results"
SMALL_STUDENT = ["model.channels=8", "model.radial_hidden=32"]


def run(labels: Path, run_dir: Path, seconds: int, overrides: list[str]) -> dict:
    """Train ``experiment=cu_emt`` with ``overrides`` for ``seconds``; its validation errors."""
    minutes, rest = divmod(seconds, 60)
    config = compose_config(
        ["experiment=cu_emt", f"data.path={labels.resolve()}", f"run_dir={run_dir}",
         f"trainer.max_time=00:00:{minutes:02d}:{rest:02d}", "trainer.enable_progress_bar=false", *overrides]
    )
    result = train(config)
    return {"overrides": overrides, "potential": str(result.potential_dir), **result.metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs/benchmarks/distillation_terms", help="where runs are written")
    parser.add_argument("--seconds", type=int, default=120, help="training time of every run")
    parser.add_argument("--hessian-weight", type=float, default=10.0)
    parser.add_argument("--features-weight", type=float, default=10.0)
    args = parser.parse_args()
    root = Path(args.root) / time.strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True)
    structures = root / "structures.xyz"
    sample_file("bulk:Cu:fcc:a=3.61:cubic:2x2x2", structures, 200, rattle_sigma=(0.05, 0.15), max_strain=0.01)

    emt_labels = root / "emt.h5"
    label_file(structures, load_teacher("emt"), emt_labels, progress=False, hvp_probes=1)
    hessian = {
        "energy + forces": run(emt_labels, root / "emt_baseline", args.seconds, ["loss=energy_forces"]),
        "+ hessian": run(
            emt_labels, root / "emt_hessian", args.seconds,
            ["loss=distill_hessian", f"loss.hessian.weight={args.hessian_weight}"],
        ),
    }

    big_student = Path(hessian["energy + forces"]["potential"])
    student_labels = root / "big_student.h5"
    label_file(structures, load_teacher(f"potential:{big_student}"), student_labels, progress=False,
               features=("layer_1",))
    features = {
        "energy + forces": run(student_labels, root / "small_baseline", args.seconds,
                               ["loss=energy_forces", *SMALL_STUDENT]),
        "+ features": run(
            student_labels, root / "small_features", args.seconds,
            ["loss=distill_features", f"loss.features.weight={args.features_weight}", *SMALL_STUDENT],
        ),
    }
    results = {"seconds_per_run": args.seconds, "hessian_vs_emt": hessian, "features_vs_big_student": features}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "distillation_terms.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "distillation_terms.md").write_text(table(results))
    print(table(results))


def table(results: dict) -> str:
    lines = [
        f"Each run: {results['seconds_per_run']} s of training on 2 cores; errors on the 20 held-out cells.\n",
        "| comparison | loss | E RMSE (meV/atom) | F RMSE (meV/Å) | F MAE (meV/Å) |",
        "|---|---|---|---|---|",
    ]
    for comparison, key in (("EMT → NequIP 32 ch", "hessian_vs_emt"), ("NequIP 32 ch → NequIP 8 ch", "features_vs_big_student")):
        for loss, r in results[key].items():
            lines.append(
                f"| {comparison} | {loss} | {r['energy_rmse_mev_per_atom']:.2f} | {r['forces_rmse_mev_per_A']:.1f} "
                f"| {r['forces_mae_mev_per_A']:.1f} |"
            )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
