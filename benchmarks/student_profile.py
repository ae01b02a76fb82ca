"""Where the time of one energy + forces + stress call of the silicon student goes, beside
SevenNet-0 on the same structures in the same process and threads.

The student has the architecture of ``experiment=si_sevennet`` (composed through
``training.run.compose_config``) with random weights, or is loaded with ``--potential DIR``.
Each step asks ASE for energy, forces and stress of diamond silicon (64, 216, 512 and 1,000
atoms), as ``benchmarks/sevennet_si.py`` times it, in two modes:

- ``new``: a newly rattled cell every call and no neighbour-list skin, so every call builds its
  neighbour list and graph (how SevenNet-0 is timed);
- ``md``: small moves of one cell with the calculator's default 1 Å skin, so the neighbour
  list is reused as in MD.

A step splits into: ``neighbour list`` (vesin), ``graph`` (the rest of the calculator's graph
building: torch-geometric ``Data``/``Batch``, edge filtering), ``forward`` (edge vectors, strain
and network up to the energy), ``backward`` (forces and stress by autograd) and ``calculator``
(what is left: ASE, conversions to numpy). The parts are medians over the timed steps, each the
sum over the model calls of a step (the ``model calls`` column; ASE asks the calculator once per
property it does not have yet).

``--baseline REV`` also times the student models of git revision ``REV`` (the
``mlip_distill/models`` folder of that commit, same weights), interleaved with the current ones.

``--compile`` profiles the student with its network compiled by ``torch.compile``
(``StudentCalculator(compile_network=True)``; compiled during the warm-up steps).

    OMP_NUM_THREADS=2 python benchmarks/student_profile.py [--potential DIR] [--baseline REV] [--compile]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from statistics import median
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import vesin
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import all_changes
from reference_training import write_table

import mlip_distill.models.conservative as conservative
from mlip_distill.calculator import StudentCalculator
from mlip_distill.data.graph import neighbour_list
from mlip_distill.models import build_model
from mlip_distill.package import Potential, load_potential
from mlip_distill.training.run import compose_config

BENCHMARKS = Path(__file__).parent
RESULTS = BENCHMARKS / "results"
REPEATS = (2, 3, 4, 5)  # cubic diamond cells of 8 atoms repeated: 64, 216, 512, 1000 atoms
PARTS = ("neighbour list", "graph", "forward", "backward", "calculator")


def diamond(repeat: int, seed: int, rattle: float = 0.05) -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeat)
    atoms.rattle(rattle, seed=seed)
    return atoms


def random_student(seed: int = 0, overrides: Sequence[str] = ()) -> Potential:
    """A student of the ``si_sevennet`` architecture (with ``overrides``) with random weights; its
    neighbour normalisation is the mean neighbour count of diamond silicon at its cutoff."""
    options = dict(compose_config(["experiment=si_sevennet", *overrides]).model)
    name, cutoff = options.pop("name"), float(options["cutoff"])
    atoms = diamond(2, seed=0, rattle=0.0)
    mean_neighbours = len(neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)[0]) / len(atoms)
    torch.manual_seed(seed)
    model = build_model(name, elements=[14], e0={14: -5.0}, avg_num_neighbors=mean_neighbours, **options)
    return Potential(model=model.eval(), metadata={"cutoff": cutoff, "elements": [14], "dtype": "float32"})


def baseline_student(revision: str, student: torch.nn.Module, workdir: Path) -> torch.nn.Module:
    """``student``'s architecture and weights, built by the ``mlip_distill/models`` of git
    ``revision``, or of a folder holding a copy of it (where git is not at hand), imported as
    the package ``baseline_models``."""
    package = workdir / "baseline_models"
    package.mkdir()
    if Path(revision).is_dir():
        sources = {path.name: path.read_text() for path in Path(revision).glob("*.py")}
    else:
        git = ["git", "-C", str(BENCHMARKS)]
        listing = subprocess.run([*git, "ls-tree", "--name-only", "--full-tree", revision, "mlip_distill/models/"],
                                 capture_output=True, text=True, check=True).stdout.split()
        sources = {
            Path(path).name: subprocess.run([*git, "show", f"{revision}:{path}"], capture_output=True, text=True,
                                            check=True).stdout
            for path in listing
        }
    for name, source in sources.items():
        (package / name).write_text(source.replace("mlip_distill.models", "baseline_models"))
    sys.path.insert(0, str(workdir))
    models = importlib.import_module("baseline_models")
    baseline = models.build_model(student.name, **student.hyperparameters())
    baseline.load_state_dict(student.state_dict())
    return baseline.eval()


class PartTimer:
    """Seconds spent in each part of a calculator call, summed until :meth:`take`."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.model_calls = 0

    def wrap(self, part: str, function: Callable, count: bool = False) -> Callable:
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[part] += time.perf_counter() - start
                self.model_calls += count

        return timed

    def take(self) -> tuple[dict[str, float], int]:
        seconds, calls = dict(self.seconds), self.model_calls
        self.seconds.clear()
        self.model_calls = 0
        return seconds, calls


