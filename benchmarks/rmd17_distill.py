"""rMD17 with 50 DFT frames, helped by a cheap teacher: distil GFN2-xTB, then fine-tune on DFT.

The 50-frame rows of ``rmd17.py`` train ``experiment=rmd17_nequip`` on 50 DFT frames alone. Here
the same student first learns a cheap teacher's labels of many structures sampled around those
frames, then the same 50 frames (the same 5 of them held out to choose the best epoch), and is
tested on the same 1,000 test frames (``experiment=rmd17_xtb_stages``):

1. sample: Langevin MD driven by the teacher from each of the 50 frames at a few temperatures
   (``mlip_distill.sampling.teacher_md``) and Gaussian rattles of the 50 frames;
2. label: the teacher on the sampled structures and on the 50 frames (``label_file``), beside
   their DFT labels (source ``reference``);
3. train, in stages: distil on the teacher's labels (E0 = the teacher's isolated atoms), then
   fine-tune on the DFT labels (E0 refitted to them first).

Budgets are optimiser steps (``--distill-steps``, ``--fine-tune-steps``, batch 5), turned into
epochs; ``--max-minutes`` only guards the 30-minute limit of a benchmark on 2 shared cores, split
between the stages in proportion to their steps. The teacher's own errors against DFT on the
test frames (its energies shifted by their mean offset) are recorded beside the student's.

    # the committed rows, one invocation each (ethanol 12.5 min on 1 thread of 2 shared cores)
    OMP_NUM_THREADS=1 python benchmarks/rmd17_distill.py --molecules ethanol
    OMP_NUM_THREADS=1 python benchmarks/rmd17_distill.py --molecules ethanol --distill-steps 18000 \
        --fine-tune-steps 4000 --max-minutes 21                        # twice the steps: 17.4 min
    OMP_NUM_THREADS=1 python benchmarks/rmd17_distill.py --molecules malonaldehyde
    OMP_NUM_THREADS=1 python benchmarks/rmd17_distill.py --molecules aspirin --md-frames 300 --rattles 600 \
        --distill-steps 6000 --fine-tune-steps 1500 --max-minutes 20    # 21 atoms: less, to stay under 30 min
    # writes its rows into benchmarks/results/rmd17.{json,md} (replacing earlier distilled rows
    # of the same molecule, teacher and step budget) and regenerates benchmarks/README.md; with --json-out
    # the scored runs go to a file instead, for `rmd17.py --rescore` with the other rows.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from ase.io import read, write

from mlip_distill.data.store import LabelStore, import_structures
from mlip_distill.sampling import rattle, teacher_md
from mlip_distill.teachers.labelling import label_file
from mlip_distill.teachers.registry import load_teacher
from mlip_distill.training.run import compose_config, train
from reference_training import RESULTS, default_data_dir, epochs_completed, reference_label_file, regenerate_readme
from rmd17 import PUBLISHED, epochs_run, n_valid_of, score, table

EXPERIMENT = "rmd17_xtb_stages"


def sample_around(frames: list, teacher_spec: str, temperatures: list[float], md_frames: int, rattles: int,
                  rattle_range: tuple[float, float], seed: int) -> list:
    """Teacher-MD frames (``md_frames`` per temperature, 0.5 fs steps, a frame every 20 steps
    after 40 of equilibration, shared among ``frames`` as seeds) and ``rattles`` rattled copies
    of ``frames`` (taken in turn), without labels."""
    rng = np.random.default_rng(seed)
    sampled = teacher_md(frames, load_teacher(teacher_spec), temperatures, frames=md_frames, interval=20,
                         equilibration=40, timestep_fs=0.5, supercell=None, min_distance=0.5, rng=rng)
    for k in range(rattles):
        sampled += rattle(frames[k % len(frames)], rattle_range, rng=rng)
    return sampled


def teacher_label_file(
    frames_path: Path, isolated_atoms: Path, n_frames: int, teacher_spec: str, out: Path, args: argparse.Namespace
) -> tuple[Path, dict]:
    """A label file of the ``n_frames`` DFT frames of ``rmd17.py``'s draw (source ``reference``,
    first, in the same order, so the same frames are held out) followed by the structures
    sampled around them, every one labelled by the teacher (source ``teacher``)."""
    start = time.perf_counter()
    reference_label_file(frames_path, isolated_atoms, out, n_frames)
    with LabelStore(out) as store:
        frames = [store.structure(k) for k in range(len(store))]
    sampled = sample_around(frames, teacher_spec, args.md_temperatures, args.md_frames, args.rattles,
                            tuple(args.rattle), args.seed)
    sampling_seconds = time.perf_counter() - start
    write(out.with_name(out.stem + "_sampled.xyz"), sampled, format="extxyz")
    import_structures(out.with_name(out.stem + "_sampled.xyz"), out)
    summary = label_file(out, teacher_spec, out, progress=False)
    return out, {
        "teacher": teacher_spec, "n_sampled": len(sampled), "n_teacher_labelled": summary.n_labelled,
        "n_failed": summary.n_failed, "md_temperatures": args.md_temperatures, "md_frames": args.md_frames,
        "rattles": args.rattles, "rattle_sigma": list(args.rattle), "sampling_seconds": sampling_seconds,
        "labelling_seconds": time.perf_counter() - start - sampling_seconds,
    }


def teacher_errors(teacher_spec: str, test_path: Path) -> dict[str, float]:
    """MAE of the teacher against the DFT test frames: forces in meV/Å, energy in meV per
    molecule after removing the mean energy offset (the two methods' zeros differ)."""
    teacher = load_teacher(teacher_spec)
    energies, force_errors = [], []
    for atoms in read(test_path, ":"):
        labels = teacher.label(atoms)
        energies.append((labels["energy"], atoms.get_potential_energy()))
        force_errors.append(np.abs(labels["forces"] - atoms.get_forces()).ravel())
    difference = np.array([e_teacher - e_dft for e_teacher, e_dft in energies])
    return {"n_test": len(energies), "energy_mae_mev": 1000 * float(np.mean(np.abs(difference - difference.mean()))),
            "mean_energy_offset_ev": float(difference.mean()),
            "forces_mae_mev_per_A": 1000 * float(np.mean(np.concatenate(force_errors)))}


def teacher_valid_of(n_structures: int) -> int:
    """Teacher-labelled structures held out in the distill stage: 100, or a tenth of fewer."""
    return min(100, max(1, n_structures // 10))


def train_staged(labels: Path, run_dir: Path, n_frames: int, n_teacher: int, args: argparse.Namespace) -> dict:
    """``experiment=rmd17_xtb_stages`` on ``labels``: the distill stage for about
    ``--distill-steps`` optimiser steps, the fine-tune stage for about ``--fine-tune-steps``."""
    batch_size = int(compose_config([f"experiment={EXPERIMENT}"]).data.batch_size)
    n_teacher_valid = teacher_valid_of(n_teacher)
    distill_steps_per_epoch = math.ceil((n_teacher - n_teacher_valid) / batch_size)
    fine_tune_steps_per_epoch = math.ceil((n_frames - n_valid_of(n_frames)) / batch_size)
    distill_epochs = max(1, round(args.distill_steps / distill_steps_per_epoch))
    fine_tune_epochs = max(1, round(args.fine_tune_steps / fine_tune_steps_per_epoch))
    # validate the fine-tune stage about every 100 steps
    fine_tune_validate_every = max(1, round(100 / fine_tune_steps_per_epoch))
    guards = []
    if args.max_minutes:
        share = distill_epochs * distill_steps_per_epoch / (
            distill_epochs * distill_steps_per_epoch + fine_tune_epochs * fine_tune_steps_per_epoch)
        for stage, minutes in ((0, args.max_minutes * share), (1, args.max_minutes * (1 - share))):
            seconds = int(round(minutes * 60))
            guards.append(f"stages.{stage}.trainer.max_time=00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:"
                          f"{seconds % 60:02d}")
    config = compose_config([
        f"experiment={EXPERIMENT}", f"data.path={labels.resolve()}", f"run_dir={run_dir.resolve()}", "logger=csv",
        f"stages.0.data.n_valid={n_teacher_valid}", f"stages.0.trainer.max_epochs={distill_epochs}",
        f"stages.1.data.n_valid={n_valid_of(n_frames)}", f"stages.1.trainer.max_epochs={fine_tune_epochs}",
        f"stages.1.trainer.check_val_every_n_epoch={fine_tune_validate_every}", *guards, *args.override,
    ])
    result = train(config)
    stages = {}
    for number, (name, epochs, per_epoch) in enumerate(
            (("distill", distill_epochs, distill_steps_per_epoch), ("fine-tune", fine_tune_epochs, fine_tune_steps_per_epoch)),
            start=1):
        folder = run_dir / "stages" / f"{number}-{name}"
        record = json.loads((folder / "stage.json").read_text())
        stages[name] = {"max_epochs": epochs, "epochs_run": epochs_run(folder), "validations": epochs_completed(folder),
                        "optimiser_steps": epochs * per_epoch, "seconds": record["seconds"],
                        "valid_metrics": record["metrics"]}
    fine_tune = stages["fine-tune"]
    return {
        "n_train": n_frames - n_valid_of(n_frames), "n_valid": n_valid_of(n_frames),
        "max_epochs": fine_tune["max_epochs"], "epochs_run": fine_tune["epochs_run"],
        "optimiser_steps": sum(stage["optimiser_steps"] for stage in stages.values()), "stages": stages,
        "max_minutes": args.max_minutes, "accelerator": "cpu", "training_seconds": result.seconds,
        "potential": str(result.potential_dir), "overrides": args.override, "experiment": EXPERIMENT,
    }


def merge_into_results(scored: list[dict]) -> dict:
    """``results/rmd17.json`` with ``scored`` in place of earlier rows of the same molecule,
    size, teacher and step budget."""
    results = json.loads((RESULTS / "rmd17.json").read_text())

    def key(run: dict) -> tuple:
        return run["molecule"], run["n_frames"], (run.get("pretraining") or {}).get("teacher"), run["optimiser_steps"]

    replaced = {key(run) for run in scored}
    results["runs"] = [run for run in results["runs"] if key(run) not in replaced] + scored
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="folder with rmd17/ and ethanol_botnet/")
    parser.add_argument("--molecules", nargs="+", default=["ethanol"], choices=sorted(PUBLISHED))
    parser.add_argument("--size", type=int, default=50, help="DFT training frames, drawn as rmd17.py draws them")
    parser.add_argument("--teacher", default="xtb:GFN2", help="teacher spec of the distill stage")
    parser.add_argument("--md-temperatures", type=float, nargs="+", default=[300.0, 500.0, 800.0],
                        help="teacher Langevin MD temperatures, K")
    parser.add_argument("--md-frames", type=int, default=800, help="MD frames kept per temperature")
    parser.add_argument("--rattles", type=int, default=1000, help="rattled copies of the DFT frames")
    parser.add_argument("--rattle", type=float, nargs=2, default=[0.01, 0.06], metavar=("MIN", "MAX"),
                        help="range of the rattles' Gaussian width, Å")
    parser.add_argument("--distill-steps", type=int, default=9000, help="optimiser steps of the distill stage")
    parser.add_argument("--fine-tune-steps", type=int, default=2000, help="optimiser steps of the fine-tune stage")
    parser.add_argument("--max-minutes", type=float, default=23.0,
                        help="wall-time guard of the training, minutes, shared by the stages (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling")
    parser.add_argument("--override", nargs="*", default=[], help="more Hydra overrides for every run")
    parser.add_argument("--no-speed", action="store_true", help="test errors only, no calculator timing")
    parser.add_argument("--json-out", type=Path, default=None,
                        help="write the scored runs here instead of into results/rmd17.{json,md}")
    parser.add_argument("--root", type=Path, default=Path("runs/benchmarks/rmd17_distill"), help="where runs are written")
    args = parser.parse_args()
    root = args.root / time.strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True)
    isolated_atoms = args.data / "ethanol_botnet" / "isolated_atoms.xyz"

    scored = []
    for molecule in args.molecules:
        labels, pretraining = teacher_label_file(args.data / "rmd17" / f"{molecule}_train.xyz", isolated_atoms,
                                                 args.size, args.teacher, root / f"{molecule}_{args.size}.h5", args)
        n_teacher = pretraining["n_teacher_labelled"]
        pretraining["n_teacher_valid"] = teacher_valid_of(n_teacher)
        trained = train_staged(labels, root / f"{molecule}_{args.size}", args.size, n_teacher, args)
        test_path = args.data / "rmd17" / f"{molecule}_test.xyz"
        pretraining["teacher_test"] = teacher_errors(args.teacher, test_path)
        run = {"molecule": molecule, "n_frames": args.size, **trained, "pretraining": pretraining}
        scored.append(score(run, args.data, None, root, speed=not args.no_speed))
        print(json.dumps(scored[-1], indent=2), flush=True)

    if args.json_out:
        args.json_out.write_text(json.dumps({"runs": scored}, indent=2) + "\n")
        return
    results = merge_into_results(scored)
    (RESULTS / "rmd17.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "rmd17.md").write_text(table(results))
    regenerate_readme()
    print(table(results))


if __name__ == "__main__":
    main()
