"""Data pipeline at 1,000 and 20,000 structures: graph cache build, loading share of a training
step, peak memory of an epoch.

For each size, EMT labels rattled, strained copper cells of 8, 16 and 32 atoms (in turn) into a
label file, then measures

- the graph cache (:mod:`mlip_distill.data.graph_cache`), in a fresh process: the time and
  peak memory to build it beside the label file, the time to open it again (checksums of the
  label file's structures and of every chunk of the cache), its size on disk;
- per training step of the demo student (experiment=cu_emt: NequIP, 32 channels, 2 layers, 5 Å),
  batches from the datamodule's shuffled training loader (one process, ``num_workers=0``): CPU
  time of loading and collating a batch against the whole step (loading + forward, loss,
  backward, gradient clipping, AdamW step), summed over ``--steps`` steps after ``--warmup``;
  with the graph cache and, for comparison, with neighbour lists built per item;
- peak resident memory (``VmHWM``) of a fresh process that opens the datamodule's dataset and
  iterates two epochs over the whole label file in batches of 16: with the graph cache, the same
  with HDF5's chunk caches off, and with every built graph kept in memory (the datamodule's
  default before the graph cache, ``GraphDataset(cache=True)``).

CPU times are ``time.process_time`` with one torch thread, which other jobs on a shared machine
disturb less than wall time.

    python benchmarks/data_pipeline.py  # writes benchmarks/results/data_pipeline.{json,md}
    python benchmarks/data_pipeline.py --sizes 1000 --work /tmp/pipeline  # keep the label files
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import h5py
import torch
from ase.build import bulk
from ase.io import write

from mlip_distill.data.graph_cache import GraphCache, graph_cache_path
from mlip_distill.sampling.perturb import sample_file
from mlip_distill.teachers import label_file, load_teacher
from mlip_distill.training.datamodule import LabelFileDataModule
from mlip_distill.training.run import compose_config

sys.path.insert(0, str(Path(__file__).parent))
from training_overhead import new_student  # noqa: E402  (the demo student and its loss)

RESULTS = Path(__file__).parent / "results"
CUTOFF = 5.0  # the demo student's
REPEATS = ((2, 1, 1), (2, 2, 1), (2, 2, 2))  # 8-, 16- and 32-atom cells of the cubic fcc cell
MEMORY_MODES = ("graph_cache", "graph_cache_no_chunk_cache", "in_memory")


def make_label_file(folder: Path, n_structures: int) -> Path:
    """``n_structures`` EMT-labelled Cu cells of 8, 16 and 32 atoms; reused when present."""
    labels = folder / f"cu_{n_structures}.h5"
    if labels.exists():
        return labels
    seeds, structures = folder / "seeds.xyz", folder / f"cu_{n_structures}.xyz"
    cubic = bulk("Cu", "fcc", a=3.61, cubic=True)
    write(seeds, [cubic.repeat(repeat) for repeat in REPEATS])
    sample_file(str(seeds), structures, n_structures, rattle_sigma=(0.05, 0.15), max_strain=0.01)
    label_file(structures, load_teacher("emt"), labels, progress=False)
    structures.unlink()
    return labels


def clocks() -> tuple[float, float]:
    return time.process_time(), time.perf_counter()


def since(start: tuple[float, float]) -> tuple[float, float]:
    return tuple(b - a for a, b in zip(start, clocks()))


def cache_build(labels: Path) -> dict:
    """Build the graph cache from nothing and open it again, in a fresh process: seconds (CPU,
    wall) of each, the build's peak resident memory above that before it, sizes."""
    build = in_child(labels, "build")
    path = graph_cache_path(labels, CUTOFF)
    return {**build, "cache_mb": path.stat().st_size / 1e6, "label_file_mb": labels.stat().st_size / 1e6}


def build_child(labels: Path) -> dict:
    graph_cache_path(labels, CUTOFF).unlink(missing_ok=True)
    resident = current_rss_mb()
    reset_peak_rss()
    start = clocks()
    GraphCache(labels, CUTOFF)
    build = since(start)
    build_memory = peak_rss_mb() - resident
    start = clocks()
    cache = GraphCache(labels, CUTOFF)
    reopen = since(start)
    return {
        "build_cpu_s": build[0], "build_wall_s": build[1], "build_peak_extra_mb": build_memory,
        "open_cpu_s": reopen[0], "open_wall_s": reopen[1], "edges": int(cache._offsets[-1]),
    }


