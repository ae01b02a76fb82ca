"""rMD17: NequIP-style students trained directly on the DFT labels, next to the MACE paper.

For each molecule and training-set size N (1,000 and 50 frames of split 01's training file,
drawn at random with seed 0), a student (``experiment=rmd17_nequip``: 3 layers, 32 channels,
l ≤ 1, 5 Å cutoff, E0 = the BOTNet isolated-atom energies, Huber energy term weighted low
against the forces, cosine learning rate) is trained on the ``reference`` labels, 5 % of the N
frames (at least 5) held out to choose the best epoch. Its mean absolute errors on the test
frames (energy in meV per molecule, forces in meV/Å per component) sit beside the MACE paper's
Table 1 (Batatia et al. 2022), with its speed as an ASE calculator on this machine's CPU.

The budget is a number of epochs, so a run is reproducible: ``--epochs`` for N = 1,000 (950
training frames), and the same number of optimiser steps for smaller N (more epochs, with
validation about as often in steps). ``--max-minutes`` only guards the 30-minute limit of a
benchmark on 2 shared cores: a run that reaches it stops there, its cosine ending on time.

    # one molecule, 1,000 and 50 frames, under 30 minutes on 2 shared CPU cores
    python benchmarks/rmd17.py --molecules ethanol
    # the committed table: four invocations trained apart (--json-out), then scored together
    python benchmarks/rmd17.py --molecules ethanol --no-speed --json-out ethanol.json
    python benchmarks/rmd17.py --molecules malonaldehyde --no-speed --json-out malonaldehyde.json
    python benchmarks/rmd17.py --molecules aspirin --epochs 12 --no-speed --json-out aspirin.json
    python benchmarks/rmd17.py --molecules ethanol --sizes 1000 --epochs 44 --max-minutes 28 \
        --no-speed --json-out ethanol_long.json      # the shipped potentials/ethanol-rmd17
    python benchmarks/rmd17.py --rescore ethanol.json ethanol_long.json malonaldehyde.json aspirin.json \
        --note "..."
    # on a GPU, to convergence (not run for the committed table)
    python benchmarks/rmd17.py --epochs 500 --max-minutes 0 --accelerator gpu

Writes benchmarks/results/rmd17.{json,md} and regenerates benchmarks/README.md, unless
``--json-out`` names a file for the scored runs instead. The rows of students distilled from a
cheap teacher before the 50 DFT frames come from ``rmd17_distill.py``, which adds them to these
results; a ``--rescore`` keeps them when its ``--json-out`` file is among those it is given.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import torch
from ase.io import read, write

from mlip_distill.calculator import StudentCalculator
from mlip_distill.export import refresh_package
from mlip_distill.model_card import call_speed, this_machine
from mlip_distill.package import read_metadata
from mlip_distill.training.run import compose_config, train
from peers.call_timing import calls_per_second
from reference_training import (
    RESULTS, default_data_dir, epochs_completed, errors_on_test_set, reference_label_file, regenerate_readme,
)

# MACE paper, Table 1 (MAE; energy meV per molecule, forces meV/Å): {molecule: {N: (E, F)}}.
PUBLISHED = {
    "ethanol": {"MACE": {1000: (0.4, 2.1), 50: (6.7, 32.6)}, "NequIP": {1000: (0.4, 2.8), 50: (8.7, 40.2)}},
    "malonaldehyde": {"MACE": {1000: (0.8, 4.1), 50: (10.0, 43.3)}, "NequIP": {1000: (0.8, 5.1), 50: (12.7, 52.5)}},
    "aspirin": {"MACE": {1000: (2.2, 6.6), 50: (17.0, 43.9)}, "NequIP": {1000: (2.3, 8.2), 50: (19.5, 52.0)}},
}
EXPERIMENT = "rmd17_nequip"
FULL_SIZE = 1000  # the size --epochs refers to


def n_valid_of(n_frames: int) -> int:
    """Frames held out to choose the best epoch: 5 %, at least 5."""
    return max(5, n_frames // 20)


def steps_per_epoch(n_frames: int, batch_size: int) -> int:
    return math.ceil((n_frames - n_valid_of(n_frames)) / batch_size)


def budget(n_frames: int, epochs_at_full_size: int, batch_size: int) -> tuple[int, int]:
    """Epochs for ``n_frames`` that take as many optimiser steps as ``epochs_at_full_size`` epochs
    of 1,000 frames, and how often (in epochs) to validate so that it happens about once per
    1,000-frame epoch's worth of steps."""
    full, here = steps_per_epoch(FULL_SIZE, batch_size), steps_per_epoch(n_frames, batch_size)
    return max(1, round(epochs_at_full_size * full / here)), max(1, round(full / here))


