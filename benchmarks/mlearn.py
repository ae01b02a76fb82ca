"""mlearn Si, Ge and Cu: two foundation-model teachers and students distilled from SevenNet-0,
scored against the DFT test sets beside the published SNAP and ALIGNN-FF.

1. Teachers: SevenNet-0 (``sevennet:7net-0``) and CHGNet 0.3.0 (``chgnet:0.3.0``) on the
   ``mlearn/<element>_test.xyz`` cells of Si, Ge and Cu.
2. Students for Ge and Cu, made as ``shipped_si.py`` made the Si one: a label file of the
   element's mlearn training cells (teacher labels, their DFT labels kept as ``reference``)
   and rattled and strained copies of randomly chosen training cells (teacher labels only),
   then ``experiment=si_mlearn_stages`` without its QAT stage: stage 1 distils the teacher,
   stage 2 fine-tunes on the DFT labels, both budgeted in epochs (:data:`PLANS`). The teacher is
   SevenNet-0, and for a second Ge student CHGNet (the cheaper teacher on 64-atom cells). Si is not
   retrained: its stage-1 and stage-2 rows (errors, and speed as that script timed it) come
   from ``results/shipped_si.json``; its teachers are scored here like the others.
3. Errors against DFT as in ``shipped_si.py``: energy MAE per atom (raw, and with the model's
   mean offset removed), forces MAE per component, stress MAE over the six Voigt components.
4. Speed: energy + forces + stress per call through each model's ASE calculator, models taking
   turns, one process, the same threads, on rattled copies of a test cell of the element's usual
   size (64 atoms for Si and Ge, 108 for Cu); reported against SevenNet-0 in the same timing.

A run keeps its label files and trained students under ``--root``: run again, it reuses the
finished ones (``<element>/run.json``) and continues an unfinished training.

    OMP_NUM_THREADS=1 python benchmarks/mlearn.py [--data ../shared/data] [--root DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase import Atoms

from mlip_distill.calculator import StudentCalculator
from mlip_distill.package import load_potential
from mlip_distill.sampling import sample_structures
from mlip_distill.sampling.perturb import write_extxyz
from mlip_distill.teachers import load_teacher
from mlip_distill.teachers.labelling import label_file
from call_timing import timings
from shipped_si import (
    DATA,
    EXPERIMENT,
    RESULTS,
    TEACHER,
    TEACHER_ROW,
    errors_against_dft,
    label_counts,
    student_folders,
    train_students,
)

ELEMENTS = ("Si", "Ge", "Cu")
CHGNET_ROW = "CHGNet 0.3.0 (teacher)"
TEACHERS = {TEACHER_ROW: TEACHER, CHGNET_ROW: "chgnet:0.3.0"}
# The stages reported, as ``shipped_si.student_folders`` names them (its QAT row is not run here).
STAGES = ("stage 1 (distill)", "stage 2 (fine-tune)")
# Cells timed per element: rattled copies of a test cell of this many atoms.
TIMING_ATOMS = {"Si": 64, "Ge": 64, "Cu": 108}

# shared/data/README.md: published MAE on these test sets (energy meV/atom, forces eV/Å), and the
# teachers' force MAE (eV/Å) and offset-removed energy MAE (meV/atom) measured there.
PUBLISHED = {
    "SNAP (published, fitted on mlearn)": {"Si": (18.9, 0.176), "Ge": (40.6, 0.097), "Cu": (18.0, 0.060)},
    "ALIGNN-FF (published, fitted on all of mlearn)": {"Si": (47.4, 0.097), "Ge": (25.0, 0.072), "Cu": (26.2, 0.088)},
}
README_TEACHERS = {
    TEACHER_ROW: {"Si": (0.133, 51.6), "Ge": (0.133, 43.6), "Cu": (0.063, 15.6)},
    CHGNET_ROW: {"Si": (0.192, 89.7), "Ge": (0.205, 134.9), "Cu": (0.060, 19.9)},
}


def student_rows(teacher: str) -> dict[str, str]:
    """Table row of each reported stage of a student of ``teacher`` (a row of :data:`TEACHERS`),
    by the stage's name in ``shipped_si.student_folders``."""
    return {stage: f"{teacher.split(' (')[0]} student, {stage}" for stage in STAGES}