@contextmanager
def instrumented(calculator: StudentCalculator, timer: PartTimer) -> Iterator[None]:
    """Time vesin, the calculator's graph building, the model and its autograd call."""
    patches = [
        (vesin.NeighborList, "compute", timer.wrap("neighbour list", vesin.NeighborList.compute)),
        (conservative, "derivatives", timer.wrap("backward", conservative.derivatives)),
        (calculator.model, "forward", timer.wrap("model", calculator.model.forward, count=True)),
    ]
    if hasattr(calculator, "_graph_for"):
        patches.append((calculator, "_graph_for", timer.wrap("graph building", calculator._graph_for)))
    saved = [(owner, name, owner.__dict__.get(name)) for owner, name, _ in patches]
    for owner, name, replacement in patches:
        setattr(owner, name, replacement)
    try:
        yield
    finally:
        for owner, name, original in saved:
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)


def structures(repeat: int, mode: str, count: int) -> Iterator[Atoms]:
    """``count`` cells: newly rattled ones (``new``), or one cell moved by up to 0.02 Å per
    step (``md``; the first step builds the neighbour list)."""
    atoms = diamond(repeat, seed=0)
    rng = np.random.default_rng(repeat)
    for k in range(count):
        if mode == "new":
            atoms = diamond(repeat, seed=k)
        else:
            atoms = atoms.copy()
            atoms.positions += rng.uniform(-0.01, 0.01, atoms.positions.shape)
        yield atoms


def step(atoms: Atoms, calculator) -> tuple[float, float]:
    """One energy + forces + stress step through ASE: wall and process CPU time, s."""
    atoms.calc = calculator
    start, start_cpu = time.perf_counter(), time.process_time()
    atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    return time.perf_counter() - start, time.process_time() - start_cpu


def one_call(atoms: Atoms, calculator) -> tuple[float, float]:
    """Energy, forces and stress from a single ``calculate`` call (wall and CPU time, s): the
    step's time if the calculator computed the stress whenever the cell is periodic."""
    start, start_cpu = time.perf_counter(), time.process_time()
    calculator.calculate(atoms, ["energy", "forces", "stress"], all_changes)
    return time.perf_counter() - start, time.process_time() - start_cpu


def profile_student(calculator: StudentCalculator, repeat: int, mode: str, calls: int, warmup: int) -> dict:
    """Median step time and parts, ms."""
    timer = PartTimer()
    totals, singles, cpu, parts, model_calls = [], [], defaultdict(list), defaultdict(list), []
    with instrumented(calculator, timer):
        for k, atoms in enumerate(structures(repeat, mode, warmup + calls)):
            total, total_cpu = step(atoms, calculator)
            seconds, n_calls = timer.take()
            single, single_cpu = one_call(atoms.copy(), calculator)
            timer.take()
            if k < warmup:
                continue
            singles.append(single)
            cpu["step"].append(total_cpu)
            cpu["one_call"].append(single_cpu)
            graph = seconds.get("graph building", 0.0)
            split = {
                "neighbour list": seconds.get("neighbour list", 0.0),
                "graph": graph - seconds.get("neighbour list", 0.0) if graph else 0.0,
                "forward": seconds["model"] - seconds.get("backward", 0.0),
                "backward": seconds.get("backward", 0.0),
            }
            split["calculator"] = total - graph - seconds["model"]
            totals.append(total)
            model_calls.append(n_calls)
            for part, value in split.items():
                parts[part].append(value)
    return {
        "step_ms": 1e3 * median(totals),
        "one_call_ms": 1e3 * median(singles),
        "step_cpu_ms": 1e3 * median(cpu["step"]),
        "one_call_cpu_ms": 1e3 * median(cpu["one_call"]),
        "model_calls": int(median(model_calls)),
        "parts_ms": {part: 1e3 * median(parts[part]) for part in PARTS},
    }


