"""The distillation benchmark of ``../shared/data/sevennet_si``: a student trained on 360 silicon
cells labelled by SevenNet-0, scored on the 40 of ``valid.xyz``, beside what the `sevenn` and
MACE trainers reach on the same files (numbers from that folder's README, 2 CPU cores, ~11 min).

Errors are root-mean-square per component against the teacher (energy meV/atom, forces meV/Å,
stress meV/Å³, six Voigt components). Speed: energy + forces + stress per call through each
model's ASE calculator on rattled diamond cells (64 and 216 atoms), median of 9 calls after 3
warm-ups, student (eager, and compiled with ``StudentCalculator(compile_network=True)``) and
SevenNet-0 taking turns call by call in this process with the same threads.

    python benchmarks/sevennet_si.py [--minutes 12] [--data ../shared/data/sevennet_si]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from call_timing import timings
from reference_training import regenerate_readme

from mlip_distill.calculator import StudentCalculator
from mlip_distill.data.store import import_structures
from mlip_distill.evaluate import evaluate_file
from mlip_distill.package import load_potential
from mlip_distill.teachers import load_teacher
from mlip_distill.training.run import compose_config, train

BENCHMARKS = Path(__file__).parent
RESULTS = BENCHMARKS / "results"
DATA = BENCHMARKS.parent.parent / "shared" / "data" / "sevennet_si"

# experiment=si_sevennet's loss and optimiser before it weighted the forces up (2026-11-27): what
# the earlier published rows of this benchmark's family were trained with
EARLIER_LOSS = ["loss.energy.weight=5.0", "loss.stress.weight=5.0", "optimizer.amsgrad=true"]
# (name, parameters, wall s, E, F, S, speed-up at 64 / 216 atoms), from the data folder's README
PEERS = [
    ("`sevenn train` (32 ch, l_max 1, 2 layers, 4.5 Å)", 29_244, 631, 5.69, 48.5, 1.77, "30.8× / 56×"),
    ("MACE 0.3.16 (32 ch, max_L 1, 2 interactions, 4.5 Å)", 75_920, 675, 8.32, 28.8, 5.86, "5.6× / 6.0×"),
]


def train_student(data: Path, root: str, minutes: float, overrides: list[str]) -> tuple[Path, float]:
    """A student of ``experiment=si_sevennet`` trained on ``data/train.xyz`` for at most
    ``minutes``; returns its potential folder and the training wall time, s."""
    root = Path(root) / time.strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True)
    labels = root / "train.h5"
    import_structures(data / "train.xyz", labels, source="teacher")
    seconds = int(round(minutes * 60))
    config = compose_config([
        "experiment=si_sevennet", f"data.path={labels.resolve()}", f"run_dir={(root / 'train').resolve()}",
        "data.n_valid=36", f"trainer.max_time=00:{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}",
        "trainer.max_epochs=100000", "trainer.enable_progress_bar=false", *overrides,
    ])
    result = train(config)
    return result.potential_dir, result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="folder with train.xyz and valid.xyz")
    parser.add_argument("--minutes", type=float, default=12.0, help="training wall-time budget")
    parser.add_argument("--root", default="runs/benchmarks/sevennet_si", help="where runs are written")
    parser.add_argument("--reuse", action="store_true",
                        help="score and time the student of the last results of this --minutes again, without training")
    parser.add_argument("--name", default=None,
                        help="results/NAME.{json,md} (default sevennet_si, or sevennet_si_<M>min beyond 12 minutes)")
    parser.add_argument("--train-threads", type=int, default=None,
                        help="torch threads while training (default: as timed); timing uses torch's default")
    parser.add_argument("overrides", nargs="*", help="training overrides on top of experiment=si_sevennet")
    args = parser.parse_args()
    # the budget is 12 minutes; longer runs are a different row, kept beside it
    name = args.name or ("sevennet_si" if args.minutes <= 12 else f"sevennet_si_{args.minutes:g}min")
    if args.reuse:
        previous = json.loads((RESULTS / f"{name}.json").read_text())
        potential_dir, training_seconds = Path(previous["potential"]), previous["training_seconds"]
        args.overrides, args.minutes = previous["overrides"], previous["minutes"]
    else:
        timing_threads = torch.get_num_threads()
        torch.set_num_threads(args.train_threads or timing_threads)
        potential_dir, training_seconds = train_student(args.data, args.root, args.minutes, args.overrides)
        torch.set_num_threads(timing_threads)
    errors = evaluate_file(potential_dir, args.data / "valid.xyz", sources=["reference"])["reference"]

    # skin 0: the student rebuilds its neighbour list on every call, as SevenNet-0 does
    calculators = {
        "student": StudentCalculator(potential_dir, skin=0.0),
        "student compiled": StudentCalculator(potential_dir, skin=0.0, compile_network=True),  # compiled in the warm-up
        "teacher": load_teacher("sevennet:7net-0").ase_calculator(),
    }
    ms = timings(calculators, repeats=9, warmup=3)
    speed = {
        n: {"student_ms": ms["student"][n]["wall_ms"], "student_compiled_ms": ms["student compiled"][n]["wall_ms"],
            "teacher_ms": ms["teacher"][n]["wall_ms"], "ratio": ms["teacher"][n]["wall_ms"] / ms["student"][n]["wall_ms"],
            "compiled_ratio": ms["teacher"][n]["wall_ms"] / ms["student compiled"][n]["wall_ms"]}
        for n in (64, 216)
    }
    n_parameters = sum(p.numel() for p in load_potential(potential_dir).model.parameters())
    record = {
        "overrides": args.overrides, "minutes": args.minutes, "training_seconds": training_seconds,
        "n_parameters": n_parameters, "valid": errors, "speed": speed,
        "threads": torch.get_num_threads(), "train_threads": previous.get("train_threads") if args.reuse else args.train_threads,
        "potential": str(potential_dir),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
    rows = [
        "| trainer | parameters | wall time (s) | E RMSE (meV/atom) | F RMSE (meV/Å) | S RMSE (meV/Å³) "
        "| speed vs SevenNet-0, 64 / 216 atoms | compiled (`compile_network`) |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {name} | {n:,} | {wall} | {e} | {f} | {s} | {ratio} | |" for name, n, wall, e, f, s, ratio in PEERS),
        f"| mlip-distill (`experiment=si_sevennet` {' '.join(args.overrides)}) | {n_parameters:,} | "
        f"{training_seconds:.0f} | {errors['energy_rmse_mev_per_atom']:.2f} | {errors['forces_rmse_mev_per_A']:.1f} | "
        f"{errors.get('stress_rmse_mev_per_A3', float('nan')):.2f} | "
        f"{speed[64]['ratio']:.1f}× / {speed[216]['ratio']:.1f}× | "
        f"{speed[64]['compiled_ratio']:.1f}× / {speed[216]['compiled_ratio']:.1f}× |",
        "",
        f"Validation: the 40 cells of `valid.xyz`; peers' numbers from `sevennet_si/README.md` (same machine kind). "
        f"SevenNet-0 here: {speed[64]['teacher_ms']:.0f} ms at 64 atoms, {speed[216]['teacher_ms']:.0f} ms at 216; "
        f"student {speed[64]['student_ms']:.1f} / {speed[216]['student_ms']:.1f} ms, compiled "
        f"{speed[64]['student_compiled_ms']:.1f} / {speed[216]['student_compiled_ms']:.1f} ms ({record['threads']} threads; "
        "the three take turns call by call, median of 9 after 3 warm-ups).",
    ]
    (RESULTS / f"{name}.md").write_text("\n".join(rows) + "\n")
    regenerate_readme()
    print("\n".join(rows))


if __name__ == "__main__":
    main()
