"""Eager student against its compiled forms (torch.export, torch.compile) in the ASE calculator.

Each route computes energy, forces and stress of a rattled diamond-silicon cell of 64 and of
216 atoms through :class:`~mlip_distill.calculator.StudentCalculator` (neighbour list reused
within the skin, as in MD). The routes are timed in turns, several rounds each, and the median
time per call is reported, so that load from other processes spreads over all of them.
``torch.compile``: ``StudentCalculator(compile_network=True)``, C++ kernels made on the first call
(its seconds are reported). Students have random weights (speed does not depend on them) and the
demo's size (NequIP: ``experiment=si_sevennet``'s l_max 0 with P_2 angle terms at 4.5 Å, without
the bispectrum it has since).

    python benchmarks/compiled_vs_eager.py [--rounds 5] [--calls 5] [--threads 2]

Writes ``benchmarks/results/compiled_vs_eager.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from call_timing import rattled_diamond

from mlip_distill.calculator import StudentCalculator
from mlip_distill.models import build_model
from mlip_distill.package import save_potential

RESULTS = Path(__file__).parent / "results"
STUDENTS = {
    "nequip": {"channels": 32, "num_layers": 2, "l_max": 0, "angular_order": 2, "cutoff": 4.5},
    "painn": {"channels": 32, "num_layers": 2, "cutoff": 5.0},
}
CELLS = {64: 2, 216: 3}  # atoms: repeat of the 8-atom cubic diamond cell


def time_per_call(calculator: StudentCalculator, atoms, calls: int, rng) -> tuple[float, float]:
    """Median wall and CPU seconds (all threads of the process) of energy + forces + stress,
    each call after a small move (within the skin). CPU time counts only the time the process
    ran, so it is less disturbed by other processes competing for the cores."""
    wall, cpu = [], []
    for _ in range(calls):
        atoms.positions += rng.normal(0.0, 0.002, atoms.positions.shape)
        start, start_cpu = time.perf_counter(), time.process_time()
        calculator.calculate(atoms, ["energy", "forces", "stress"])
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def benchmark(name: str, rounds: int, calls: int, folder: Path) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(name, elements=[14], avg_num_neighbors=25.0, **STUDENTS[name])
    start = time.perf_counter()
    package = save_potential(model, name, folder / name, compiled=True)
    export_seconds = time.perf_counter() - start
    calculators = {
        "eager": StudentCalculator(package, compiled=False),
        "torch.export": StudentCalculator(package, compiled=True),
        "torch.compile": StudentCalculator(package, compiled=False, compile_network=True),
    }
    compile_seconds = {}
    rows = []
    for n_atoms in CELLS:
        atoms = rattled_diamond(CELLS[n_atoms], seed=1)
        reference = None
        for route, calculator in calculators.items():
            start = time.perf_counter()
            calculator.calculate(atoms.copy(), ["energy", "forces", "stress"])  # warm up (and compile)
            compile_seconds.setdefault(route, time.perf_counter() - start)
            calculator.calculate(atoms.copy(), ["energy", "forces", "stress"])
            forces = calculator.results["forces"]
            reference = forces if reference is None else reference
            rows.append({"student": name, "atoms": n_atoms, "route": route, "times": [], "cpu_times": [],
                         "max_force_difference_eV_per_A": float(np.abs(forces - reference).max())})
        rng = np.random.default_rng(0)
        for _ in range(rounds):
            for row, calculator in zip(rows[-len(calculators):], calculators.values()):
                wall, cpu = time_per_call(calculator, atoms.copy(), calls, rng)
                row["times"].append(wall)
                row["cpu_times"].append(cpu)
    for row in rows:
        row["ms_per_call"] = 1000 * statistics.median(row.pop("times"))
        row["cpu_ms_per_call"] = 1000 * statistics.median(row.pop("cpu_times"))
        row["export_seconds"] = export_seconds if row["route"] == "torch.export" else None
        row["first_call_seconds"] = compile_seconds[row["route"]]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for name in STUDENTS for row in benchmark(name, args.rounds, args.calls, Path(tmp))]
    eager = {(row["student"], row["atoms"]): row for row in rows if row["route"] == "eager"}
    lines = [
        f"Energy + forces + stress per calculator call, median of {args.rounds} rounds x {args.calls} calls, "
        f"{args.threads} threads, torch {torch.__version__} (CPU).",
        "",
        "| student | atoms | route | wall ms per call | vs eager | CPU ms per call | vs eager | max |ΔF| vs eager (eV/Å) "
        "| first call s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        reference = eager[(row["student"], row["atoms"])]
        lines.append(
            f"| {row['student']} | {row['atoms']} | {row['route']} | {row['ms_per_call']:.1f} | "
            f"{reference['ms_per_call'] / row['ms_per_call']:.2f}x | {row['cpu_ms_per_call']:.1f} | "
            f"{reference['cpu_ms_per_call'] / row['cpu_ms_per_call']:.2f}x | {row['max_force_difference_eV_per_A']:.1e} | "
            f"{row['first_call_seconds']:.1f} |"
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "compiled_vs_eager.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "compiled_vs_eager.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
