"""The shipped silicon student (``potentials/si-sevennet-mlearn``): SevenNet-0 distilled into a
small NequIP-style student, fine-tuned on the DFT labels of the mlearn Si training set, scored
against DFT on the mlearn Si test set beside its teacher.

1. Label file: SevenNet-0 labels of the 214 mlearn Si training cells next to their DFT labels
   (source ``reference``), plus the 360 SevenNet-0-labelled cells of ``sevennet_si/train.xyz``
   (the project's own sampled data: rattled, strained, vacancy and 1,000 K MD diamond cells).
2. Training: ``experiment=si_mlearn_stages`` (distill on the teacher, fine-tune on DFT, QAT),
   budgeted in epochs.
3. Errors against DFT on the 25 cells of ``mlearn/Si_test.xyz``: energy MAE per atom (raw, and
   after removing the model's mean offset, as ``shared/data/README.md`` does for universal
   models), forces MAE per component, stress MAE over the six Voigt components.
4. Speed: energy + forces + stress per call through each model's ASE calculator in this process
   with the same threads, on rattled diamond cells of 64 and 216 atoms (a new cell each call);
   the models take turns call by call, so load from other processes falls on all of them alike.
5. With ``--ship``: the run's final student (stage 2 after QAT, int8 weights) exported to
   ``potentials/si-sevennet-mlearn`` with the test errors, speed and licences in its card.

    OMP_NUM_THREADS=1 python benchmarks/shipped_si.py [--data ../shared/data] [--ship]
    python benchmarks/shipped_si.py --reuse RUN_DIR      # score and time a finished run again
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase import Atoms

from call_timing import timings
from reference_training import write_table

from mlip_distill.calculator import StudentCalculator
from mlip_distill.data.store import LabelStore, import_structures
from mlip_distill.export import export_run
from mlip_distill.model_card import call_speed, this_machine
from mlip_distill.package import load_potential
from mlip_distill.teachers import load_teacher
from mlip_distill.teachers.labelling import label_file
from mlip_distill.training.run import compose_config, train

BENCHMARKS = Path(__file__).parent
RESULTS = BENCHMARKS / "results"
DATA = BENCHMARKS.parent.parent / "shared" / "data"
SHIPPED = BENCHMARKS.parent / "potentials" / "si-sevennet-mlearn"
TEACHER = "sevennet:7net-0"
EXPERIMENT = "si_mlearn_stages"
# SevenNet-0 on Si_test.xyz, from shared/data/README.md (forces eV/Å, energy meV/atom offset removed)
TEACHER_ROW = "SevenNet-0 (teacher)"
SHIPPED_ROW = "stage 3 (QAT, int8)"  # the shipped student's row of the results
README_TEACHER = {"forces_mae": 0.133, "energy_mae_offset_removed": 51.6}


def build_label_file(data: Path, path: Path) -> dict[str, int]:
    """The label file of the module's docstring, at ``path``; returns its structure counts.
    Labelling resumes where a killed run stopped (``path``'s ``.partial.h5.parts``)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".partial.h5")
        # SevenNet-0 labels of the DFT cells; their own labels are kept as `reference`
        label_file(data / "mlearn" / "Si_train.xyz", TEACHER, partial, progress=False)
        import_structures(data / "sevennet_si" / "train.xyz", partial, source="teacher")
        os.replace(partial, path)
    return label_counts(path)


def label_counts(path: Path) -> dict[str, int]:
    with LabelStore(path) as store:
        return {"structures": len(store), "teacher": int(store.has_label("teacher", "energy").sum()),
                "reference": int(store.has_label("reference", "energy").sum())}


def train_students(labels: Path, run_dir: Path, overrides: list[str], n_stages: int | None = None) -> float:
    """Train ``experiment=si_mlearn_stages`` with ``overrides``; returns the wall seconds.
    ``n_stages``: run only the first that many stages (2 leaves out QAT)."""
    config = compose_config([f"experiment={EXPERIMENT}", f"data.path={labels.resolve()}", f"run_dir={run_dir.resolve()}",
                             "trainer.enable_progress_bar=false", *overrides])
    if n_stages is not None:
        config.stages = config.stages[:n_stages]
    return train(config).seconds


def errors_against_dft(calculator, frames: list[Atoms]) -> dict[str, float]:
    """Errors of ``calculator`` against the DFT labels of ``frames`` (see the docstring)."""
    de, df, ds = [], [], []
    for reference in frames:
        atoms = reference.copy()
        atoms.calc = calculator
        de.append((atoms.get_potential_energy() - reference.get_potential_energy()) / len(atoms))
        df.append(atoms.get_forces() - reference.get_forces())
        ds.append(atoms.get_stress() - reference.get_stress())
    de, df, ds = np.array(de), np.concatenate(df), np.array(ds)
    return {
        "energy_mae_mev_per_atom": 1e3 * float(np.abs(de).mean()),
        "energy_offset_mev_per_atom": 1e3 * float(de.mean()),
        "energy_mae_offset_removed_mev_per_atom": 1e3 * float(np.abs(de - de.mean()).mean()),
        "forces_mae_eV_per_A": float(np.abs(df).mean()),
        "forces_rmse_eV_per_A": float(np.sqrt((df**2).mean())),
        "stress_mae_mev_per_A3": 1e3 * float(np.abs(ds).mean()),
        "n_structures": len(frames),
    }


def student_folders(run_dir: Path) -> dict[str, Path]:
    stages = run_dir / "stages"
    folders = {"stage 1 (distill)": stages / "1-distill" / "potential",
               "stage 2 (fine-tune)": stages / "2-fine-tune" / "potential",
               SHIPPED_ROW: run_dir / "potential"}
    return {name: folder for name, folder in folders.items() if (folder / "potential.json").is_file()}


def shipped_speed(record: dict) -> dict:
    """The shipped student's timing beside SevenNet-0's, as the package's speed record; ``record``
    as :func:`main` writes it (its cell sizes may be JSON strings)."""
    student, teacher = record["speed"][SHIPPED_ROW], record["speed"][TEACHER_ROW]
    calls = [{"n_atoms": int(n), "student_ms": student[n]["wall_ms"], "teacher_ms": teacher[n]["wall_ms"]}
             for n in student]
    return call_speed(calls, computes="energy, forces and stress", threads=record["threads"],
                      student=f"eager, neighbour list rebuilt every call, median of {record['repeats']} calls",
                      teacher="SevenNet-0", source="benchmarks/results/shipped_si.md", machine=record.get("machine"))


def ship(train_dir: Path, record: dict, test: list[Atoms]) -> Path:
    """Export the run's final student (stage 3: the fine-tuned student after QAT, int8 weights) to
    ``potentials/si-sevennet-mlearn`` with its speed beside SevenNet-0, and add to its model card
    what the package's metadata does not hold: every stage's errors on the mlearn test set and
    speed, the data and their licences."""
    out = export_run(train_dir, SHIPPED, int8=True, speed=shipped_speed(record))
    shipped = errors_against_dft(StudentCalculator(out), test)  # as a user loads it: the compiled model
    int8 = record["models"][SHIPPED_ROW]
    if abs(shipped["forces_mae_eV_per_A"] - int8["forces_mae_eV_per_A"]) > 1e-4:
        raise RuntimeError(f"{out}: the exported package scores {shipped}, not the QAT student's {int8}")
    card = out / "MODEL_CARD.md"
    speed = record["speed"]
    teacher = speed[TEACHER_ROW]
    rows = [f"| {name} | {e['energy_mae_mev_per_atom']:.1f} | {e['energy_mae_offset_removed_mev_per_atom']:.1f} | "
            f"{e['forces_mae_eV_per_A']:.3f} | {e['stress_mae_mev_per_A3']:.2f} | "
            f"{teacher[64]['wall_ms'] / speed[name][64]['wall_ms']:.0f}× / {teacher[216]['wall_ms'] / speed[name][216]['wall_ms']:.0f}× |"
            for name, e in record["models"].items()]
    card.write_text(card.read_text() + "\n".join([
        "",
        "## Against DFT: the mlearn Si test set",
        "",
        "This package is the run's final student: stage 2 (fine-tuned on DFT) after the QAT stage, int8 weights.",
        "Errors against the VASP PBE labels of the 25 cells of `mlearn/Si_test.xyz`, which no stage trained or",
        "validated on (energy meV/atom, forces eV/Å per component, stress meV/Å³ over the six Voigt components),",
        f"and speed against SevenNet-0 (energy + forces + stress per call, 64 / 216-atom diamond cells,",
        f"{record['threads']} thread(s), same process); from `benchmarks/results/shipped_si.md`:",
        "",
        "| model | E MAE | E MAE, mean offset removed | F MAE | S MAE | speed vs SevenNet-0 |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "## Reproduce everything",
        "",
        "```",
        "OMP_NUM_THREADS=1 python benchmarks/shipped_si.py --data ../shared/data --ship",
        "```",
        "",
        f"builds the label file (SevenNet-0 on `mlearn/Si_train.xyz`, whose DFT labels it keeps as `reference`,",
        f"plus `sevennet_si/train.xyz`), trains `experiment={EXPERIMENT}` (stages distill, fine-tune, qat; budgeted",
        "in epochs), scores teacher and students on the test set, times them and exports this folder.",
        "",
        "## Data and licences",
        "",
        "- DFT labels: mlearn (Zuo et al., J. Phys. Chem. A 124, 731 (2020)), `materialsvirtuallab/mlearn`",
        "  commit 10c427a, Si training set (214 cells; the 25-cell test set only scores), BSD-3-Clause.",
        "- Teacher labels: SevenNet-0 (`7net-0`, sevenn 0.13.0), whose code and weights are GPL-3.0. Only its",
        "  predictions (energies, forces, stresses) were used, as training labels; no SevenNet code or weights",
        "  are in this package. Whether such labels carry the weights' licence is not settled here: check",
        "  before redistributing where it matters.",
        "- `sevennet_si/train.xyz`: 360 diamond-silicon cells labelled by SevenNet-0, made for this project.",
        "",
    ]))
    return out


def markdown(record: dict) -> str:
    speed = record["speed"]
    teacher = speed[TEACHER_ROW]
    rows = [
        "| model | parameters | E MAE (meV/atom) | E MAE, offset removed | E offset | F MAE (eV/Å) | F RMSE (eV/Å) | "
        "S MAE (meV/Å³) | ms per call, 64 / 216 atoms | speed vs SevenNet-0, 64 / 216 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, e in record["models"].items():
        s = speed[name]
        rows.append(
            f"| {name} | {record['parameters'].get(name, '–')} | {e['energy_mae_mev_per_atom']:.1f} | "
            f"{e['energy_mae_offset_removed_mev_per_atom']:.1f} | {e['energy_offset_mev_per_atom']:+.1f} | "
            f"{e['forces_mae_eV_per_A']:.3f} | {e['forces_rmse_eV_per_A']:.3f} | {e['stress_mae_mev_per_A3']:.2f} | "
            f"{s[64]['wall_ms']:.1f} / {s[216]['wall_ms']:.1f} | "
            f"{teacher[64]['wall_ms'] / s[64]['wall_ms']:.1f}× / {teacher[216]['wall_ms'] / s[216]['wall_ms']:.1f}× |")
    cpu = ", ".join(f"{name} {s[64]['cpu_ms']:.0f} / {s[216]['cpu_ms']:.0f}" for name, s in speed.items())
    seconds = record["label_seconds"]
    built = f"built in {seconds:.0f} s" if seconds == seconds else "built by an earlier run (the label time was not recorded)"
    return "\n".join([
        *rows,
        "",
        f"Test set: the {record['models'][TEACHER_ROW]['n_structures']} cells of `mlearn/Si_test.xyz` "
        "(VASP PBE); no stage trained or validated on them. Energy MAE per atom; 'offset removed' subtracts the "
        "model's mean per-atom error first (as `shared/data/README.md` does for universal models; the fine-tuned "
        "students refit their E0 to DFT, so their raw MAE is the fair one). Forces per component, stress over the six "
        f"Voigt components. shared/data/README.md has SevenNet-0 at {README_TEACHER['forces_mae']} eV/Å and "
        f"{README_TEACHER['energy_mae_offset_removed']} meV/atom on this set.",
        f"Label file: {record['labels']}, {built}. Training: `experiment={EXPERIMENT}` {' '.join(record['overrides'])}, {record['training_seconds']:.0f} s wall for "
        f"all stages; scoring and timing {record['scoring_seconds']:.0f} s.",
        f"Speed: energy + forces + stress per ASE call on rattled diamond cells, median of {record['repeats']} calls per "
        f"model, models taking turns, {record['threads']} torch threads, one process; students eager, neighbour list "
        f"rebuilt every call (skin 0). Load average {record['load_before']:.1f} before, {record['load_after']:.1f} after "
        f"the timing on {os.cpu_count()} cores. CPU ms per call, 64 / 216: {cpu}.",
    ]) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="folder with mlearn/ and sevennet_si/")
    parser.add_argument("--root", type=Path, default=Path("runs/benchmarks/shipped_si"), help="where runs are written")
    parser.add_argument("--labels", type=Path, help="the label file, built when missing (default ROOT/labels.h5)")
    parser.add_argument("--reuse", type=Path, help="score and time this finished run instead of training")
    parser.add_argument("--ship", action="store_true", help=f"export the run's final student to {SHIPPED}")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per model and size")
    parser.add_argument("overrides", nargs="*", help=f"training overrides on top of experiment={EXPERIMENT}")
    args = parser.parse_args()
    started = time.perf_counter()
    if args.reuse:
        run_dir = args.reuse
        previous = json.loads((run_dir / "shipped_si_run.json").read_text())
        labels, counts, args.overrides = Path(previous["label_file"]), previous["labels"], previous["overrides"]
        label_seconds, seconds = previous.get("label_seconds", float("nan")), previous["training_seconds"]
    else:
        run_dir = (args.root / time.strftime("%Y%m%d-%H%M%S")).resolve()
        labels = (args.labels or args.root / "labels.h5").resolve()
        counts = build_label_file(args.data, labels)
        label_seconds = time.perf_counter() - started
        print(f"label file {labels}: {counts} ({label_seconds:.0f} s)", flush=True)
        seconds = train_students(labels, run_dir / "train", args.overrides)
        (run_dir / "shipped_si_run.json").write_text(json.dumps(
            {"label_file": str(labels), "labels": counts, "label_seconds": label_seconds, "training_seconds": seconds,
             "overrides": args.overrides}, indent=2))
    train_dir = run_dir / "train"

    test = ase.io.read(args.data / "mlearn" / "Si_test.xyz", ":")
    teacher = load_teacher(TEACHER).ase_calculator()
    folders = student_folders(train_dir)
    # skin 0: the students rebuild their neighbour list on every call, as SevenNet-0 does
    calculators = {TEACHER_ROW: teacher,
                   **{name: StudentCalculator(folder, skin=0.0, compiled=False) for name, folder in folders.items()}}
    models = {}
    for name, calculator in calculators.items():
        models[name] = errors_against_dft(calculator, test)
        print(name, json.dumps(models[name]), flush=True)
    load_before = os.getloadavg()[0]
    speed = timings(calculators, repeats=args.repeats)
    record = {
        "labels": counts, "label_file": str(labels), "overrides": args.overrides, "label_seconds": label_seconds,
        "training_seconds": seconds, "scoring_seconds": time.perf_counter() - started - (0 if args.reuse else label_seconds + seconds),
        "run_dir": str(train_dir), "models": models, "speed": speed, "repeats": args.repeats,
        "parameters": {name: sum(p.numel() for p in load_potential(folder).model.parameters()) for name, folder in folders.items()},
        "threads": torch.get_num_threads(), "machine": this_machine(), "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "shipped_si.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
    table = markdown(record)
    write_table(RESULTS / "shipped_si.md", table)
    print(table)
    if args.ship:
        print(f"shipped: {ship(train_dir, record, test)}")


if __name__ == "__main__":
    main()
