"""One run on a GPU: training throughput in float32, bfloat16 and float16, and MD throughput of
the student (GPU-resident path) and of SevenNet-0 on the same diamond silicon cells.

Parts, each timed and recorded on its own (a part that fails is recorded with its error and the
rest still run):

1. ``labelling``: SevenNet-0 on the device labels ``--cells`` rattled and strained 64-atom
   diamond cells (structures/s);
2. ``training``: ``experiment=si_sevennet`` trained for ``--epochs`` epochs in each precision
   (32, bf16-mixed, 16-mixed); structures/s over the epochs after the first, final training loss,
   and the force, energy and stress errors of the mixed precisions against float32 on one batch
   of the float32 student;
3. ``md``: velocity-Verlet at 300 K through :class:`~mlip_distill.calculator.StudentCalculator`
   (neighbour list on the device, reused with the calculator's skin for the device, or ``--skin``)
   from 216 to ~100,000 atoms: steps/s, atom-steps/s, neighbour-list builds, peak GPU memory, and a
   breakdown of one step (neighbour list build, forward + backward of the network, the whole ASE
   call); ``md_cuda_graph`` the same with the step replayed as a CUDA graph (recordings counted);
   ``md_cuda_graph_compiled`` the same up to 13,824 atoms with the network compiled by
   ``torch.compile`` inside the CUDA graph (``compile_network=True``; first calls in ``compile_warmup``);
4. ``teacher_md``: the same MD for SevenNet-0 through ``sevenn``'s own ASE calculator, until it runs
   out of memory or a step takes longer than ``--teacher-max-step`` seconds;
5. ``skin_sweep``: the CUDA-graph path at 4,096 and 13,824 atoms with skins of 1.0 to 0.3 Å, and at
   the default skin with TF32 matrix products (an alternative not taken, timed so that the next
   change targets what pays).

Any NaN or Inf in a loss, energy or force is counted in ``nonfinite``. Results go to
``OUT/gpu_check.json`` and ``OUT/gpu_check.md`` after every part.

    python benchmarks/gpu_check.py --out DIR [--device cuda] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import tempfile
import time
import traceback
from pathlib import Path
from statistics import median
from typing import Any, Callable

import numpy as np
import pytorch_lightning as pl
import torch
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from mlip_distill.calculator import DEFAULT_SKIN, StudentCalculator
from mlip_distill.data.graph import neighbour_list_on_device
from mlip_distill.models import build_model
from mlip_distill.package import save_potential
from mlip_distill.sampling.perturb import sample_structures, write_extxyz
from mlip_distill.teachers.labelling import label_file
from mlip_distill.training.precision import precision_error
from mlip_distill.training.run import compose_config, train

PRECISIONS = ("32", "bf16-mixed", "16-mixed")
# Diamond cubic cells of 8 atoms repeated n times: 216, 1,000, 4,096, 13,824, 32,768, 64,000, 110,592 atoms.
REPEATS = (3, 5, 8, 12, 16, 20, 24)
SWEEP_REPEATS = (8, 12)  # 4,096 and 13,824 atoms
COMPILED_REPEATS = (3, 5, 8, 12)  # up to CUDA_GRAPH_MAX_ATOMS: larger cells run eagerly
SWEEP_SKINS = (1.0, 0.7, 0.5, 0.3)
QUICK_REPEATS = (2,)


class Report:
    """Collects the parts' results and rewrites ``gpu_check.json`` and ``.md`` after each part."""

    def __init__(self, out: Path, device: str) -> None:
        self.out = out
        self.results: dict[str, Any] = {"environment": environment(device), "nonfinite": 0}
        self.out.mkdir(parents=True, exist_ok=True)

    def part(self, name: str, run: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        print(f"== {name}", flush=True)
        try:
            value = run()
            self.results[name] = value
        except Exception as exc:  # a failed part is a result too; the others still run
            traceback.print_exc()
            value = None
            self.results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        self.results.setdefault("seconds", {})[name] = round(time.perf_counter() - start, 1)
        self.write()
        return value

    def count_nonfinite(self, *values: float | np.ndarray | torch.Tensor) -> None:
        for value in values:
            array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            self.results["nonfinite"] += int((~np.isfinite(array)).sum())

    def write(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2, default=str))
        (self.out / "gpu_check.md").write_text(markdown(self.results))