def compare(calculators: dict[str, object], repeat: int, mode: str, calls: int, warmup: int) -> dict[str, float]:
    """Median step wall time (``name``) and CPU time (``name_cpu``), ms, of each calculator,
    interleaved on the same structures."""
    times = defaultdict(list)
    for k, atoms in enumerate(structures(repeat, mode, warmup + calls)):
        for name, calculator in calculators.items():
            elapsed, elapsed_cpu = step(atoms.copy(), calculator)
            if k >= warmup:
                times[name].append(elapsed)
                times[f"{name}_cpu"].append(elapsed_cpu)
    return {name: 1e3 * median(values) for name, values in times.items()}


def largest_part(parts: dict[str, float]) -> str:
    return max(parts, key=parts.get)


def markdown(record: dict) -> str:
    lines = [
        f"Student: `experiment=si_sevennet` architecture ({record['student']}, {record['n_parameters']:,} "
        f"parameters), {'network compiled by torch.compile' if record.get('compiled') else 'eager'}, float32, "
        f"torch {record['torch']}; SevenNet-0 in the same process with the same "
        f"threads. Medians of {record['calls']} steps after {record['warmup']} warm-ups. The machine has 2 cores "
        "that other jobs shared (load average below): wall times vary by tens of per cent between runs, and "
        "with 2 threads far more whenever the cores are oversubscribed.",
        "",
        "A step is `get_potential_energy()`, `get_forces()`, `get_stress()`; `new`: a new rattled cell each step, "
        "no skin (as SevenNet-0 is timed); `md`: 0.01 Å moves, 1 Å skin, neighbour list reused. Parts are summed "
        "over a step's model calls. `one call`: the same cell through a single `calculate(atoms, "
        "['energy', 'forces', 'stress'])`, what a step costs when the calculator computes the stress with the "
        "energy.",
    ]
    for run in record["runs"]:
        lines += [
            "",
            f"### {run['threads']} thread(s); load average {run['load_before']} before, {run['load_after']} after",
            "",
            "| atoms | edges | mode | step ms | model calls | " + " | ".join(f"{p} ms" for p in PARTS)
            + " | largest part | one call ms | SevenNet-0 ms | SevenNet-0 / step | SevenNet-0 / one call |",
            "|---|---|---|---|---|" + "---|" * len(PARTS) + "---|---|---|---|---|",
        ]
        for size in run["sizes"]:
            for mode in ("new", "md"):
                entry, teacher = size[mode], size.get("teacher_ms")
                teacher_cells = (
                    f"{teacher:.0f} | {teacher / entry['step_ms']:.1f}× | {teacher / entry['one_call_ms']:.1f}×"
                    if teacher and mode == "new" else "– | – | –"
                )
                lines.append(
                    f"| {size['atoms']} | {size['edges']} | {mode} | {entry['step_ms']:.1f} | {entry['model_calls']} | "
                    + " | ".join(f"{entry['parts_ms'][p]:.2f}" for p in PARTS)
                    + f" | {largest_part(entry['parts_ms'])} | {entry['one_call_ms']:.1f} | {teacher_cells} |"
                )
        if any("teacher_cpu_ms" in size for size in run["sizes"]):
            lines += [
                "",
                "Process CPU time per step, `new` mode (only the time this process ran: less sensitive to other "
                "jobs than wall time):",
                "",
                "| atoms | student step CPU ms | student one call CPU ms | SevenNet-0 CPU ms | SevenNet-0 / step | "
                "SevenNet-0 / one call |",
                "|---|---|---|---|---|---|",
            ]
            for size in run["sizes"]:
                entry, teacher = size["new"], size["teacher_cpu_ms"]
                lines.append(
                    f"| {size['atoms']} | {entry['step_cpu_ms']:.1f} | {entry['one_call_cpu_ms']:.1f} | "
                    f"{teacher:.0f} | {teacher / entry['step_cpu_ms']:.1f}× | {teacher / entry['one_call_cpu_ms']:.1f}× |"
                )
        if record.get("baseline"):
            lines += [
                "",
                f"Before / after: the models of `{record['baseline']}` against the working tree, same weights, "
                "interleaved step by step, `new` mode:",
                "",
                "| atoms | before ms | after ms | speed-up | before CPU ms | after CPU ms | CPU speed-up | "
                "SevenNet-0 / before | SevenNet-0 / after |",
                "|---|---|---|---|---|---|---|---|---|",
            ]
            for size in run["sizes"]:
                entry, teacher = size["baseline"], size.get("teacher_ms")
                ratio = (lambda ms: f"{teacher / ms:.1f}×" if teacher else "–")
                lines.append(
                    f"| {size['atoms']} | {entry['before_ms']:.1f} | {entry['after_ms']:.1f} | "
                    f"{entry['before_ms'] / entry['after_ms']:.2f}× | {entry['before_cpu_ms']:.1f} | "
                    f"{entry['after_cpu_ms']:.1f} | {entry['before_cpu_ms'] / entry['after_cpu_ms']:.2f}× | "
                    f"{ratio(entry['before_ms'])} | {ratio(entry['after_ms'])} |"
                )
    return "\n".join(lines) + "\n"