@dataclass(frozen=True)
class StudentPlan:
    """How a student of ``element`` is made: ``teacher`` (a row of :data:`TEACHERS`) labels the
    training cells and ``sampled`` rattled (σ 0.02–0.1 Å) and strained (up to 2 %, shear included)
    copies of them for the distillation; the stages train for ``distill_epochs`` and
    ``fine_tune_epochs``; ``overrides`` go to the training config; ``train_cells`` limits the
    training cells to a random subset (None: all)."""

    element: str
    teacher: str
    sampled: int
    distill_epochs: int
    fine_tune_epochs: int
    overrides: tuple[str, ...] = ()
    train_cells: int | None = None

    def rows(self) -> dict[str, str]:
        return student_rows(self.teacher)

    def training_overrides(self) -> list[str]:
        return [f"stages.0.trainer.max_epochs={self.distill_epochs}",
                f"stages.1.trainer.max_epochs={self.fine_tune_epochs}", *self.overrides]


# Sized so that the whole script runs in under 30 minutes on 2 cores (one thread). Cu cells hold
# 108 atoms against Ge's 64, and fcc Cu has 42 neighbours within si_mlearn_stages' 4.5 Å against
# diamond's 16: its student uses 4.0 Å (the first two shells, 18 neighbours) and fewer epochs.
# CHGNet labels a 64-atom cell in a quarter of SevenNet-0's time but a 108-atom Cu cell in about
# the same, so the third student, from CHGNet, is a Ge one. Keyed by the student's folder.
PLANS = {
    "Ge": StudentPlan("Ge", TEACHER_ROW, sampled=120, distill_epochs=12, fine_tune_epochs=50),
    "Cu": StudentPlan("Cu", TEACHER_ROW, sampled=80, distill_epochs=8, fine_tune_epochs=30,
                      overrides=("model.cutoff=4.0",)),
    "Ge-chgnet": StudentPlan("Ge", CHGNET_ROW, sampled=120, distill_epochs=12, fine_tune_epochs=50),
}


