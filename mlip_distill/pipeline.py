"""`mlip-distill distill`: sample → label → train → evaluate → MD, in one command.

The defaults are the README's demo: a NequIP-style student of SevenNet-0 for bulk diamond silicon,
from rattled, strained, vacancy and 1,000 K teacher-MD cells.

With ``rounds > 0``, on-policy rounds follow the first training: a committee of students
(same data and split, different seeds for weights and shuffling) is trained; the first runs
Langevin MD from the seeds, the frames where the committee disagrees most are labelled by the
teacher into the same label file, and the committee is retrained on the grown file. Retraining
starts from scratch, not from the previous weights: the student's E0s and scales are fitted to
the training split, which the new frames change, and independent restarts keep the committee's
spread an honest measure of what the data leave open.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    from ase import Atoms

    from .teachers.base import Teacher
    from .training.run import TrainResult

#: The demo's sampling plan (fields of :class:`~mlip_distill.sampling.plan.SamplingPlan`):
#: 64-atom cells, rattled (σ 0.02-0.12 Å) and strained (up to 2 %, shear included), with one or
#: two vacancies, and frames of teacher Langevin MD at 1,000 K.
DEMO_SAMPLING: dict[str, Any] = {
    "supercell": "2x2x2",
    "rattle_strain": 160,
    "rattle": (0.02, 0.12),
    "strain": 0.02,
    "vacancies": 30,
    "max_vacancies": 2,
    "md_temperatures": (1000.0,),
    "md_frames": 20,
    "md_interval": 5,
    "md_equilibration": 50,
    "md_timestep": 2.0,
}


@dataclass
class DistillSettings:
    """What to distil and how much (the demo's values by default).

    ``sampling`` is the sampling plan applied to ``seeds`` (keys and meanings: the fields of
    :class:`~mlip_distill.sampling.plan.SamplingPlan`); its supercell also applies to the seeds
    of on-policy MD. ``temperature`` (K) is that of the MD validation and of on-policy MD. On-policy rounds:
    ``rounds`` (0: none), each adding up to ``on_policy_frames`` frames chosen by ``selection``
    (``"disagreement"`` or ``"random"``) from ``on_policy_steps`` steps of MD per seed, sampled
    every ``on_policy_interval`` steps, with a committee of ``committee_size`` students.
    """

    seeds: str = "bulk:Si:diamond:a=5.43:cubic"
    teacher: str = "sevennet:7net-0"
    sampling: Mapping[str, Any] = field(default_factory=lambda: dict(DEMO_SAMPLING))
    n_valid: int = 20
    md_structure: str = "bulk:Si:diamond:a=5.43:cubic:3x3x3"
    md_steps: int = 500
    teacher_md_steps: int = 40
    temperature: float = 300.0
    seed: int = 0
    experiment: str = "si_sevennet"
    train_overrides: Sequence[str] = field(default_factory=list)
    rounds: int = 0
    committee_size: int = 2
    on_policy_frames: int = 20
    on_policy_steps: int = 200
    on_policy_interval: int = 10
    selection: str = "disagreement"


def _train_committee(
    settings: DistillSettings, labels_path: Path, directories: Sequence[Path], valid_indices: Sequence[int] | None = None
) -> list[TrainResult]:
    """One student per folder of ``directories``, trained on ``labels_path``; member k has seed
    ``settings.seed + k`` (weights and shuffling); the train/validation split (``data.seed``, or
    ``valid_indices`` when given: later rounds keep the first round's held-out structures, so
    their errors compare and on-policy frames only ever train) is the same for all."""
    from .training.run import compose_config, train

    results = []
    for member, directory in enumerate(directories):
        config = compose_config(
            [
                f"experiment={settings.experiment}",
                f"data.path={labels_path.resolve()}",
                f"data.n_valid={settings.n_valid}",
                *([f"data.valid_indices=[{','.join(map(str, valid_indices))}]"] if valid_indices is not None else []),
                f"run_dir={directory}",
                f"seed={settings.seed + member}",
                "trainer.enable_progress_bar=false",
                *settings.train_overrides,
            ]
        )
        results.append(train(config))
        _log(f"trained in {results[-1].seconds:.0f} s -> {results[-1].potential_dir}")
    return results


def _committee_dirs(directory: Path, size: int) -> list[Path]:
    """``train/`` for the first member, ``train-member<k>/`` for the others, in ``directory``."""
    return [directory / ("train" if k == 0 else f"train-member{k}") for k in range(size)]


def _on_policy_round(
    settings: DistillSettings, round_number: int, teacher: Teacher, labels_path: Path, round_dir: Path,
    committee: list[TrainResult],
) -> tuple[list[TrainResult], dict]:
    """Sample on-policy frames with ``committee``, label them into ``labels_path`` and retrain
    the committee in ``round_dir``; returns the new committee and the round's figures (errors in
    meV units, committee spreads in eV/Å)."""
    from .data.store import LabelStore
    from .evaluate import evaluate_store
    from .package import load_potential
    from .sampling.on_policy import on_policy_frames
    from .sampling.perturb import write_extxyz
    from .teachers.labelling import label_file

    round_dir.mkdir()
    sample = on_policy_frames(
        [result.potential_dir for result in committee],
        _md_seeds(settings),
        settings.on_policy_frames,
        settings.temperature,
        settings.on_policy_steps,
        settings.on_policy_interval,
        selection=settings.selection,
        seed=settings.seed + round_number,
    )
    frames_path = round_dir / "on_policy.xyz"
    write_extxyz(sample.frames, frames_path)
    with LabelStore(labels_path) as store:
        n_before = len(store)
    labelled = label_file(frames_path, teacher, labels_path)
    with LabelStore(labels_path) as store:
        new_indices = list(range(n_before, len(store)))
    _log(f"round {round_number}: labelled {labelled.n_labelled} on-policy frames "
         f"(of {sample.n_candidates} candidates) -> {labels_path}")
    # the student that ran the MD, on frames it visited and was never trained on
    errors_on_new_frames = evaluate_store(
        load_potential(committee[0].potential_dir), labels_path, ["teacher"], indices=new_indices
    )["teacher"]
    committee = _train_committee(
        settings, labels_path, _committee_dirs(round_dir, len(committee)), valid_indices=committee[0].valid_indices
    )
    errors = evaluate_store(
        load_potential(committee[0].potential_dir), labels_path, ["teacher"], indices=committee[0].valid_indices
    )["teacher"]
    return committee, {
        "round": round_number,
        "frames_added": labelled.n_labelled,
        "n_candidates": sample.n_candidates,
        "n_close_contacts": sample.n_close_contacts,
        "stopped_trajectories": [asdict(stopped) for stopped in sample.stopped],
        "committee_force_std_eV_per_A": [frame.info["committee_force_std"] for frame in sample.frames],
        "previous_errors_on_new_frames": errors_on_new_frames,
        "errors_vs_teacher": errors,
        "potential": str(committee[0].potential_dir),
        "training_seconds": sum(result.seconds for result in committee),
    }


def _md_seeds(settings: DistillSettings) -> list[Atoms]:
    """The seed structures, repeated by the sampling plan's supercell."""
    from .sampling.plan import as_plan
    from .sampling.seeds import seed_structures

    supercell = as_plan(settings.sampling).supercell
    seeds = seed_structures(settings.seeds)
    return [atoms.repeat(supercell) for atoms in seeds] if supercell else seeds