def train_student(
    labels: Path, run_dir: Path, n_frames: int, epochs: int, accelerator: str, max_minutes: float, overrides: list[str]
) -> dict:
    """Train ``experiment=rmd17_nequip`` on ``labels`` for the step budget of ``epochs``, stopped
    after ``max_minutes`` of wall time if it gets there first (0: no limit)."""
    batch_size = int(compose_config([f"experiment={EXPERIMENT}"]).data.batch_size)
    max_epochs, validate_every = budget(n_frames, epochs, batch_size)
    seconds = int(round(max_minutes * 60))
    limit = [f"trainer.max_time=00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"] if seconds else []
    config = compose_config([
        f"experiment={EXPERIMENT}", f"data.path={labels.resolve()}", f"run_dir={run_dir.resolve()}",
        f"data.n_valid={n_valid_of(n_frames)}", f"trainer.max_epochs={max_epochs}",
        f"trainer.check_val_every_n_epoch={validate_every}", f"trainer.accelerator={accelerator}", "logger=csv",
        *limit, *overrides,
    ])
    result = train(config)
    return {
        "n_train": n_frames - n_valid_of(n_frames), "n_valid": n_valid_of(n_frames), "max_epochs": max_epochs,
        "optimiser_steps": max_epochs * steps_per_epoch(n_frames, batch_size), "validations": epochs_completed(run_dir),
        "epochs_run": epochs_run(run_dir), "max_minutes": max_minutes, "accelerator": accelerator,
        "training_seconds": result.seconds, "potential": str(result.potential_dir), "overrides": overrides,
    }


def epochs_run(run_dir: Path) -> int:
    """Epochs a run finished (fewer than asked when its time limit stopped it)."""
    with open(run_dir / "metrics.csv") as handle:
        return 1 + max((int(row["epoch"]) for row in csv.DictReader(handle) if row.get("epoch")), default=-1)


def test_subset(test_path: Path, n_frames: int | None, out: Path) -> Path:
    """``test_path`` itself, or the first ``n_frames`` of it written to ``out``."""
    if n_frames is None:
        return test_path
    write(out, read(test_path, f":{n_frames}"), format="extxyz")
    return out


def calculator_speed(potential_dir: Path, frame_path: Path, calls: int = 50) -> dict:
    """Energy-and-forces calls per second of the student as an ASE calculator on one test frame
    (CPU, float32, the package's compiled model where it has one), each call on positions
    displaced by up to 0.01 Å so that nothing is cached; median of 3 rounds after a warm-up round."""
    atoms = read(frame_path, index=0)
    calculator = StudentCalculator(potential_dir)
    return {"calls_per_s": calls_per_second(calculator, atoms, calls), "threads": torch.get_num_threads(),
            "compiled": bool(calculator.compiled), "n_atoms": len(atoms), "machine": this_machine()}


def record_speed(package: Path, runs: list[dict]) -> None:
    """Write the measured speed of the run whose weights ``package`` holds (an export of its
    student) into the package's ``potential.json`` and model card: the student alone, since it
    learnt the DFT labels with no teacher to time beside it."""
    weights = read_metadata(package)["weights_sha256"]
    run = next((run for run in runs if "speed" in run and read_metadata(run["potential"])["weights_sha256"] == weights),
               None)
    if run is None:
        raise SystemExit(f"{package}: no timed run has its weights; export the run, then --rescore it with --ship")
    speed = run["speed"]
    student = f"{'compiled model' if speed['compiled'] else 'eager'}, median of 3 rounds of 50 calls"
    refresh_package(package, speed=call_speed(
        [{"n_atoms": speed["n_atoms"], "student_ms": 1e3 / speed["calls_per_s"]}], computes="energy and forces",
        threads=speed["threads"], student=student, source="benchmarks/results/rmd17.md", machine=speed.get("machine")))