def step_shares(labels: Path, config, batch_size: int, steps: int, warmup: int, cache: bool) -> dict:
    """CPU seconds of loading + collation and of whole training steps, summed over ``steps``."""
    data = LabelFileDataModule(labels, "teacher", CUTOFF, batch_size=batch_size, n_valid=100, cache=cache)
    model, loss = new_student(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, amsgrad=True)
    batches = iter(data.train_dataloader())
    loading = whole = 0.0
    atoms = 0
    for step in range(warmup + steps):
        start = time.process_time()
        batch = next(batches)
        loaded = time.process_time()
        optimizer.zero_grad()
        prediction = model(batch, compute_forces=True, create_graph=True)
        total, _ = loss(prediction, batch)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        end = time.process_time()
        if step >= warmup:
            loading += loaded - start
            whole += end - start
            atoms += batch.num_nodes
    return {
        "loading_cpu_ms_per_step": 1e3 * loading / steps, "step_cpu_ms": 1e3 * whole / steps,
        "loading_percent": 100 * loading / whole, "atoms_per_batch": atoms / steps,
    }


def in_child(labels: Path, mode: str) -> dict:
    """:func:`build_child` or :func:`memory_child` in a fresh process, its JSON line."""
    command = [sys.executable, __file__, "--child-of", str(labels), "--mode", mode]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def memory_child(labels: Path, mode: str) -> dict:
    """Open ``labels`` as the datamodule does, then two epochs over all its structures in batches
    of 16: the peak resident memory (MB) of each phase and the first epoch's CPU time. The
    high-water mark is reset (``/proc/self/clear_refs``) after the imports and after opening, so
    that each peak is that phase's own.

    Modes: ``graph_cache`` (the datamodule now), ``graph_cache_no_chunk_cache`` (the same with
    HDF5's chunk caches off, to show what they hold), ``in_memory`` (the datamodule's default
    before the graph cache: every built graph kept in memory)."""
    from torch_geometric.loader import DataLoader

    from mlip_distill.data.dataset import GraphDataset

    if mode == "graph_cache_no_chunk_cache":
        open_file = h5py.File.__init__
        h5py.File.__init__ = lambda self, *args, **kwargs: open_file(self, *args, rdcc_nbytes=0, **kwargs)
    torch.set_num_threads(1)
    resident = current_rss_mb()
    reset_peak_rss()
    if mode == "in_memory":
        dataset = GraphDataset(labels, "teacher", CUTOFF, dtype=torch.float32, cache=True)
    else:
        dataset = LabelFileDataModule(labels, "teacher", CUTOFF, n_valid=100).dataset
    opening = peak_rss_mb()
    loader = DataLoader(dataset, batch_size=16, shuffle=True)
    reset_peak_rss()
    start = time.process_time()
    n_atoms = sum(batch.num_nodes for batch in loader)
    seconds = time.process_time() - start
    first_epoch = peak_rss_mb()
    for _ in loader:  # a second epoch: memory that only caches fill stops growing
        pass
    return {"rss_after_imports_mb": resident, "peak_opening_mb": opening, "peak_epoch_mb": first_epoch,
            "peak_two_epochs_mb": peak_rss_mb(), "epoch_cpu_s": seconds, "atoms": n_atoms}


def reset_peak_rss() -> None:
    """Reset this process's high-water mark of resident memory (Linux 4.0+)."""
    Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    """Peak resident memory of this process since the last :func:`reset_peak_rss`, MB. (Not
    ``ru_maxrss``, which in a child process never drops below its parent's size at ``fork``.)"""
    return _status_mb("VmHWM")


