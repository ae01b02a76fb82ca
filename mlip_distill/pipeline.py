"""`mlip-distill distill`: sample → label → train → evaluate → MD, in one command.

The defaults are the README's demo: a NequIP-style student of ASE's EMT copper.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence



@dataclass
class DistillSettings:
    """What to distil and how much (the demo's values by default)."""

    seeds: str = "bulk:Cu:fcc:a=3.61:cubic:2x2x2"
    teacher: str = "emt"
    n_structures: int = 200
    rattle: tuple[float, float] = (0.05, 0.15)
    max_strain: float = 0.01
    n_valid: int = 20
    md_structure: str = "bulk:Cu:fcc:a=3.61:cubic:3x3x3"
    md_steps: int = 1000
    teacher_md_steps: int = 200
    temperature: float = 300.0
    seed: int = 0
    experiment: str = "cu_emt"
    train_overrides: Sequence[str] = field(default_factory=list)


def _log(message: str) -> None:
    print(f"[distill] {message}", flush=True)


def distill(settings: DistillSettings, root: str | Path = "runs") -> dict:
    """Run the whole pipeline; returns (and writes as ``summary.json``) its figures."""
    # imported here, not at the top, so that `mlip-distill --help` does not load torch
    from .calculator import StudentCalculator
    from .evaluate import evaluate_store
    from .md.langevin import run_langevin
    from .package import load_potential
    from .sampling.perturb import sample_file
    from .sampling.seeds import seed_structures
    from .teachers import load_teacher
    from .teachers.labelling import label_file
    from .training.run import compose_config, new_run_dir, train

    start = time.perf_counter()
    run_dir = new_run_dir(settings.experiment, root)
    run_dir.mkdir(parents=True)
    structures_path, labels_path = run_dir / "structures.xyz", run_dir / "labels.h5"

    n_structures = sample_file(
        settings.seeds, structures_path, settings.n_structures,
        rattle_sigma=settings.rattle, max_strain=settings.max_strain, seed=settings.seed,
    )
    _log(f"sampled {n_structures} structures from {settings.seeds} -> {structures_path}")

    teacher = load_teacher(settings.teacher)
    summary_label = label_file(structures_path, teacher, labels_path)
    _log(f"labelled {summary_label.n_labelled} with {settings.teacher} in {summary_label.seconds:.1f} s -> {labels_path}")

    config = compose_config(
        [
            f"experiment={settings.experiment}",
            f"data.path={labels_path.resolve()}",
            f"data.n_valid={settings.n_valid}",
            f"run_dir={run_dir / 'train'}",
            f"seed={settings.seed}",
            "trainer.enable_progress_bar=false",
            *settings.train_overrides,
        ]
    )
    result = train(config)
    _log(f"trained in {result.seconds:.0f} s -> {result.potential_dir}")

    potential = load_potential(result.potential_dir)
    errors = evaluate_store(potential, labels_path, ["teacher"], indices=result.valid_indices)["teacher"]

    md_atoms = seed_structures(settings.md_structure)[0]
    student_md = run_langevin(md_atoms, StudentCalculator(result.potential_dir), settings.md_steps, settings.temperature)
    teacher_md = run_langevin(md_atoms, teacher.calculator, settings.teacher_md_steps, settings.temperature)
    summary = {
        "potential": str(result.potential_dir),
        "n_structures": n_structures,
        "n_valid": errors["n_structures"],
        "errors_vs_teacher": errors,
        "training_seconds": result.seconds,
        "md": {
            "n_atoms": len(md_atoms),
            "student_steps": student_md.steps,
            "student_steps_per_s": student_md.steps_per_s,
            "student_mean_temperature_K": float(student_md.temperatures.mean()),
            "teacher_steps_per_s": teacher_md.steps_per_s,
            "threads": student_md.threads,
        },
        "total_seconds": time.perf_counter() - start,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
