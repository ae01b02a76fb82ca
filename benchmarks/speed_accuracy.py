"""Speed against accuracy over student sizes, on ``../shared/data/sevennet_si``.

Students of ``experiment=si_sevennet`` with more and more channels, rotation orders and layers (all
with the P_2 angle terms) are each trained with the recipe of the published curve (batch 4, E/F/S
loss weights 5/100/5, Adam with amsgrad: ``EARLIER_LOSS``, si_sevennet's before it weighted the forces up;
cosine from 0.02) for the same number of epochs on ``train.xyz`` (324 of the 360 cells labelled by
SevenNet-0; 36 for validation),
scored on ``valid.xyz`` (RMSE per component against the teacher: energy meV/atom, forces meV/Å,
stress meV/Å³) and timed on the CPU beside SevenNet-0 (energy + forces + stress per call through
each model's ASE calculator, 64 and 216 atoms, as in ``benchmarks/sevennet_si.py``).

Two steps, so that training can run where it is fast (a GPU) and timing where it matters (here):

    python benchmarks/speed_accuracy.py train --device cuda --jobs 7 --out DIR   # writes DIR/speed_accuracy.tar.gz
    python benchmarks/speed_accuracy.py time --students DIR             # writes results/speed_accuracy.{json,md,png}

``time`` reads the folder or the ``.tar.gz`` that ``train`` wrote. Students this small leave a GPU
mostly idle, so ``--jobs`` trains several at once; on one H200, 15 at once made about 43 epochs a
minute in all (12 epochs each in 4 minutes), so the seven students of 100 epochs need ~16 minutes.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tarfile
import tempfile
import time
from pathlib import Path

import torch

from reference_training import epochs_completed, regenerate_readme
from sevennet_si import DATA, EARLIER_LOSS, RESULTS
from call_timing import timings

from mlip_distill.calculator import StudentCalculator
from mlip_distill.data.store import import_structures
from mlip_distill.evaluate import evaluate_file
from mlip_distill.package import load_potential
from mlip_distill.teachers import load_teacher
from mlip_distill.training.run import compose_config, train

# name: overrides on top of experiment=si_sevennet (32 channels, l_max 0 with P_2 angle terms, 2 layers, 4.5 Å),
# without the bispectrum it took after this table was made
STUDENTS = {
    "c16-l0-2": ["model.bispectrum=false", "model.channels=16"],
    "c32-l0-2": ["model.bispectrum=false"],
    "c64-l0-2": ["model.bispectrum=false", "model.channels=64"],
    "c32-l0-3": ["model.bispectrum=false", "model.num_layers=3"],
    "c32-l1-2": ["model.bispectrum=false", "model.l_max=1"],
    "c64-l1-3": ["model.bispectrum=false", "model.channels=64", "model.l_max=1", "model.num_layers=3"],
    "c32-l2-3": ["model.bispectrum=false", "model.l_max=2", "model.num_layers=3"],
}
ARCHIVE = "speed_accuracy.tar.gz"


def train_student(name: str, overrides: list[str], labels: Path, valid: Path, work: Path, device: str, epochs: int,
                  minutes: float, batch_size: int) -> dict:
    """Train one student for ``epochs`` epochs (or ``minutes``, whichever ends first); its size and errors."""
    torch.set_num_threads(1)
    seconds = int(minutes * 60)
    config = compose_config([
        "experiment=si_sevennet", f"data.path={labels}", f"run_dir={work / name}", "data.n_valid=36",
        f"data.batch_size={batch_size}", f"trainer.max_epochs={epochs}",
        f"trainer.max_time=00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}",
        f"trainer.accelerator={'gpu' if device.startswith('cuda') else 'cpu'}", "trainer.enable_progress_bar=false",
        "logger=csv", *EARLIER_LOSS, *overrides,
    ])
    result = train(config)
    errors = evaluate_file(result.potential_dir, valid, sources=["reference"])["reference"]
    model = load_potential(result.potential_dir).model
    return {
        "overrides": overrides, "channels": config.model.channels, "l_max": config.model.l_max,
        "angular_order": config.model.angular_order, "layers": config.model.num_layers,
        "parameters": sum(p.numel() for p in model.parameters()), "epochs": epochs_completed(work / name),
        "training_seconds": round(result.seconds, 1), "valid": errors,
    }


def train_students(data: Path, out: Path, device: str, epochs: int, minutes: float, batch_size: int,
                   names: list[str], jobs: int) -> None:
    """Train the students ``names`` (default all), ``jobs`` at a time in worker processes; pack their
    potentials and errors into ``out/ARCHIVE``."""
    work = Path(tempfile.mkdtemp(prefix="speed_accuracy-"))
    labels = work / "train.h5"
    import_structures(data / "train.xyz", labels, source="teacher")
    record = {"epochs": epochs, "minutes": minutes, "batch_size": batch_size, "device": device, "students": {}}
    if device.startswith("cuda"):
        record["gpu"] = torch.cuda.get_device_name(device)
    names = names or list(STUDENTS)
    arguments = [(n, STUDENTS[n], labels, data / "valid.xyz", work, device, epochs, minutes, batch_size) for n in names]
    with multiprocessing.get_context("spawn").Pool(jobs) as pool:
        for name, result in zip(names, pool.starmap(train_student, arguments)):
            record["students"][name] = result
            print(name, result, flush=True)
    (work / "students.json").write_text(json.dumps(record, indent=2, default=float))
    out.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out / ARCHIVE, "w:gz") as archive:
        archive.add(work / "students.json", arcname="students.json")
        for name in record["students"]:
            archive.add(work / name / "potential", arcname=name)


def unpack(students: Path) -> Path:
    if students.is_dir() and (students / ARCHIVE).exists():
        students = students / ARCHIVE
    if students.is_dir():
        return students
    folder = Path(tempfile.mkdtemp(prefix="speed_accuracy-"))
    with tarfile.open(students) as archive:
        archive.extractall(folder, filter="data")
    return folder


def time_students(students: Path) -> dict:
    folder = unpack(students)
    record = json.loads((folder / "students.json").read_text())
    calculators = {"SevenNet-0": load_teacher("sevennet:7net-0").ase_calculator()}
    calculators.update({name: StudentCalculator(folder / name, skin=0.0) for name in record["students"]})
    medians = timings(calculators)  # models take turns call by call: load elsewhere falls on all alike
    teacher_ms = {str(n): t["wall_ms"] for n, t in medians.pop("SevenNet-0").items()}  # keys as JSON writes them
    for name, student in record["students"].items():
        student["speed"] = {
            str(n): {"student_ms": t["wall_ms"], "ratio": teacher_ms[str(n)] / t["wall_ms"]} for n, t in medians[name].items()
        }
    record.update(teacher_ms=teacher_ms, threads=torch.get_num_threads())
    return record


def write_results(record: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "speed_accuracy.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
    rows = [
        "| student | channels | l_max | angle terms | layers | parameters | epochs | E RMSE (meV/atom) | F RMSE (meV/Å) "
        "| S RMSE (meV/Å³) | ms per call, 64 / 216 atoms | speed vs SevenNet-0, 64 / 216 atoms |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in record["students"].items():
        e = s["valid"]
        speed = s["speed"]
        rows.append(
            f"| {name} | {s['channels']} | {s['l_max']} | P_≤{s['angular_order']} | {s['layers']} | {s['parameters']:,} | "
            f"{s['epochs']} | "
            f"{e['energy_rmse_mev_per_atom']:.2f} | {e['forces_rmse_mev_per_A']:.1f} | "
            f"{e.get('stress_rmse_mev_per_A3', float('nan')):.2f} | {speed['64']['student_ms']:.1f} / {speed['216']['student_ms']:.1f} | "
            f"{speed['64']['ratio']:.1f}× / {speed['216']['ratio']:.1f}× |"
        )
    teacher = record["teacher_ms"]
    rows += [
        "",
        f"Each student trained for {record['epochs']} epochs at most (batch {record['batch_size']}, on "
        f"{record.get('gpu', 'the CPU, one thread')}) on `train.xyz`, scored on the 40 cells of `valid.xyz`; timed on the CPU "
        f"({record['threads']} threads) beside SevenNet-0 ({teacher['64']:.0f} ms at 64 atoms, {teacher['216']:.0f} ms at 216), "
        "new structure per call (no neighbour-list reuse), models taking turns call by call, median of 9. Plot: `results/speed_accuracy.png`.",
    ]
    (RESULTS / "speed_accuracy.md").write_text("\n".join(rows) + "\n")
    plot(record)
    regenerate_readme()
    print("\n".join(rows))


def plot(record: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 4))
    names = list(record["students"])
    for n_atoms, marker in (("64", "o"), ("216", "s")):
        speeds = [record["students"][k]["speed"][n_atoms]["ratio"] for k in names]
        errors = [record["students"][k]["valid"]["forces_rmse_mev_per_A"] for k in names]
        axis.plot(speeds, errors, marker=marker, label=f"{n_atoms} atoms")
        if n_atoms == "216":
            for name, x, y in zip(names, speeds, errors):
                axis.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    axis.set_xscale("log")
    axis.set_xlabel("speed-up over SevenNet-0 on the CPU (E+F+S per call)")
    axis.set_ylabel("force RMSE against SevenNet-0 (meV/Å)")
    axis.set_title(f"Student size: speed against accuracy ({record['epochs']} epochs each)")
    axis.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "speed_accuracy.png", dpi=120)
    plt.close(figure)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    training = commands.add_parser("train", help="train every size; pack the students")
    training.add_argument("--data", type=Path, default=DATA)
    training.add_argument("--out", type=Path, required=True)
    training.add_argument("--device", default="cpu")
    training.add_argument("--epochs", type=int, default=100)
    training.add_argument("--minutes", type=float, default=30.0, help="wall-time limit of each student's training")
    training.add_argument("--batch-size", type=int, default=4)
    training.add_argument("--jobs", type=int, default=1, help="students trained at the same time")
    training.add_argument("--students", nargs="*", default=[], help="names in STUDENTS to train (default all)")
    timing = commands.add_parser("time", help="time the students on the CPU beside SevenNet-0; write the results")
    timing.add_argument("--students", type=Path, required=True, help="the folder or .tar.gz that train wrote")
    args = parser.parse_args()
    if args.command == "train":
        start = time.perf_counter()
        train_students(args.data, args.out, args.device, args.epochs, args.minutes, args.batch_size, args.students, args.jobs)
        print(f"trained in {time.perf_counter() - start:.0f} s")
    else:
        write_results(time_students(args.students))


if __name__ == "__main__":
    main()
