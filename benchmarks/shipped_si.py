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
5. With ``--ship``: the stage-2 (float32) student exported to ``potentials/si-sevennet-mlearn``.

    OMP_NUM_THREADS=2 python benchmarks/shipped_si.py [--data ../shared/data] [--ship]
    python benchmarks/shipped_si.py --reuse RUN_DIR      # score and time a finished run again
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from statistics import median

import ase.io
import numpy as np
import torch
from ase import Atoms
from ase.build import bulk

from mlip_distill.calculator import StudentCalculator
from mlip_distill.data.store import LabelStore, import_structures
from mlip_distill.export import export_run
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


def train_students(labels: Path, run_dir: Path, overrides: list[str]) -> float:
    config = compose_config([f"experiment={EXPERIMENT}", f"data.path={labels.resolve()}", f"run_dir={run_dir.resolve()}",
                             "trainer.enable_progress_bar=false", *overrides])
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


def rattled_diamond(repeat: int, seed: int) -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeat)
    atoms.rattle(0.05, seed=seed)
    return atoms


def timings(calculators: dict[str, object], repeats: int = 9, warmup: int = 2) -> dict[str, dict[int, dict]]:
    """Median wall and CPU ms of an energy + forces + stress call per model and cell size; the
    models take turns call by call."""
    wall = {name: {n: [] for n in (64, 216)} for name in calculators}
    cpu = {name: {n: [] for n in (64, 216)} for name in calculators}
    for k in range(warmup + repeats):
        for repeat in (2, 3):
            atoms = rattled_diamond(repeat, seed=k)
            for name, calculator in calculators.items():
                probe = atoms.copy()
                probe.calc = calculator
                start, start_cpu = time.perf_counter(), time.process_time()
                probe.get_potential_energy(), probe.get_forces(), probe.get_stress()
                if k >= warmup:
                    wall[name][len(atoms)].append(time.perf_counter() - start)
                    cpu[name][len(atoms)].append(time.process_time() - start_cpu)
    return {name: {n: {"wall_ms": 1e3 * median(wall[name][n]), "cpu_ms": 1e3 * median(cpu[name][n])} for n in (64, 216)}
            for name in calculators}


def student_folders(run_dir: Path) -> dict[str, Path]:
    stages = run_dir / "stages"
    folders = {"stage 1 (distill)": stages / "1-distill" / "potential",
               "stage 2 (fine-tune)": stages / "2-fine-tune" / "potential",
               "stage 3 (QAT, int8)": run_dir / "potential"}
    return {name: folder for name, folder in folders.items() if (folder / "potential.json").is_file()}


def ship(run_dir: Path, record: dict) -> Path:
    """Export the stage-2 student to ``potentials/si-sevennet-mlearn`` with what the model card
    needs beyond the package's own metadata: the test errors, the data and their licences."""
    out = export_run(run_dir / "stages" / "2-fine-tune" / "potential", SHIPPED)
    card = out / "MODEL_CARD.md"
    test = record["models"]
    rows = [f"| {name} | {e['energy_mae_mev_per_atom']:.1f} | {e['energy_mae_offset_removed_mev_per_atom']:.1f} | "
            f"{e['forces_mae_eV_per_A']:.3f} | {e['stress_mae_mev_per_A3']:.2f} |" for name, e in test.items()]
    card.write_text(card.read_text() + "\n".join([
        "",
        "## Against DFT: the mlearn Si test set (25 cells)",
        "",
        "This package is the stage-2 (fine-tuned, float32) student. Errors against the VASP PBE labels of",
        "`mlearn/Si_test.xyz`, which no stage trained or validated on (energy meV/atom, forces eV/Å per",
        "component, stress meV/Å³ over the six Voigt components; from `benchmarks/results/shipped_si.md`):",
        "",
        "| model | E MAE | E MAE, mean offset removed | F MAE | S MAE |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "## Reproduce",
        "",
        "```",
        "OMP_NUM_THREADS=2 python benchmarks/shipped_si.py --data ../shared/data --ship",
        "```",
        "",
        f"builds the label file, trains `experiment={EXPERIMENT}` (stages distill, fine-tune, qat; epochs, not",
        "wall time), scores every model on the test set and exports this folder. The training command alone,",
        "on that label file: `mlip-distill train experiment=si_mlearn_stages data.path=LABELS.h5`.",
        "",
        "## Data and licences",
        "",
        "- DFT labels: mlearn (Zuo et al., J. Phys. Chem. A 124, 731 (2020)), `materialsvirtuallab/mlearn`",
        "  commit 10c427a, Si training set (214 cells; test set of 25 used only for scoring), BSD-3-Clause.",
        "- Teacher labels: SevenNet-0 (`7net-0`, sevenn 0.13.0), whose code and weights are GPL-3.0. Only",
        "  its predictions (energies, forces, stresses) were used, as training labels; no SevenNet code or",
        "  weights are in this package. Whether labels carry the weights' licence is a legal question this",
        "  card does not settle: check it before redistributing in a setting where it matters.",
        "- `sevennet_si/train.xyz`: 360 diamond-silicon cells labelled by SevenNet-0, made for this project.",
        "",
    ]))
    return out