def current_rss_mb() -> float:
    return _status_mb("VmRSS")


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 20000], help="structures per label file")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--steps", type=int, default=40, help="timed training steps per case")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out first")
    parser.add_argument("--work", type=Path, help="folder for the label files (default: a temporary one)")
    parser.add_argument("--child-of", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="graph_cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_of is not None:
        child = build_child if args.mode == "build" else partial(memory_child, mode=args.mode)
        print(json.dumps(child(args.child_of)))
        return
    torch.set_num_threads(1)
    config = compose_config(["experiment=cu_emt", "data.path=unused.h5", "monitor=train_loss"])
    results: dict = {"sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.work or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        for size in args.sizes:
            start = clocks()
            labels = make_label_file(folder, size)
            row: dict = {"label_file_wall_s": since(start)[1], "cache": cache_build(labels)}
            for batch_size in args.batch_sizes:
                for cache in (True, False):
                    name = f"batch_{batch_size}_{'graph_cache' if cache else 'built_per_item'}"
                    row[name] = step_shares(labels, config, batch_size, args.steps, args.warmup, cache)
                    print(size, name, row[name], flush=True)
            row["memory"] = {mode: in_child(labels, mode) for mode in MEMORY_MODES}
            print(size, row["cache"], row["memory"], flush=True)
            results["sizes"][str(size)] = row
    results["setup"] = {
        "structures": "rattled (0.05-0.15 Å), strained (1 %) fcc Cu cells of 8, 16, 32 atoms in turn, EMT labels",
        "student": "experiment=cu_emt (NequIP, 32 channels, l_max 1, 2 layers, cutoff 5 Å), AdamW, float32",
        "steps": args.steps, "warmup": args.warmup,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, 1 thread",
        "load_average": os.getloadavg(),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "data_pipeline.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "data_pipeline.md").write_text(report(results, args.batch_sizes))
    print(report(results, args.batch_sizes))


def report(results: dict, batch_sizes: list[int]) -> str:
    setup, sizes = results["setup"], results["sizes"]
    lines = [
        "# Data pipeline: graph cache, loading share of a step, memory",
        "",
        f"{setup['structures']}; {setup['student']}; {setup['machine']}; load average "
        f"{', '.join(f'{x:.1f}' for x in setup['load_average'])} at the end. "
        "`python benchmarks/data_pipeline.py`.",
        "",
        "## Graph cache (neighbour lists at 5 Å, beside the label file)",
        "",
        "| structures | edges | build CPU s (wall s) | build peak memory MB | open again CPU s (wall s) | "
        "cache MB | label file MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for size, row in sizes.items():
        c = row["cache"]
        lines.append(
            f"| {int(size):,} | {c['edges']:,} | {c['build_cpu_s']:.2f} ({c['build_wall_s']:.2f}) | "
            f"+{c['build_peak_extra_mb']:.0f} | "
            f"{c['open_cpu_s']:.3f} ({c['open_wall_s']:.3f}) | {c['cache_mb']:.1f} | {c['label_file_mb']:.1f} |"
        )
    lines += [
        "",
        f"## Loading + collation per training step (CPU time, sum of {setup['steps']} steps after "
        f"{setup['warmup']} warm-up; target < 10 %)",
        "",
        "| structures | batch | atoms/batch | step CPU ms | loading ms, graph cache | share | "
        "loading ms, neighbour lists built per item | share |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, row in sizes.items():
        for batch_size in batch_sizes:
            cached = row[f"batch_{batch_size}_graph_cache"]
            built = row[f"batch_{batch_size}_built_per_item"]
            lines.append(
                f"| {int(size):,} | {batch_size} | {cached['atoms_per_batch']:.0f} | {cached['step_cpu_ms']:.1f} | "
                f"{cached['loading_cpu_ms_per_step']:.2f} | **{cached['loading_percent']:.1f} %** | "
                f"{built['loading_cpu_ms_per_step']:.2f} | {built['loading_percent']:.1f} % |"
            )
    lines += [
        "",
        "## Peak resident memory (fresh process; VmHWM, reset before each phase)",
        "",
        "Opening: the datamodule's dataset (label checks, graph cache checks); epoch: every structure once, "
        "shuffled, in batches of 16 (loading and collation only); two epochs: the peak after a second one.",
        "",
        "| structures | after imports MB | graph cache: opening peak MB | epoch peak MB | two epochs MB | "
        "epoch CPU s | same, HDF5 chunk caches off: epoch peak MB (CPU s) | in-memory graphs (before): opening peak MB | "
        "epoch peak MB | two epochs MB | epoch CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, row in sizes.items():
        cached, kept = row["memory"]["graph_cache"], row["memory"]["in_memory"]
        uncached = row["memory"]["graph_cache_no_chunk_cache"]
        lines.append(
            f"| {int(size):,} | {cached['rss_after_imports_mb']:.0f} | {cached['peak_opening_mb']:.0f} | "
            f"**{cached['peak_epoch_mb']:.0f}** | {cached['peak_two_epochs_mb']:.0f} | {cached['epoch_cpu_s']:.1f} | "
            f"{uncached['peak_epoch_mb']:.0f} ({uncached['epoch_cpu_s']:.1f}) | {kept['peak_opening_mb']:.0f} | {kept['peak_epoch_mb']:.0f} | "
            f"{kept['peak_two_epochs_mb']:.0f} | {kept['epoch_cpu_s']:.1f} |"
        )
    smallest, largest = (sizes[key]["memory"] for key in (min(sizes, key=int), max(sizes, key=int)))
    peak = {mode: (smallest[mode]["peak_epoch_mb"], largest[mode]["peak_epoch_mb"]) for mode in MEMORY_MODES}
    lines += [
        "",
        f"With the graph cache the epoch peaks at {peak['graph_cache'][0]:.0f} and {peak['graph_cache'][1]:.0f} MB "
        f"from {int(min(sizes, key=int)):,} to {int(max(sizes, key=int)):,} structures; with HDF5's chunk caches off, "
        f"{peak['graph_cache_no_chunk_cache'][0]:.0f} and {peak['graph_cache_no_chunk_cache'][1]:.0f} MB: the "
        "difference goes with those caches, whose size is set per open dataset, not per structure, and a second "
        "epoch adds nothing. Keeping every built graph in memory, as before, took "
        f"{peak['in_memory'][0]:.0f} and {peak['in_memory'][1]:.0f} MB.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
