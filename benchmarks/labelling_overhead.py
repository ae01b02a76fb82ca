"""What the labelling machinery costs on top of the teacher: EMT on 500 rattled, strained 8-atom
copper cells.

Times :func:`~mlip_distill.teachers.label_file` (one process, default chunk size, no progress
bar) from an extxyz file to a new label file: reading, validation, the isolated-atom energies,
chunk files, the final label file. Compares it with the sum of the bare ``teacher.label`` calls
on the same structures. Both are repeated, interleaved, and the medians compared. Also times
the two steps every input goes through before any labelling, reading the extxyz file with ASE
and validating each structure, to tell them apart from the rest (chunks, label file).

    python benchmarks/labelling_overhead.py    # writes benchmarks/results/labelling_overhead.md
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.build import bulk

from mlip_distill.data.io import (
    labels_from_atoms,
    read_structures,
    validate_structure,
    write_structures,
)
from mlip_distill.teachers import label_file, load_teacher

RESULTS = Path(__file__).parent / "results"


def copper_cells(n: int, seed: int = 0) -> list:
    """``n`` 8-atom fcc copper cells, strained up to 1 % and rattled by 0.1 Å."""
    rng = np.random.default_rng(seed)
    cells = []
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
        strain = rng.uniform(-0.01, 0.01, (3, 3))
        atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.5 * (strain + strain.T)), scale_atoms=True)
        atoms.positions += rng.normal(0.0, 0.1, atoms.positions.shape)
        cells.append(atoms)
    return cells


def bare_seconds(structures: list) -> float:
    """Sum of the wall times of ``teacher.label`` on each structure, a fresh EMT teacher."""
    teacher = load_teacher("emt")
    total = 0.0
    for atoms in structures:
        start = time.perf_counter()
        teacher.label(atoms)
        total += time.perf_counter() - start
    return total


def input_seconds(path: Path) -> tuple[float, float]:
    """Wall times of reading ``path`` and of validating its structures, as label_file does."""
    start = time.perf_counter()
    structures = read_structures(path)
    read = time.perf_counter() - start
    start = time.perf_counter()
    for k, atoms in enumerate(structures):
        validate_structure(atoms, labels_from_atoms(atoms), f"structure {k}")
    return read, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--structures", type=int, default=500, help="cells to label (default 500)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (default 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        structures_path = Path(folder) / "structures.xyz"
        write_structures(structures_path, copper_cells(args.structures), [{}] * args.structures)
        structures = read_structures(structures_path)
        bare_seconds(structures[:20])  # warm up
        bare, full, reading, validating = [], [], [], []
        for repeat in range(args.repeats):
            bare.append(bare_seconds(structures))
            read, validated = input_seconds(structures_path)
            reading.append(read)
            validating.append(validated)
            out = Path(folder) / f"labels-{repeat}.h5"
            start = time.perf_counter()
            summary = label_file(structures_path, "emt", out, progress=False)
            full.append(time.perf_counter() - start)
            assert summary.n_labelled == args.structures
    medians = {
        name: statistics.median(times)
        for name, times in (("bare", bare), ("full", full), ("read", reading),
                            ("validate", validating))
    }
    overhead = medians["full"] - medians["bare"]
    rest = overhead - medians["read"] - medians["validate"]
    rows = [
        ("bare `teacher.label` calls, summed", bare),
        ("`label_file`", full),
        ("of which: reading the extxyz file (ASE)", reading),
        ("of which: validating the structures", validating),
    ]
    lines = ["| | median (s) | all repeats (s) |", "|---|---|---|"]
    lines += [
        f"| {name} | {statistics.median(times):.3f} | {', '.join(f'{t:.3f}' for t in times)} |"
        for name, times in rows
    ]
    lines += [
        "",
        f"Overhead of `label_file` over the bare teacher: **{100 * overhead / medians['bare']:.1f} "
        f"%** ({1e3 * overhead / args.structures:.2f} ms per structure; target ≤ 5 %): reading "
        f"the input {100 * medians['read'] / medians['bare']:.1f} %, validating it "
        f"{100 * medians['validate'] / medians['bare']:.1f} %, everything else (isolated atoms, "
        f"chunk files, the label file, bookkeeping) {100 * rest / medians['bare']:.1f} %.",
        "",
        f"EMT, {args.structures} rattled and strained 8-atom Cu cells, extxyz in, new label file "
        f"out; one process, default chunk size, no progress bar; {args.repeats} interleaved "
        "repeats; `python benchmarks/labelling_overhead.py`.",
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "labelling_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