def markdown(record: dict) -> str:
    speed = record["speed"]
    teacher = speed["SevenNet-0 (teacher)"]
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
    return "\n".join([
        *rows,
        "",
        f"Test set: the {record['models']['SevenNet-0 (teacher)']['n_structures']} cells of `mlearn/Si_test.xyz` "
        "(VASP PBE); no stage trained or validated on them. Energy MAE per atom; 'offset removed' subtracts the "
        "model's mean per-atom error first (as `shared/data/README.md` does for universal models; the fine-tuned "
        "students refit their E0 to DFT, so their raw MAE is the fair one). Forces per component, stress over the six "
        f"Voigt components. shared/data/README.md has SevenNet-0 at {README_TEACHER['forces_mae']} eV/Å and "
        f"{README_TEACHER['energy_mae_offset_removed']} meV/atom on this set.",
        f"Label file: {record['labels']}. Training: `experiment={EXPERIMENT}` {' '.join(record['overrides'])}, "
        f"{record['training_seconds']:.0f} s wall for all stages.",
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
    parser.add_argument("--ship", action="store_true", help=f"export the stage-2 student to {SHIPPED}")
    parser.add_argument("--repeats", type=int, default=9, help="timed calls per model and size")
    parser.add_argument("overrides", nargs="*", help=f"training overrides on top of experiment={EXPERIMENT}")
    args = parser.parse_args()

    if args.reuse:
        run_dir = args.reuse
        previous = json.loads((run_dir / "shipped_si_run.json").read_text())
        labels, counts, seconds, args.overrides = Path(previous["label_file"]), previous["labels"], previous["training_seconds"], previous["overrides"]
    else:
        run_dir = (args.root / time.strftime("%Y%m%d-%H%M%S")).resolve()
        labels = (args.labels or args.root / "labels.h5").resolve()
        start = time.perf_counter()
        counts = build_label_file(args.data, labels)
        print(f"label file {labels}: {counts} ({time.perf_counter() - start:.0f} s)", flush=True)
        seconds = train_students(labels, run_dir / "train", args.overrides)
        (run_dir / "shipped_si_run.json").write_text(json.dumps(
            {"label_file": str(labels), "labels": counts, "training_seconds": seconds, "overrides": args.overrides}, indent=2))
    train_dir = run_dir / "train"

    test = ase.io.read(args.data / "mlearn" / "Si_test.xyz", ":")
    teacher = load_teacher(TEACHER).ase_calculator()
    folders = student_folders(train_dir)
    # skin 0: the students rebuild their neighbour list on every call, as SevenNet-0 does
    calculators = {"SevenNet-0 (teacher)": teacher,
                   **{name: StudentCalculator(folder, skin=0.0, compiled=False) for name, folder in folders.items()}}
    models = {}
    for name, calculator in calculators.items():
        models[name] = errors_against_dft(calculator, test)
        print(name, json.dumps(models[name]), flush=True)
    load_before = os.getloadavg()[0]
    speed = timings(calculators, repeats=args.repeats)
    record = {
        "labels": counts, "label_file": str(labels), "overrides": args.overrides, "training_seconds": seconds,
        "run_dir": str(train_dir), "models": models, "speed": speed, "repeats": args.repeats,
        "parameters": {name: sum(p.numel() for p in load_potential(folder).model.parameters()) for name, folder in folders.items()},
        "threads": torch.get_num_threads(), "load_before": load_before, "load_after": os.getloadavg()[0],
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "shipped_si.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
    table = markdown(record)
    (RESULTS / "shipped_si.md").write_text(table)
    print(table)
    if args.ship:
        print(f"shipped: {ship(train_dir, record)}")


if __name__ == "__main__":
    main()
