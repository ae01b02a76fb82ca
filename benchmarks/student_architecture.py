"""Which student architecture learns SevenNet-0 silicon fastest, at what speed.

Each variant is ``experiment=si_sevennet`` plus overrides, trained for the same wall time on
``../shared/data/sevennet_si/train.xyz`` (as ``benchmarks/sevennet_si.py`` trains: 36 cells held
out for validation) and scored on ``valid.xyz`` (RMSE per component against the teacher: energy
meV/atom, forces meV/Å, stress meV/Å³). Runs go two at a time, one thread each, so that the
2 cores do two variants in the time of one; the wall time per variant is then worth about two
thirds of a 2-thread run's (compare variants with each other, not with ``sevennet_si.md``).
Speed: energy + forces + stress per call of each variant with random weights at 64 and 216 atoms
(2 threads, median of 9 after 3 warm-ups, the variants taking turns call by call), after the training.

    python benchmarks/student_architecture.py [--minutes 7] [--variants NAME ...]   # rows not named are kept
    python benchmarks/student_architecture.py --speed-only   # time the rows of results/student_architecture.json again
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import re

import torch

from reference_training import epochs_completed, regenerate_readme, write_table
from sevennet_si import DATA, EARLIER_LOSS, RESULTS, train_student
from call_timing import timings
from student_profile import random_student

from mlip_distill.calculator import StudentCalculator
from mlip_distill.evaluate import evaluate_file

# name: overrides on top of experiment=si_sevennet (l_max 0, P_2 angles, 4.5 Å; loss weights E/F/S 1/100/1,
# Adam without amsgrad, batch 2), all but the last two without the bispectrum that si_sevennet took from
# them (BEFORE); the first seven rows were trained with EARLIER_LOSS
BEFORE = ["model.bispectrum=false"]
VARIANTS = {
    "l_max 1, 5 Å (before)": [*BEFORE, *EARLIER_LOSS, "data.batch_size=4", "model.l_max=1", "model.angular_order=0", "model.cutoff=5.0"],
    "l_max 1, 5 Å, batch 8": [*BEFORE, *EARLIER_LOSS, "data.batch_size=8", "model.l_max=1", "model.angular_order=0", "model.cutoff=5.0"],
    "l_max 1, 5 Å, batch 2": [*BEFORE, *EARLIER_LOSS, "data.batch_size=2", "model.l_max=1", "model.angular_order=0", "model.cutoff=5.0"],
    "l_max 1, P_2 angles, 4.5 Å": [*BEFORE, *EARLIER_LOSS, "data.batch_size=4", "model.l_max=1"],
    "l_max 0, P_2 angles, 4.5 Å": [*BEFORE, *EARLIER_LOSS, "data.batch_size=4"],
    "l_max 0, P_2 angles, 4.5 Å, batch 2": [*BEFORE, *EARLIER_LOSS, "data.batch_size=2"],
    "l_max 0, P_2 angles, 4.5 Å, 1 layer": [*BEFORE, *EARLIER_LOSS, "data.batch_size=4", "model.num_layers=1"],
    # the same student, loss and optimiser
    "E/F/S weights 1/100/1, batch 2": [*BEFORE, "optimizer.amsgrad=true"],
    "E/F/S weights 0.2/100/0.2, batch 2": [*BEFORE, "optimizer.amsgrad=true", "loss.energy.weight=0.2", "loss.stress.weight=0.2"],
    "E/F/S weights 1/100/1, batch 1": [*BEFORE, "optimizer.amsgrad=true", "data.batch_size=1"],
    "E/F/S weights 1/100/1, batch 1, lr 0.01": [*BEFORE, "optimizer.amsgrad=true", "data.batch_size=1", "optimizer.lr=0.01"],
    "E/F/S weights 1/100/1, batch 2, Adam betas 0.9/0.99": [*BEFORE, "optimizer.amsgrad=true", "+optimizer.betas=[0.9,0.99]"],
    "E/F/S weights 1/100/1, batch 2, no amsgrad (si_sevennet before the bispectrum)": [*BEFORE],
    # si_sevennet with one setting changed
    "si_sevennet, radial MLP 32 wide": [*BEFORE, "model.radial_hidden=32"],
    "si_sevennet, 12 Bessel functions": [*BEFORE, "model.num_basis=12"],
    "si_sevennet, trainable Bessel frequencies": [*BEFORE, "model.trainable_basis=true"],
    "si_sevennet, learning rate 0.04": [*BEFORE, "optimizer.lr=0.04"],
    "si_sevennet, weight average decay 0.99": [*BEFORE, "ema.decay=0.99"],
    "si_sevennet, no weight average": [*BEFORE, "ema.enabled=false"],
    "si_sevennet, 48 channels": [*BEFORE, "model.channels=48"],
    "si_sevennet, 16 channels": [*BEFORE, "model.channels=16"],
    "si_sevennet, 3 layers": [*BEFORE, "model.num_layers=3"],
    "si_sevennet, 5 Å cutoff": [*BEFORE, "model.cutoff=5.0"],
    "si_sevennet, P_3 angles": [*BEFORE, "model.angular_order=3"],
    "si_sevennet, P_4 angles": [*BEFORE, "model.angular_order=4"],
    "si_sevennet, bispectrum (si_sevennet now)": ["model.bispectrum=true"],
    "si_sevennet, P_3 angles and bispectrum": ["model.angular_order=3", "model.bispectrum=true"],
}


def train_variant(name: str, minutes: float, root: str) -> dict:
    """Train one variant on one thread; its errors on valid.xyz and the epochs it ran."""
    torch.set_num_threads(1)
    folder = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")  # Hydra overrides cannot hold commas or spaces
    potential_dir, seconds = train_student(DATA, f"{root}/{folder}", minutes, VARIANTS[name])
    errors = evaluate_file(potential_dir, DATA / "valid.xyz", sources=["reference"])["reference"]
    epochs = epochs_completed(potential_dir.parent)
    return {"name": name, "overrides": VARIANTS[name], "training_seconds": seconds, "epochs": epochs,
            "E": errors["energy_rmse_mev_per_atom"], "F": errors["forces_rmse_mev_per_A"],
            "S": errors.get("stress_rmse_mev_per_A3")}


def kept_rows(trained: list[dict], minutes: float) -> list[dict]:
    """``trained`` and the rows of the last results of the same minutes that it does not
    replace, in the order of VARIANTS."""
    results = RESULTS / "student_architecture.json"
    previous = json.loads(results.read_text()) if results.exists() else {"minutes": minutes, "rows": []}
    rows = {row["name"]: row for row in previous["rows"] if previous["minutes"] == minutes and row["name"] in VARIANTS}
    rows.update((row["name"], row) for row in trained)
    return [rows[name] for name in VARIANTS if name in rows]


def write_results(rows: list[dict], minutes: float) -> None:
    (RESULTS / "student_architecture.json").write_text(json.dumps({"minutes": minutes, "rows": rows}, indent=2) + "\n")
    lines = [
        "| student | parameters | epochs | E RMSE (meV/atom) | F RMSE (meV/Å) | S RMSE (meV/Å³) | ms per call, 64 / 216 atoms |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r['name']} | {r['parameters']:,} | {r['epochs']} | {r['E']:.2f} | {r['F']:.1f} | {r['S']:.2f} | "
          f"{r['ms_64']:.1f} / {r['ms_216']:.1f} |" for r in rows),
        "",
        f"Each variant trained {minutes:g} min on one thread, two at a time on the 2 cores (`train.xyz` less 36 cells; "
        "errors on the 40 cells of `valid.xyz`); cosine learning rate ending with the time. The first seven rows: "
        "loss weights E/F/S 5/100/5, Adam with amsgrad, batch 4 unless said; the rest: the l_max 0, P_2, 4.5 Å student, "
        "weights 1/100/1, batch 2, no bispectrum unless said. All: 8 Bessel functions and a radial MLP 64 wide unless said. "
        "Speed: random weights, 2 threads, quiet machine, variants taking turns call by call. "
        "P_l angles: `model.angular_order`, the norms of each atom's summed l ≤ L messages "
        "(Σ_jk R(r_ij) R(r_ik) P_l(cos θ_jik) for the neighbours' scalars).",
    ]
    write_table(RESULTS / "student_architecture.md", "\n".join(lines))
    regenerate_readme()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=7.0, help="training wall time of each variant")
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--root", default="runs/benchmarks/student_architecture")
    parser.add_argument("--speed-only", action="store_true", help="keep the trained rows of the last results, time again")
    args = parser.parse_args()
    if args.speed_only:
        previous = json.loads((RESULTS / "student_architecture.json").read_text())
        rows, args.minutes = previous["rows"], previous["minutes"]
    else:
        context = multiprocessing.get_context("spawn")
        with context.Pool(2, maxtasksperchild=1) as pool:
            trained = pool.starmap(train_variant, [(name, args.minutes, args.root) for name in args.variants])
        rows = kept_rows(trained, args.minutes)
    torch.set_num_threads(2)
    students = {row["name"]: random_student(overrides=row["overrides"]) for row in rows}
    ms = timings({name: StudentCalculator(potential, skin=0.0) for name, potential in students.items()}, warmup=3)
    for row in rows:
        row["parameters"] = sum(p.numel() for p in students[row["name"]].model.parameters())
        row["ms_64"], row["ms_216"] = ms[row["name"]][64]["wall_ms"], ms[row["name"]][216]["wall_ms"]
    write_results(rows, args.minutes)
    print((RESULTS / "student_architecture.md").read_text())


if __name__ == "__main__":
    main()