def profile(potential: Potential, before: Potential | None, teacher, args: argparse.Namespace, threads: int) -> dict:
    """Every size and mode at ``threads`` threads (``before``: the baseline student, if any)."""
    torch.set_num_threads(threads)
    student = StudentCalculator(potential, skin=0.0, compiled=False, compile_network=args.compile)
    student_md = StudentCalculator(potential, compiled=False, compile_network=args.compile)
    baseline = None
    if before is not None:
        baseline = {"before": StudentCalculator(before, skin=0.0, compiled=False), "after": student}
    record = {
        "threads": torch.get_num_threads(), "load_before": " ".join(f"{x:.1f}" for x in os.getloadavg()), "sizes": [],
    }
    for repeat in args.repeats:
        atoms = diamond(repeat, seed=0)
        size = {
            "atoms": len(atoms),
            "edges": len(neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, potential.cutoff)[0]),
            "new": profile_student(student, repeat, "new", args.calls, args.warmup),
            "md": profile_student(student_md, repeat, "md", args.calls, args.warmup),
        }
        if teacher is not None:
            teacher_times = compare({"teacher": teacher}, repeat, "new", args.teacher_calls, 1)
            size["teacher_ms"], size["teacher_cpu_ms"] = teacher_times["teacher"], teacher_times["teacher_cpu"]
        if baseline:
            times = compare(baseline, repeat, "new", args.calls, args.warmup)
            size["baseline"] = {key + "_ms": value for key, value in times.items()}
        record["sizes"].append(size)
        print(json.dumps(size), flush=True)
    record["load_after"] = " ".join(f"{x:.1f}" for x in os.getloadavg())
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--potential", type=Path, help="a student package; default: random si_sevennet student")
    parser.add_argument("--repeats", type=int, nargs="+", default=list(REPEATS), help="cubic cells per side")
    parser.add_argument("--calls", type=int, default=9, help="timed steps per size and mode")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--teacher-calls", type=int, default=5, help="timed SevenNet-0 steps (0: skip it)")
    parser.add_argument("--threads", type=int, nargs="+", default=[int(os.environ.get("OMP_NUM_THREADS", 2))],
                        help="torch threads; one profile per value")
    parser.add_argument("--baseline", metavar="REV",
                        help="also time the models of this git revision (or of a folder with a copy of them)")
    parser.add_argument("--compile", action="store_true", help="compile the student's network with torch.compile")
    parser.add_argument("--output", type=Path, default=RESULTS / "student_profile")
    args = parser.parse_args()

    potential = load_potential(args.potential) if args.potential else random_student()
    teacher = None
    if args.teacher_calls:
        from mlip_distill.teachers import load_teacher

        teacher = load_teacher("sevennet:7net-0").ase_calculator()
    record = {
        "student": str(args.potential or "random weights"),
        "n_parameters": sum(p.numel() for p in potential.model.parameters()),
        "torch": torch.__version__, "calls": args.calls, "warmup": args.warmup, "baseline": args.baseline,
        "compiled": args.compile,
        "runs": [],
    }
    with tempfile.TemporaryDirectory() as workdir:
        before = None
        if args.baseline:
            model = baseline_student(args.baseline, potential.model, Path(workdir))
            before = Potential(model=model, metadata=potential.metadata)
        for threads in args.threads:
            record["runs"].append(profile(potential, before, teacher, args, threads))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    table = markdown(record)
    write_table(args.output.with_suffix(".md"), table)
    print(table)


if __name__ == "__main__":
    main()
