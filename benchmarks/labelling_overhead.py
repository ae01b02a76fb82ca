"""What the labelling machinery costs on top of the teacher, for EMT and SevenNet-0.

EMT labels rattled, strained 8-atom copper cells; SevenNet-0 (``sevennet:7net-0``, needs the
``sevennet`` extra) rattled, strained 8-atom silicon cells. For each teacher, repeated and
interleaved, with the median of the repeats kept:

* **bare**: the sum of the times of ``teacher.label`` on each structure, already in memory;
* **label_file**: :func:`~mlip_distill.teachers.label_file` from an extxyz file to a new label
  file with the same teacher object (one process, default chunk size, no progress bar):
  reading, validation, the isolated-atom energies, chunk files, the final label file;
* **machinery alone**: the same ``label_file`` run with a *replay* teacher that returns the
  real teacher's labels from a table, so that what is timed is everything but the teacher;
* the two steps every input goes through first: reading the extxyz file with ASE, and
  :func:`~mlip_distill.data.io.validate_structures`.

The overhead is *machinery alone / bare*; *(label_file − bare) / bare* measures the same thing
as a difference of two large, noisy numbers and is given as a check. Times are CPU seconds of
this process (``time.process_time``, all its threads), which a busy machine disturbs far less
than wall time; wall times are in the JSON file.

    python benchmarks/labelling_overhead.py    # writes benchmarks/results/labelling_overhead.*
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk

from mlip_distill.data.io import (
    labels_from_atoms,
    read_structures,
    validate_structures,
    write_structures,
)
from mlip_distill.teachers import Teacher, label_file, load_teacher

RESULTS = Path(__file__).parent / "results"

#: Per teacher spec: the crystal its cells are made of, and how many cells by default.
CRYSTALS = {
    "emt": (lambda: bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1)), 500),
    "sevennet:7net-0": (lambda: bulk("Si", "diamond", a=5.43, cubic=True), 100),
}


def rattled_cells(make: Callable[[], Atoms], n: int, seed: int = 0) -> list[Atoms]:
    """``n`` copies of ``make()``, strained up to 1 % and rattled by 0.1 Å."""
    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(n):
        atoms = make()
        strain = rng.uniform(-0.01, 0.01, (3, 3))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.5 * (strain + strain.T)), scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
        cells.append(atoms)
    return cells


class ReplayTeacher(Teacher):
    """Returns ``teacher``'s labels of ``structures``, computed once, looked up by positions:
    a teacher that costs (almost) nothing, to time the machinery around it."""

    def __init__(self, teacher: Teacher, structures: list[Atoms]) -> None:
        self.name, self.spec, self.version = "replay", "replay", "replay"
        self.elements, self.settings = teacher.elements, {"of": teacher.spec}
        self._labels = {atoms.positions.tobytes(): teacher.label(atoms) for atoms in structures}
        numbers = {int(z) for atoms in structures for z in atoms.numbers}
        self._isolated = teacher.isolated_atom_energies(numbers)

    def label(self, atoms: Atoms) -> dict[str, np.ndarray]:
        return dict(self._labels[atoms.positions.tobytes()])

    def isolated_atom_energies(self, numbers) -> dict[int, float]:
        return {int(z): self._isolated[int(z)] for z in numbers}


def timed(work: Callable[[], object]) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of ``work()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    work()
    return time.process_time() - cpu, time.perf_counter() - wall


def bare_times(teacher: Teacher, structures: list[Atoms]) -> tuple[float, float]:
    """Summed (CPU, wall) seconds of ``teacher.label`` on each structure."""
    cpu = wall = 0.0
    for atoms in structures:
        seconds = timed(lambda: teacher.label(atoms))
        cpu, wall = cpu + seconds[0], wall + seconds[1]
    return cpu, wall


def measure(spec: str, n_structures: int, repeats: int, folder: Path) -> dict:
    """Median (CPU, wall) seconds of each step for one teacher (module docstring)."""
    make, _ = CRYSTALS[spec]
    folder = folder / spec.replace(":", "_")
    folder.mkdir()
    path = folder / "structures.xyz"
    write_structures(path, rattled_cells(make, n_structures), [{}] * n_structures)
    structures = read_structures(path)
    teacher = load_teacher(spec)
    replay = ReplayTeacher(teacher, structures)
    bare_times(teacher, structures[:10])  # warm up
    names = [f"in.xyz: structure {k}" for k in range(n_structures)]
    steps: dict[str, list[tuple[float, float]]] = {
        "bare": [], "label_file": [], "machinery": [], "read": [], "validate": []
    }
    for repeat in range(repeats):
        steps["bare"].append(bare_times(teacher, structures))
        for step, labeller in (("label_file", teacher), ("machinery", replay)):
            out = folder / f"{step}-{repeat}.h5"
            steps[step].append(timed(lambda: label_file(path, labeller, out, progress=False)))
        steps["read"].append(timed(lambda: read_structures(path)))
        labels = [labels_from_atoms(atoms) for atoms in structures]
        steps["validate"].append(timed(lambda: validate_structures(structures, labels, names)))
    return {
        "teacher": spec,
        "version": teacher.version,
        "structures": n_structures,
        "atoms_per_structure": len(structures[0]),
        "repeats": repeats,
        "seconds": {
            step: {
                "cpu_median": statistics.median(cpu for cpu, _ in times),
                "wall_median": statistics.median(wall for _, wall in times),
                "cpu": [cpu for cpu, _ in times],
                "wall": [wall for _, wall in times],
            }
            for step, times in steps.items()
        },
    }


def table(results: list[dict]) -> list[str]:
    """The Markdown table of the results, one row per teacher, percentages of the bare CPU
    time."""
    lines = [
        "| teacher | structures | bare teacher (ms CPU / structure) | machinery alone | "
        "of which reading | of which validating | label_file − bare |",
        "|---|---|---|---|---|---|---|",
    ]
    for result in results:
        cpu = {step: times["cpu_median"] for step, times in result["seconds"].items()}
        percent = {step: f"{100 * cpu[step] / cpu['bare']:.2g} %" for step in cpu}
        difference = 100 * (cpu["label_file"] - cpu["bare"]) / cpu["bare"]
        lines.append(
            f"| `{result['teacher']}` ({result['version']}) | {result['structures']} × "
            f"{result['atoms_per_structure']} atoms | {1e3 * cpu['bare'] / result['structures']:.2f}"
            f" | **{percent['machinery']}** | {percent['read']} | {percent['validate']} | "
            f"{difference:.2g} % |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--teacher", action="append", choices=sorted(CRYSTALS),
        help="teacher to measure, repeatable (default: all)",
    )
    parser.add_argument("--structures", type=int, help="cells per teacher (default: per teacher)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")
    args = parser.parse_args()
    # The file keeps the latest measurement of each teacher, so that teachers can be measured
    # one at a time.
    RESULTS.mkdir(exist_ok=True)
    saved = RESULTS / "labelling_overhead.json"
    results = {
        result["teacher"]: result
        for result in (json.loads(saved.read_text())["results"] if saved.exists() else [])
    }
    with tempfile.TemporaryDirectory() as folder:
        for spec in args.teacher or list(CRYSTALS):
            n_structures = args.structures or CRYSTALS[spec][1]
            results[spec] = measure(spec, n_structures, args.repeats, Path(folder))
            results[spec]["load_average"] = os.getloadavg()[0]
    saved.write_text(json.dumps({"results": list(results.values())}, indent=1) + "\n")
    write_report(list(results.values()))


def write_report(results: list[dict]) -> None:
    """``labelling_overhead.md``: the table of ``results`` and how it was measured."""
    lines = [
        *table(results),
        "",
        "Overhead = CPU time of `label_file` with a replay teacher (the machinery alone: reading "
        "the extxyz input, validation, isolated atoms, chunk files, the label file) over the "
        "summed CPU time of the bare `teacher.label` calls; target ≤ 5 %. The last column, the "
        "difference of two full runs, is the same quantity measured with the teacher's own "
        "run-to-run noise: on a busy machine a torch teacher's time varies several-fold between "
        "repeats (its threads wait for cores), which that column inherits and the replay does "
        "not.",
        "",
        f"Rattled, strained cells, extxyz in, new label file out; one process, default chunk "
        f"size, no progress bar; interleaved repeats, medians; load average "
        + ", ".join(
            f"{result['load_average']:.1f} ({result['teacher']})" for result in results
        )
        + f" on {os.cpu_count()} cores when each finished. "
        "`python benchmarks/labelling_overhead.py [--teacher SPEC]`; every repeat in "
        "`labelling_overhead.json`.",
    ]
    (RESULTS / "labelling_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