def environment(device: str) -> dict[str, Any]:
    import e3nn
    import sevenn
    import vesin

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "e3nn": e3nn.__version__,
        "vesin": vesin.__version__,
        "sevenn": sevenn.__version__,
        "device": device,
        "cpu_threads": torch.get_num_threads(),
    }
    if device.startswith("cuda"):
        properties = torch.cuda.get_device_properties(device)
        info.update(gpu=properties.name, gpu_memory_gib=round(properties.total_memory / 2**30, 1))
    return info


def synchronise(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def diamond(repeat: int, seed: int = 0) -> Any:
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeat)
    atoms.rattle(0.03, seed=seed)
    return atoms


def label_cells(report: Report, work: Path, n_cells: int, device: str) -> dict[str, Any]:
    from mlip_distill.teachers.sevennet import SevenNetTeacher

    cells = sample_structures([bulk("Si", "diamond", a=5.43, cubic=True)], n_cells, (0.02, 0.12), 0.02, (2, 2, 2))
    write_extxyz(cells, work / "cells.xyz")
    result: dict[str, Any] = {"structures": n_cells, "atoms_each": 64, "device": device}
    try:
        teacher = SevenNetTeacher("7net-0", device=device)
        start = time.perf_counter()
        summary = label_file(work / "cells.xyz", teacher, work / "labels.h5", progress=False)
    except Exception as exc:  # the training part still needs labels: make them on the CPU
        traceback.print_exc()
        result.update(error_on_device=f"{type(exc).__name__}: {exc}"[:300], device="cpu")
        (work / "labels.h5").unlink(missing_ok=True)
        start = time.perf_counter()
        summary = label_file(work / "cells.xyz", SevenNetTeacher("7net-0"), work / "labels.h5", progress=False)
    seconds = time.perf_counter() - start
    result.update(seconds=round(seconds, 1), structures_per_s=round(n_cells / seconds, 1), failed=summary.n_failed)
    return result


def untrained_potential(work: Path) -> str:
    """A package of the si_sevennet student with fresh weights: enough to time MD when training failed."""
    config = compose_config(["experiment=si_sevennet"])
    hyperparameters = {key: value for key, value in config.model.items() if key != "name"}
    model = build_model(config.model.name, elements=[14], **hyperparameters)
    return str(save_potential(model, config.model.name, work / "untrained"))