def score(run: dict, data: Path, test_frames: int | None, scratch: Path, speed: bool = True) -> dict:
    """Test errors and CPU speed of a trained run's student, measured on this machine; test
    errors already in ``run`` for the same test frames are kept."""
    test_path = data / "rmd17" / f"{run['molecule']}_test.xyz"
    n_atoms = len(read(test_path, index=0))
    potential = Path(run["potential"])
    metadata = read_metadata(potential)
    scored = {**run, "n_parameters": metadata["n_parameters"], "architecture": metadata["model"]["hyperparameters"]}
    if run.get("test", {}).get("n_test") != (test_frames or 1000):
        subset = test_subset(test_path, test_frames, scratch / f"{run['molecule']}_test_subset.xyz")
        scored["test"] = errors_on_test_set(potential, subset, n_atoms)
    if speed:
        scored["speed"] = calculator_speed(potential, test_path)
    return scored


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="folder with rmd17/ and ethanol_botnet/")
    parser.add_argument("--molecules", nargs="+", default=["ethanol"], choices=sorted(PUBLISHED))
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 50], help="training frames (at most 1000)")
    parser.add_argument("--epochs", type=int, default=24,
                        help="epochs of the 1,000-frame runs; smaller sets get as many optimiser steps")
    parser.add_argument("--max-minutes", type=float, default=13.0,
                        help="wall-time guard per run, minutes (0: none); the budget is --epochs")
    parser.add_argument("--accelerator", default="cpu", choices=["cpu", "gpu"], help="where to train")
    parser.add_argument("--test-frames", type=int, default=0,
                        help="score on the first N of the 1,000 test frames; 0: all of them")
    parser.add_argument("--override", nargs="*", default=[], help="more Hydra overrides for every run")
    parser.add_argument("--json-out", type=Path, default=None,
                        help="write the runs (trained, not scored) here instead of scoring them")
    parser.add_argument("--rescore", type=Path, nargs="+", default=None,
                        help="score the runs of these --json-out files (a run folder not found where it was "
                             "trained is looked for beside the file) and write the results")
    parser.add_argument("--note", default="", help="a sentence added below the table (which row shipped, say)")
    parser.add_argument("--no-speed", action="store_true", help="with --rescore --json-out: test errors only")
    parser.add_argument("--ship", type=Path, default=None,
                        help="a package exported from one of the runs (potentials/ethanol-rmd17): record the "
                             "speed measured here in its potential.json and model card")
    parser.add_argument("--root", type=Path, default=Path("runs/benchmarks/rmd17"), help="where runs are written")
    args = parser.parse_args()
    test_frames = args.test_frames or None
    root = args.root / time.strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True)

    if args.rescore:
        runs, settings = [], {}
        for path in args.rescore:
            trained = json.loads(path.read_text())
            settings.update({key: value for key, value in trained.items() if key != "runs"})
            for run in trained["runs"]:
                if not Path(run["potential"]).is_dir():  # trained elsewhere: its run folder beside the file
                    run["potential"] = str(path.parent / Path(run["potential"]).parent.name / "potential")
                runs.append(run)
    else:
        runs, settings = [], {"epochs": args.epochs, "experiment": EXPERIMENT, "training_threads": torch.get_num_threads(),
                              "device": torch.cuda.get_device_name() if args.accelerator == "gpu" else "cpu"}
        isolated_atoms = args.data / "ethanol_botnet" / "isolated_atoms.xyz"
        for molecule in args.molecules:
            for size in args.sizes:
                train_path = args.data / "rmd17" / f"{molecule}_train.xyz"
                labels, n_frames = reference_label_file(train_path, isolated_atoms, root / f"{molecule}_{size}.h5", size)
                trained = train_student(labels, root / f"{molecule}_{size}", n_frames, args.epochs, args.accelerator,
                                        args.max_minutes, args.override)
                runs.append({"molecule": molecule, "n_frames": n_frames, **trained})
                print(json.dumps(runs[-1], indent=2), flush=True)
        if args.json_out:
            args.json_out.write_text(json.dumps({**settings, "runs": runs}, indent=2) + "\n")
            return

    scored = [score(run, args.data, test_frames, root, speed=not args.no_speed) for run in runs]
    if args.ship:
        record_speed(args.ship, scored)
    if args.json_out:  # scored elsewhere than here: the table waits for a --rescore with speeds
        args.json_out.write_text(json.dumps({**settings, "test_frames": test_frames or 1000, "runs": scored}, indent=2) + "\n")
        return
    results = {**settings, "test_frames": test_frames or 1000, "scoring_threads": torch.get_num_threads(),
               "note": args.note, "runs": scored}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rmd17.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "rmd17.md").write_text(table(results))
    regenerate_readme()
    print(table(results))