def _log(message: str) -> None:
    print(f"[distill] {message}", flush=True)


def distill(settings: DistillSettings, root: str | Path = "runs") -> dict:
    """Run the whole pipeline; returns (and writes as ``summary.json``) its figures."""
    # imported here, not at the top, so that `mlip-distill --help` does not load torch
    from .calculator import StudentCalculator
    from .evaluate import evaluate_store
    from .md.langevin import run_langevin
    from .package import load_potential
    from .sampling.plan import as_plan, sample_plan_file
    from .sampling.seeds import seed_structures
    from .teachers import load_teacher
    from .teachers.labelling import label_file
    from .training.run import new_run_dir

    if settings.rounds and any(item.split("=")[0].lstrip("+~") == "seed" for item in settings.train_overrides):
        raise ValueError("a seed= training override gives every committee member one seed; set DistillSettings.seed")
    as_plan(settings.sampling)  # a bad plan fails before any work
    start = time.perf_counter()
    run_dir = new_run_dir(settings.experiment, root)
    run_dir.mkdir(parents=True)
    structures_path, labels_path = run_dir / "structures.xyz", run_dir / "labels.h5"

    teacher = load_teacher(settings.teacher)
    n_structures = len(sample_plan_file(settings.seeds, structures_path, settings.sampling, teacher, settings.seed))
    _log(f"sampled {n_structures} structures from {settings.seeds} -> {structures_path}")
    summary_label = label_file(structures_path, teacher, labels_path)
    _log(f"labelled {summary_label.n_labelled} with {settings.teacher} in {summary_label.seconds:.1f} s -> {labels_path}")

    committee = _train_committee(
        settings, labels_path, _committee_dirs(run_dir, settings.committee_size if settings.rounds else 1)
    )
    rounds = []
    for round_number in range(1, settings.rounds + 1):
        committee, figures = _on_policy_round(
            settings, round_number, teacher, labels_path, run_dir / f"round{round_number}", committee
        )
        rounds.append(figures)
    result = committee[0]

    potential = load_potential(result.potential_dir)
    errors = evaluate_store(potential, labels_path, ["teacher"], indices=result.valid_indices)["teacher"]

    md_atoms = seed_structures(settings.md_structure)[0]
    student_md = run_langevin(md_atoms, StudentCalculator(result.potential_dir), settings.md_steps, settings.temperature)
    teacher_md = run_langevin(md_atoms, teacher.ase_calculator(), settings.teacher_md_steps, settings.temperature)
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
            "teacher_steps": teacher_md.steps,
            "teacher_steps_per_s": teacher_md.steps_per_s,
            "threads": student_md.threads,
        },
        "rounds": rounds,
        "total_seconds": time.perf_counter() - start,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