def build_label_file(train: list[Atoms], plan: StudentPlan, path: Path, seed: int = 0) -> dict[str, int]:
    """``plan.teacher``'s labels of the ``train`` cells (their DFT labels kept as ``reference``) and of
    ``plan.sampled`` rattled and strained copies of training cells drawn at random, at ``path``
    (built when missing; labelling resumes where a killed run stopped). Returns the counts."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(seed)
        seeds = [train[k] for k in rng.choice(len(train), size=min(plan.sampled, len(train)), replace=False)]
        sampled = sample_structures(seeds, plan.sampled, rattle_sigma=(0.02, 0.1), max_strain=0.02, seed=rng)
        structures = path.with_suffix(".xyz")
        write_extxyz([*train, *sampled], structures)
        partial = path.with_suffix(".partial.h5")
        label_file(structures, TEACHERS[plan.teacher], partial, progress=False)
        os.replace(partial, path)
    return label_counts(path)


def train_student(name: str, train: list[Atoms], plan: StudentPlan, folder: Path) -> dict:
    """Label and train the student ``name`` in ``folder`` (see the module's docstring); the
    record of a finished earlier run there is returned as it was."""
    record_path = folder / "run.json"
    if record_path.is_file():
        return {**json.loads(record_path.read_text()), "reused": True}
    start = time.perf_counter()
    counts = build_label_file(train, plan, folder / "labels.h5")
    label_seconds = time.perf_counter() - start
    print(f"{name}: label file {counts} ({label_seconds:.0f} s)", flush=True)
    overrides = [*plan.training_overrides(), "resume=auto"]
    seconds = train_students(folder / "labels.h5", folder / "train", overrides, n_stages=2)
    record = {"labels": counts, "label_seconds": label_seconds, "training_seconds": seconds,
              "overrides": plan.training_overrides(), "plan": asdict(plan),
              "train_dir": str((folder / "train").resolve())}
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    return record


def subset(frames: list[Atoms], n: int | None, seed: int = 0) -> list[Atoms]:
    """``n`` of ``frames`` drawn at random, in their order (all when ``n`` is None)."""
    if n is None or n >= len(frames):
        return frames
    return [frames[k] for k in np.sort(np.random.default_rng(seed).choice(len(frames), n, replace=False))]


def rattled_copies(cell: Atoms) -> Callable[[int], list[Atoms]]:
    """``cells(k)`` for :func:`timings`: the k-th rattled (0.05 Å) copy of ``cell``."""
    def cells(k: int) -> list[Atoms]:
        atoms = Atoms(cell.numbers, cell.positions, cell=cell.cell, pbc=cell.pbc)
        atoms.rattle(0.05, seed=k)
        return [atoms]
    return cells


def score_element(element: str, test: list[Atoms], teachers: dict[str, object], students: dict[str, Path],
                  repeats: int) -> dict:
    """Errors against DFT and speed of the teachers and of ``students`` (potential folders)."""
    calculators = {**teachers, **{name: StudentCalculator(folder, skin=0.0, compiled=False)
                                  for name, folder in students.items()}}
    models = {}
    for name, calculator in calculators.items():
        models[name] = errors_against_dft(calculator, test)
        print(element, name, json.dumps(models[name]), flush=True)
    cell = next(atoms for atoms in test if len(atoms) == TIMING_ATOMS[element])
    load_before = os.getloadavg()[0]
    timed = timings(calculators, repeats=repeats, cells=rattled_copies(cell))
    speed = {name: s[len(cell)] for name, s in timed.items()}
    return {"models": models, "speed": speed, "timing_atoms": len(cell),
            "speed_vs_sevennet": {name: speed[TEACHER_ROW]["wall_ms"] / s["wall_ms"] for name, s in speed.items()},
            "load_before": load_before, "load_after": os.getloadavg()[0],
            "parameters": {name: sum(p.numel() for p in load_potential(folder).model.parameters())
                           for name, folder in students.items()}}


def shipped_si_rows(element_record: dict) -> None:
    """Add the Si students of ``results/shipped_si.json`` (not retrained here) to the Si record:
    their errors, and their speed against SevenNet-0 as that script timed it (64-atom cells)."""
    shipped = json.loads((RESULTS / "shipped_si.json").read_text())
    speed = shipped["speed"]
    for stage, row in student_rows(TEACHER_ROW).items():
        element_record["models"][row] = shipped["models"][stage]
        element_record["speed"][row] = {**speed[stage]["64"], "timed_by": "shipped_si.py"}
        element_record["speed_vs_sevennet"][row] = (speed[TEACHER_ROW]["64"]["wall_ms"]
                                                    / speed[stage]["64"]["wall_ms"])
        element_record["parameters"][row] = shipped["parameters"][stage]
    element_record["students_from"] = f"results/shipped_si.json, run {shipped['run_dir']}"


def markdown(record: dict) -> str:
    rows = ["| element | model | E MAE (meV/atom) | E MAE, offset removed | F MAE (eV/Å) | S MAE (meV/Å³) | "
            "speed vs SevenNet-0 |",
            "|---|---|---|---|---|---|---|"]
    for element, r in record["elements"].items():
        for name, e in r["models"].items():
            note = " (shipped_si)" if "timed_by" in r["speed"][name] else ""
            rows.append(f"| {element} | {name} | {e['energy_mae_mev_per_atom']:.1f} | "
                        f"{e['energy_mae_offset_removed_mev_per_atom']:.1f} | {e['forces_mae_eV_per_A']:.3f} | "
                        f"{e['stress_mae_mev_per_A3']:.2f} | {r['speed_vs_sevennet'][name]:.1f}×{note} |")
        for name, published in PUBLISHED.items():
            energy, forces = published[element]
            rows.append(f"| {element} | {name} | {energy:.1f} | – | {forces:.3f} | – | – |")
    agreement = "; ".join(
        f"{name.split(' (')[0]} {element} {r['models'][name]['forces_mae_eV_per_A']:.3f} / {readme[element][0]:.3f} "
        f"and {r['models'][name]['energy_mae_offset_removed_mev_per_atom']:.1f} / {readme[element][1]:.1f}"
        for name, readme in README_TEACHERS.items() for element, r in record["elements"].items())
    tests = ", ".join(f"{element} {r['models'][TEACHER_ROW]['n_structures']}"
                      for element, r in record["elements"].items())
    budgets = "; ".join(
        f"{r['plan']['element']} from {r['plan']['teacher'].split(' (')[0]}: {r['labels']['reference']} DFT training "
        f"cells ({'all of' if r['plan']['train_cells'] is None else 'a random subset of'} "
        f"`{r['plan']['element']}_train.xyz`) + {r['labels']['structures'] - r['labels']['reference']} sampled, "
        "all labelled by that teacher; "
        f"{r['plan']['distill_epochs']} distill + {r['plan']['fine_tune_epochs']} fine-tune epochs"
        f"{' (' + ', '.join(r['plan']['overrides']) + ')' if r['plan']['overrides'] else ''}; "
        f"labels {r['label_seconds']:.0f} s, training {r['training_seconds']:.0f} s"
        f"{' (an earlier run, reused)' if r.get('reused') else ''}"
        for r in record["students"].values())
    timing = ", ".join(f"{element} {r['timing_atoms']} atoms: SevenNet-0 {r['speed'][TEACHER_ROW]['wall_ms']:.0f} ms, "
                       f"CHGNet {r['speed'][CHGNET_ROW]['wall_ms']:.0f} ms" for element, r in record["elements"].items())
    earlier = [r["label_seconds"] + r["training_seconds"] for r in record["students"].values() if r.get("reused")]
    reused = f", besides {sum(earlier) / 60:.1f} min of the reused students' labels and training" if earlier else ""
    return "\n".join([
        *rows,
        "",
        f"Test sets: every cell of `mlearn/<element>_test.xyz` ({tests}; VASP PBE); no model here trained or "
        "validated on them. Energy MAE per atom; 'offset removed' subtracts the model's mean per-atom error first, "
        "as `shared/data/README.md` does for universal models (the fine-tuned students refit their E0 to DFT, so "
        "their raw MAE is the fair one; the published rows are raw MAE of models fitted on mlearn). Forces per "
        "component, stress over the six Voigt components (ASE sign, meV/Å³). Teachers here / as measured in "
        f"`shared/data/README.md`, F MAE (eV/Å) and E MAE offset removed (meV/atom): {agreement}.",
        f"Students: the teacher distilled (stage 1), then fine-tuned on the element's mlearn DFT training cells "
        f"(stage 2), `experiment={EXPERIMENT}` without its QAT stage, budgeted in epochs. {budgets}. Si: not "
        "retrained, the rows of `results/shipped_si.json` (15 distill + 70 fine-tune epochs on 214 DFT + 360 "
        "sampled cells).",
        f"Speed: energy + forces + stress per ASE call on rattled copies of a test cell, median of {record['repeats']} "
        f"calls, models taking turns, {record['threads']} torch thread(s), one process, students eager with the "
        f"neighbour list rebuilt every call; SevenNet-0's time over the model's ({timing}). Si students: the ratio "
        "measured by `shipped_si.py` on 64-atom diamond cells. "
        f"This invocation of the script: {record['seconds'] / 60:.1f} min on {os.cpu_count()} cores"
        f"{reused}.",
    ]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="folder with mlearn/")
    parser.add_argument("--root", type=Path, default=Path("runs/benchmarks/mlearn"),
                        help="where label files and runs go")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where mlearn.json and mlearn.md are written")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per model and element")
    parser.add_argument("--smoke", action="store_true",
                        help="a check that everything runs, not a result: 6 training and 3 test cells, "
                             "4 sampled, 1 epoch a stage")
    args = parser.parse_args()
    started = time.perf_counter()
    plans, n_test = PLANS, None
    if args.smoke:
        small = ("stages.0.data.n_valid=2", "stages.1.data.n_valid=2")
        plans = {name: replace(plan, sampled=4, distill_epochs=1, fine_tune_epochs=1, train_cells=6,
                               overrides=plan.overrides + small) for name, plan in plans.items()}
        n_test, args.repeats = 3, 1
    teachers = {name: load_teacher(spec).ase_calculator() for name, spec in TEACHERS.items()}
    students, elements = {}, {}
    for element in ELEMENTS:
        test = subset(ase.io.read(args.data / "mlearn" / f"{element}_test.xyz", ":"), n_test)
        folders = {}
        for name, plan in plans.items():
            if plan.element != element:
                continue
            train = subset(ase.io.read(args.data / "mlearn" / f"{element}_train.xyz", ":"), plan.train_cells)
            students[name] = train_student(name, train, plan, (args.root / name).resolve())
            stages = student_folders(Path(students[name]["train_dir"]))
            folders.update({row: stages[stage] for stage, row in plan.rows().items()})
        elements[element] = score_element(element, test, teachers, folders, args.repeats)
    shipped_si_rows(elements["Si"])
    record = {"elements": elements, "students": students, "repeats": args.repeats, "threads": torch.get_num_threads(),
              "smoke": args.smoke, "seconds": time.perf_counter() - started}
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "mlearn.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
    table = markdown(record)
    (args.results / "mlearn.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