def table(results: dict) -> str:
    lines = [
        "| molecule | N train | this student E / F | MACE E / F | NequIP E / F | training | student speed (CPU) |",
        "|---|---|---|---|---|---|---|",
    ]
    def order(run: dict) -> tuple:
        return list(PUBLISHED).index(run["molecule"]), -run["n_frames"], "pretraining" in run

    for run in sorted(results["runs"], key=order):
        test, published = run["test"], PUBLISHED[run["molecule"]]
        mace, nequip = published["MACE"][run["n_frames"]], published["NequIP"][run["n_frames"]]
        speed = run["speed"]
        frames = f"{run['n_frames']} ({run['n_valid']} of them for validation)"
        if "stages" in run:
            frames += f" + {run['pretraining']['n_sampled']:,} structures sampled and labelled by {run['pretraining']['teacher']}"
        lines.append(
            f"| {run['molecule']} | {frames} | **{test['energy_mae_mev']:.1f} / {test['forces_mae_mev_per_A']:.1f}** "
            f"| {mace[0]} / {mace[1]} | {nequip[0]} / {nequip[1]} "
            f"| {_training(run)}, {run['training_seconds'] / 60:.1f} min ({run['accelerator']}, guard {run['max_minutes']:g} min) "
            f"| {speed['calls_per_s']:.0f} E+F calls/s ({speed['n_atoms']} atoms) |"
        )
    first = results["runs"][0]
    arch = first["architecture"]
    lines.append(
        f"\nMean absolute errors on {_test_frames(results['test_frames'])} of split 01: energy in "
        "meV per molecule, forces in meV/Å per component. This student: `experiment=rmd17_nequip` (NequIP-style, "
        f"{arch['num_layers']} layers, {arch['channels']} channels, l ≤ {arch['l_max']}, {arch['cutoff']:g} Å cutoff, "
        f"{first['n_parameters']:,} parameters; E0 = the BOTNet isolated-atom energies; Huber energy term weight 1, "
        "force MSE weight 100 in units of the data's spreads; AdamW lr 0.01, batch 5, cosine to 1e-5, EMA 0.995), "
        "trained for the epochs of the training column (a 50-frame set gets as many optimiser steps as the "
        f"1,000-frame set of its invocation) on {results['device']}, {results['training_threads']} thread(s) per run, "
        "with a wall-time guard per run that ends the cosine on time if it is reached; the training column is the "
        "whole run with data loading and validation, on 2 CPU cores shared with 3-5 other jobs. Speed: ASE calculator calls (energy and forces, "
        f"one molecule) per second on {results['scoring_threads']} CPU thread(s) of the same busy machine. These "
        "students are far from converged: the published models are larger (MACE: 256 channels, l ≤ 3 messages; "
        "NequIP: l ≤ 3, 64 channels, 5 layers) and trained for days on a GPU. Against a MACE of the paper's "
        "size on the same CPU: `results/rmd17_mace_speed.md` (`python benchmarks/rmd17_mace_speed.py`). N = 50 columns of the paper for the 50-frame rows. Only the "
        "molecules and sizes listed were run." + (f" {results['note']}" if results.get("note") else "")
        + _distillation_note(results["runs"]) + "\n"
    )
    return "\n".join(lines)


def _training(run: dict) -> str:
    """Epochs and steps of a run, or of each stage of a staged (distilled) run."""
    def epochs(stage: dict) -> str:
        stopped = "" if stage["epochs_run"] >= stage["max_epochs"] else f", stopped by the time limit after {stage['epochs_run']}"
        return f"{stage['max_epochs']} epochs{stopped} ({stage['optimiser_steps']} steps)"

    if "stages" not in run:
        return epochs(run)
    return "; ".join(f"{name}: {epochs(stage)}" for name, stage in run["stages"].items())


def _distillation_note(runs: list[dict]) -> str:
    """What the distilled rows did, from their records (empty when there are none)."""
    distilled = [run for run in runs if "stages" in run]
    if not distilled:
        return ""

    def sampling(run: dict) -> str:
        p = run["pretraining"]
        return (f"{run['molecule']}: {p['md_frames']} MD frames at each of {', '.join(f'{t:g}' for t in p['md_temperatures'])} K "
                f"and {p['rattles']} rattles of σ {p['rattle_sigma'][0]:g}–{p['rattle_sigma'][1]:g} Å, "
                f"{p['sampling_seconds'] + p['labelling_seconds']:.0f} s to sample and label; the teacher itself "
                f"{p['teacher_test']['energy_mae_mev']:.1f} / {p['teacher_test']['forces_mae_mev_per_A']:.1f} off DFT")

    return (
        f" Rows with sampled structures (`python benchmarks/rmd17_distill.py`, `experiment={distilled[0]['experiment']}`): "
        "the same student, first distilled from the teacher on structures sampled around the same DFT frames "
        "(Langevin MD driven by the teacher from each frame, and Gaussian rattles of the frames; "
        f"{distilled[0]['pretraining']['n_teacher_valid']} held out) and labelled by it with the DFT frames (E0 = the "
        "teacher's isolated atoms), then fine-tuned on the DFT frames alone (E0 refitted to them first; lower "
        "learning rate, energy weight raised), the same frames held out; the training column gives both stages and "
        "their total wall time, sampling and labelling not included. Per molecule ("
        "the teacher's MAE against DFT on the same test frames, its energy after removing the mean offset): "
        + "; ".join(sampling(run) for run in distilled) + "."
    )


def _test_frames(n: int) -> str:
    return "all 1,000 test frames" if n >= 1000 else f"the first {n} of the 1,000 test frames"


if __name__ == "__main__":
    main()