class StepTimer(pl.Callback):
    """Wall time of each training batch after the first epoch, and every training loss."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.seconds: list[float] = []
        self.structures = 0
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        synchronise(self.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        synchronise(self.device)
        if trainer.current_epoch > 0:
            self.seconds.append(time.perf_counter() - self._start)
            self.structures += int(batch.num_graphs)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self.losses.append(float(loss))


def training(report: Report, work: Path, n_cells: int, epochs: int, batch_size: int, device: str) -> dict[str, Any]:
    results: dict[str, Any] = {}
    reference_model = None
    # float16 autocast with a gradient scaler is for GPUs only
    for precision in PRECISIONS if device.startswith("cuda") else PRECISIONS[:2]:
        overrides = [
            "experiment=si_sevennet", f"data.path={work / 'labels.h5'}", f"data.batch_size={batch_size}",
            f"data.n_valid={max(2, n_cells // 8)}",
            f"trainer.accelerator={'gpu' if device.startswith('cuda') else 'cpu'}", f"trainer.precision={precision}",
            f"trainer.max_epochs={epochs}", "trainer.max_time=null", "trainer.enable_progress_bar=false",
            "logger=csv", f"run_dir={work / ('run-' + precision)}",
        ]
        timer = StepTimer(device)
        try:
            result = train(compose_config(overrides), callbacks=[timer])
        except Exception as exc:
            traceback.print_exc()
            results[precision] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        report.count_nonfinite(np.array(timer.losses))
        results[precision] = {
            "structures_per_s": round(timer.structures / sum(timer.seconds), 1) if timer.seconds else None,
            "ms_per_step": round(1e3 * median(timer.seconds), 2) if timer.seconds else None,
            "final_train_loss": timer.losses[-1] if timer.losses else None,
            "val_forces_rmse_mev_per_A": result.metrics.get("forces_rmse_mev_per_A"),
        }
        if precision == "32":
            from mlip_distill.package import load_potential

            reference_model = load_potential(result.potential_dir, device=device).model
            results["potential_dir"] = str(result.potential_dir)
        report.results["training"] = results
        report.write()
    if reference_model is not None:
        batch = next(iter(_one_batch(work, batch_size, device)))
        for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16))[: 2 if device.startswith("cuda") else 1]:
            errors = precision_error(reference_model, batch, dtype)
            report.count_nonfinite(np.array(list(errors.values())))
            results[f"{name}_error_vs_fp32"] = {key: round(value, 4) for key, value in errors.items()}
    return results


def _one_batch(work: Path, batch_size: int, device: str):
    from torch_geometric.loader import DataLoader

    from mlip_distill.data.dataset import GraphDataset

    dataset = GraphDataset(work / "labels.h5", "teacher", cutoff=5.0)
    return (batch.to(device) for batch in DataLoader([dataset[i] for i in range(batch_size)], batch_size=batch_size))


def md_throughput(report: Report, calculator_for: Callable[[], Any], repeats: tuple[int, ...], steps: int,
                  max_step_s: float, device: str, breakdown: bool) -> list[dict[str, Any]]:
    """Velocity-Verlet at 300 K (1 fs) of rattled diamond cells, bigger and bigger."""
    rows: list[dict[str, Any]] = []
    report.results.setdefault("_md_rows", rows)
    for repeat in repeats:
        atoms = diamond(repeat)
        n_atoms = len(atoms)
        row: dict[str, Any] = {"atoms": n_atoms}
        rows.append(row)
        try:
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            atoms.calc = calculator_for()
            MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
            dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
            start = time.perf_counter()
            dynamics.run(2)  # warm-up: first calls build the neighbour list and caches
            warmup_s = time.perf_counter() - start
            n_steps = max(2, min(steps, int(10.0 / max(warmup_s / 3, 1e-3))))
            if warmup_s / 3 > max_step_s:
                n_steps = 2
            builds_before = getattr(atoms.calc, "neighbour_list_builds", None)
            recordings_before = getattr(atoms.calc, "cuda_graph_recordings", None)
            synchronise(device)
            start = time.perf_counter()
            dynamics.run(n_steps)
            synchronise(device)
            seconds = time.perf_counter() - start
            report.count_nonfinite(atoms.get_forces(), atoms.get_potential_energy())
            row.update(
                steps=n_steps,
                ms_per_step=round(1e3 * seconds / n_steps, 2),
                steps_per_s=round(n_steps / seconds, 2),
                atom_steps_per_s=round(n_atoms * n_steps / seconds),
                temperature_K=round(float(atoms.get_temperature()), 1),
            )
            if builds_before is not None:
                row["neighbour_list_builds"] = atoms.calc.neighbour_list_builds - builds_before
            if getattr(atoms.calc, "cuda_graph", False):
                row["cuda_graph_recordings"] = atoms.calc.cuda_graph_recordings - recordings_before
            if getattr(atoms.calc, "cuda_graph_error", None):
                row["cuda_graph_error"] = atoms.calc.cuda_graph_error[:200]
            if device.startswith("cuda"):
                row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if breakdown:
                row["breakdown_ms"] = step_breakdown(atoms, device)
            print(row, flush=True)
            too_slow = seconds / n_steps > max_step_s
        except torch.cuda.OutOfMemoryError as exc:
            row["error"] = f"out of memory: {str(exc).splitlines()[0][:200]}"
            print(row, flush=True)
            too_slow = True
        except Exception as exc:
            traceback.print_exc()
            row["error"] = f"{type(exc).__name__}: {exc}"[:300]
            too_slow = True
        finally:
            atoms.calc = None
        report.write()
        if too_slow:
            break
    report.results.pop("_md_rows", None)
    return rows


def cuda_graph_agreement(potential_dir: str, device: str, compile_network: bool = False) -> dict[str, Any]:
    """Largest difference of energy (meV/atom), forces (meV/Å) and stress (meV/Å³) between the
    replayed CUDA graph (of the network compiled by torch.compile, if asked) and the eager student,
    over 20 MD steps of 216 atoms at 1,000 K (so that the neighbour list is rebuilt)."""
    atoms = diamond(3)
    MaxwellBoltzmannDistribution(atoms, temperature_K=1000, rng=np.random.default_rng(1))
    eager = StudentCalculator(potential_dir, device=device, skin=0.3, cuda_graph=False)
    replayed = StudentCalculator(potential_dir, device=device, skin=0.3, cuda_graph=True, compile_network=compile_network)
    worst = {"energy_mev_per_atom": 0.0, "forces_mev_per_A": 0.0, "stress_mev_per_A3": 0.0}
    trace = []
    atoms.calc = eager
    dynamics = VelocityVerlet(atoms, timestep=2.0 * units.fs)
    for _ in range(20):
        dynamics.run(1)
        copy = atoms.copy()
        results = []
        for calculator in (eager, replayed):
            copy.calc = calculator
            results.append((copy.get_potential_energy(), copy.get_forces(), copy.get_stress()))
        (e1, f1, s1), (e2, f2, s2) = results
        step = {"energy_mev_per_atom": 1e3 * abs(e1 - e2) / len(atoms), "forces_mev_per_A": 1e3 * float(np.abs(f1 - f2).max()),
                "stress_mev_per_A3": 1e3 * float(np.abs(s1 - s2).max())}
        worst = {key: max(value, step[key]) for key, value in worst.items()}
        trace.append([replayed.neighbour_list_builds, replayed.cuda_graph_recordings] + [round(v, 5) for v in step.values()])
    return {**{key: round(value, 5) for key, value in worst.items()}, "per_step_builds_recordings_e_f_s": trace,
            "rebuilds": replayed.neighbour_list_builds, "recordings": replayed.cuda_graph_recordings,
            "still_captured": replayed.cuda_graph is not False, "capture_error": replayed.cuda_graph_error}


def compile_warmup(calculator: StudentCalculator) -> dict[str, float]:
    """Seconds of the first call at each size of ``COMPILED_REPEATS`` (torch.compile's kernels and
    a recording), so that the MD timing after it holds neither."""
    seconds = {}
    for repeat in COMPILED_REPEATS:
        atoms = diamond(repeat)
        start = time.perf_counter()
        calculator.get_forces(atoms)
        seconds[str(len(atoms))] = round(time.perf_counter() - start, 1)
    return seconds


def skin_sweep(potential_dir: str, device: str, steps: int) -> list[dict[str, Any]]:
    """ms per MD step (300 K) through the CUDA-graph path for each skin, and at the default skin
    with TF32 matrix products, at 4,096 and 13,824 atoms."""
    variants = [(f"skin {skin} Å", skin, False) for skin in SWEEP_SKINS]
    variants += [(f"skin {DEFAULT_SKIN['cuda']} Å, TF32 matrix products", DEFAULT_SKIN["cuda"], True)]
    rows = []
    for repeat in SWEEP_REPEATS:
        for name, skin, tf32 in variants:
            atoms = diamond(repeat)
            MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
            torch.backends.cuda.matmul.allow_tf32 = tf32
            try:
                atoms.calc = StudentCalculator(potential_dir, device=device, skin=skin, cuda_graph=True)
                dynamics = VelocityVerlet(atoms, timestep=1.0 * units.fs)
                dynamics.run(2)
                builds_before = atoms.calc.neighbour_list_builds
                synchronise(device)
                start = time.perf_counter()
                dynamics.run(steps)
                synchronise(device)
                seconds = time.perf_counter() - start
                rows.append({"atoms": len(atoms), "variant": name, "steps": steps,
                             "ms_per_step": round(1e3 * seconds / steps, 3),
                             "neighbour_list_builds": atoms.calc.neighbour_list_builds - builds_before,
                             "recordings": atoms.calc.cuda_graph_recordings,
                             "edges_per_atom": round(atoms.calc._graph.edge_index.shape[1] / len(atoms), 1)})
            except Exception as exc:
                rows.append({"atoms": len(atoms), "variant": name, "error": f"{type(exc).__name__}: {exc}"[:200]})
            finally:
                torch.backends.cuda.matmul.allow_tf32 = False
            print(rows[-1], flush=True)
    return rows


def _timed(function: Callable[[], Any], device: str, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        synchronise(device)
        start = time.perf_counter()
        function()
        synchronise(device)
        times.append(time.perf_counter() - start)
    return round(1e3 * median(times), 3)


def step_breakdown(atoms: Any, device: str) -> dict[str, float]:
    """One student step taken apart, ms: neighbour list on the device, the graph's per-step update
    (positions to the device, edges within the cutoff), network forward + backward, whole call."""
    calculator = atoms.calc
    positions = torch.as_tensor(atoms.positions, device=device)
    cell = torch.as_tensor(atoms.cell.array, device=device)
    parts = {
        "neighbour_list_build": _timed(
            lambda: neighbour_list_on_device(positions, cell, atoms.pbc, calculator.cutoff + calculator.skin), device),
        "graph_update": _timed(lambda: calculator._graph_for(atoms), device),
    }
    batch = calculator._graph_for(atoms)
    parts["network_forward_backward"] = _timed(
        lambda: calculator.model(batch, compute_forces=True, compute_stress=True, create_graph=False), device)

    def whole_call() -> None:
        calculator.results = {}
        calculator.calculate(atoms, ["energy", "forces", "stress"])

    parts["whole_call"] = _timed(whole_call, device)
    return parts


def markdown(results: dict[str, Any]) -> str:
    env = results.get("environment", {})
    lines = [
        f"**{env.get('gpu', env.get('device'))}**, torch {env.get('torch')}, e3nn {env.get('e3nn')}, vesin {env.get('vesin')}, sevenn {env.get('sevenn')}, "
        f"Python {env.get('python')}. Non-finite values seen anywhere: **{results.get('nonfinite')}**. "
        "Command: `bash benchmarks/gpu_check.sh` (see `benchmarks/gpu_check.py`).",
        "",
    ]
    labelling = results.get("labelling")
    if isinstance(labelling, dict) and "structures_per_s" in labelling:
        lines += [f"SevenNet-0 labelling on the GPU: {labelling['structures_per_s']} structures/s "
                  f"({labelling['structures']} cells of 64 atoms in {labelling['seconds']} s).", ""]
    training_results = results.get("training")
    if isinstance(training_results, dict):
        lines += ["### Training (experiment=si_sevennet, 64-atom cells)", "",
                  "| precision | structures/s | ms/step | final train loss | val F RMSE (meV/Å) |", "|---|---|---|---|---|"]
        for precision in PRECISIONS:
            row = training_results.get(precision, {})
            if "error" in row:
                lines.append(f"| {precision} | error: {row['error'][:80]} | | | |")
            elif row:
                lines.append(f"| {precision} | {row['structures_per_s']} | {row['ms_per_step']} | "
                             f"{_fmt(row['final_train_loss'])} | {_fmt(row['val_forces_rmse_mev_per_A'])} |")
        for name in ("bf16", "fp16"):
            errors = training_results.get(f"{name}_error_vs_fp32")
            if errors:
                lines.append(f"\n{name} against float32 on one batch: forces {_fmt(errors['forces_rmse_mev_per_A'])} meV/Å "
                             f"RMS ({100 * errors['forces_relative']:.2f} % of the RMS force), energy "
                             f"{_fmt(errors['energy_rmse_mev_per_atom'])} meV/atom, stress {_fmt(errors['stress_rmse_mev_per_A3'])} meV/Å³.")
        lines.append("")
    student, teacher, replayed = results.get("md"), results.get("teacher_md"), results.get("md_cuda_graph")
    if isinstance(student, list):
        by_atoms = {row["atoms"]: row for row in teacher} if isinstance(teacher, list) else {}
        graphed = {row["atoms"]: row for row in replayed} if isinstance(replayed, list) else {}
        compiled = results.get("md_cuda_graph_compiled")
        compiled = {row["atoms"]: row for row in compiled} if isinstance(compiled, list) else {}
        lines += [f"### MD, velocity Verlet at 300 K, diamond Si (student's skin {results.get('student_skin_A')} Å)", "",
                  "| atoms | student ms/step | student atom-steps/s | NL builds | peak GiB | with CUDA graph ms/step "
                  "(NL builds, new recordings) | compiled + CUDA graph ms/step | SevenNet-0 ms/step | speed-up (best student) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in student:
            other = by_atoms.get(row["atoms"], {})
            graph_row = graphed.get(row["atoms"], {})
            compiled_row = compiled.get(row["atoms"], {})
            best = min((r["ms_per_step"] for r in (row, graph_row, compiled_row) if "ms_per_step" in r), default=None)
            graph_note = " (not recorded: ran eagerly)" if "cuda_graph_error" in graph_row else (
                f" ({graph_row['neighbour_list_builds']}, {graph_row['cuda_graph_recordings']})"
                if "cuda_graph_recordings" in graph_row else "")
            speedup = f"{other['ms_per_step'] / best:.1f}×" if "ms_per_step" in other and best else ""
            lines.append(f"| {row['atoms']:,} | {row.get('ms_per_step', row.get('error', ''))} | "
                         f"{row.get('atom_steps_per_s', '')} | {row.get('neighbour_list_builds', '')} | "
                         f"{row.get('peak_memory_gib', '')} | {graph_row.get('ms_per_step', graph_row.get('error', ''))}{graph_note} | "
                         f"{compiled_row.get('ms_per_step', compiled_row.get('error', ''))} | {other.get('ms_per_step', (other.get('error') or '')[:40])} | {speedup} |")
        lines += ["", "Student step breakdown (ms): neighbour list build (done only on a rebuild), graph update "
                  "(positions to the device, edges within the cutoff), network forward + backward, the whole ASE call.", "",
                  "| atoms | NL build | graph update | forward + backward | whole call |", "|---|---|---|---|---|"]
        for row in student:
            parts = row.get("breakdown_ms")
            if parts:
                lines.append(f"| {row['atoms']:,} | {parts['neighbour_list_build']} | {parts['graph_update']} | "
                             f"{parts['network_forward_backward']} | {parts['whole_call']} |")
    for key, name in (("cuda_graph_agreement", "CUDA graph"), ("cuda_graph_compiled_agreement", "Compiled network in the CUDA graph")):
        agreement = results.get(key)
        if not (isinstance(agreement, dict) and "forces_mev_per_A" in agreement):
            continue
        lines.append(f"\n{name} against eager, 20 steps of 216 atoms at 1,000 K ({agreement['rebuilds']} neighbour-list "
                     f"builds): largest differences {agreement['energy_mev_per_atom']} meV/atom, "
                     f"{agreement['forces_mev_per_A']} meV/Å, {agreement['stress_mev_per_A3']} meV/Å³.")
        if "recordings" in agreement:
            lines[-1] = lines[-1].replace(" builds)", f" builds, {agreement['recordings']} recordings)")
        if not agreement.get("still_captured", True):
            lines.append(f"**The CUDA graph could not be recorded; both ran eagerly**: {agreement.get('capture_error')}")
    sweep = results.get("skin_sweep")
    if isinstance(sweep, list):
        lines += ["", "### CUDA-graph path: skin and alternatives (MD at 300 K, diamond Si)", "",
                  "| atoms | variant | ms/step | NL builds while timed | recordings (all) | pairs per atom in the recording |", "|---|---|---|---|---|---|"]
        lines += [f"| {row['atoms']:,} | {row['variant']} | {row.get('ms_per_step', row.get('error', ''))} | "
                  f"{row.get('neighbour_list_builds', '')} | {row.get('recordings', '')} | {row.get('edges_per_atom', '')} |"
                  for row in sweep]
    errors = {name: value["error"] for name, value in results.items() if isinstance(value, dict) and "error" in value}
    if errors:
        lines += ["", "### Errors", ""] + [f"- {name}: {message}" for name, message in errors.items()]
    lines.append(f"\nSeconds per part: {results.get('seconds')}")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, (int, float)) and math.isfinite(value) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a try on the CPU")
    parser.add_argument("--cells", type=int, default=320)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=200, help="student MD steps per size (fewer if slow)")
    parser.add_argument("--teacher-steps", type=int, default=10)
    parser.add_argument("--sweep-steps", type=int, default=200)
    parser.add_argument("--skin", type=float, default=None, help="the students' skin, Å (default: the calculator's)")
    parser.add_argument("--teacher-max-step", type=float, default=8.0, help="stop the teacher's sizes above this many s/step")
    parser.add_argument("--skip", nargs="*", default=[], help="parts to skip")
    args = parser.parse_args()
    if args.quick:
        args.cells, args.epochs, args.batch_size, args.steps, args.teacher_steps, args.sweep_steps = 12, 2, 4, 4, 2, 4
    repeats = QUICK_REPEATS if args.quick else REPEATS
    report = Report(args.out, args.device)
    report.results["student_skin_A"] = args.skin if args.skin is not None else DEFAULT_SKIN.get(torch.device(args.device).type, 1.0)
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    if "labelling" not in args.skip:
        report.part("labelling", lambda: label_cells(report, work, args.cells, args.device))
    trained = None
    if "training" not in args.skip:
        trained = report.part("training", lambda: training(report, work, args.cells, args.epochs, args.batch_size, args.device))
    potential_dir = (trained or {}).get("potential_dir")
    if not potential_dir and not {"md", "md_cuda_graph"} <= set(args.skip):
        potential_dir = report.part("untrained_potential", lambda: untrained_potential(work))
    if potential_dir and "md" not in args.skip:
        report.part("md", lambda: md_throughput(
            report, lambda: StudentCalculator(potential_dir, device=args.device, skin=args.skin, cuda_graph=False),
            repeats, args.steps, 5.0, args.device, breakdown=True))
    if potential_dir and "md_cuda_graph" not in args.skip and args.device.startswith("cuda"):
        report.part("cuda_graph_agreement", lambda: cuda_graph_agreement(potential_dir, args.device))
        report.part("md_cuda_graph", lambda: md_throughput(
            report, lambda: StudentCalculator(potential_dir, device=args.device, skin=args.skin, cuda_graph=True),
            repeats, args.steps, 5.0, args.device, breakdown=False))
    if "teacher_md" not in args.skip:
        from sevenn.calculator import SevenNetCalculator

        report.part("teacher_md", lambda: md_throughput(
            report, lambda: SevenNetCalculator("7net-0", device=args.device),
            repeats, args.teacher_steps, args.teacher_max_step, args.device, breakdown=False))
    if potential_dir and "md_cuda_graph_compiled" not in args.skip and args.device.startswith("cuda"):
        report.part("cuda_graph_compiled_agreement", lambda: cuda_graph_agreement(potential_dir, args.device, True))
        compiled = StudentCalculator(potential_dir, device=args.device, skin=args.skin, compile_network=True)
        report.part("compile_warmup", lambda: compile_warmup(compiled))
        report.part("md_cuda_graph_compiled", lambda: md_throughput(
            report, lambda: compiled, COMPILED_REPEATS, args.steps, 5.0, args.device, breakdown=False))
    if potential_dir and "skin_sweep" not in args.skip and args.device.startswith("cuda"):
        report.part("skin_sweep", lambda: skin_sweep(potential_dir, args.device, args.sweep_steps))
    print(markdown(report.results), flush=True)


if __name__ == "__main__":
    main()
