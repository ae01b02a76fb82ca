"""Float32, fake-quantised and int8 students of EMT copper: errors against each other and EMT,
and CPU speed.

A NequIP-style student is trained on the demo's task (``experiment=cu_emt`` with stress in the
loss, at most ``--minutes`` of training) or taken from ``--potential``. From its weights:

* **float32**: the student as trained;
* **fake-quant**: the same weights with int8 per-channel fake quantisation
  (:func:`~mlip_distill.models.quantize.prepare_qat`), as the QAT stage trains it; here it is
  applied after training, with no QAT epochs;
* **int8**: the package written with ``int8=True`` (int8 weights and scales), loaded by the
  calculator, eager and compiled.

Errors are against EMT on 20 cells sampled apart from the training set, and between the
variants on the same cells. Speed: energy + forces + stress of a 108-atom cell per calculator
call, routes timed in turns (median of rounds). Writes ``benchmarks/results/quantization.{md,json}``.

    python benchmarks/quantization.py [--potential DIR] [--minutes 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch

from compiled_vs_eager import time_per_call
from reference_training import write_table
from mlip_distill.calculator import StudentCalculator
from mlip_distill.data.store import LabelStore
from mlip_distill.evaluate import evaluate_store
from mlip_distill.models.quantize import prepare_qat
from mlip_distill.package import WEIGHTS, load_potential, save_potential
from mlip_distill.sampling.perturb import sample_file
from mlip_distill.sampling.seeds import seed_structures
from mlip_distill.teachers import label_file, load_teacher

RESULTS = Path(__file__).parent / "results"
SEEDS = "bulk:Cu:fcc:a=3.61:cubic:2x2x2"


def emt_labels(folder: Path, n: int, seed: int) -> Path:
    structures, labels = folder / f"structures-{seed}.xyz", folder / f"labels-{seed}.h5"
    sample_file(SEEDS, structures, n, rattle_sigma=(0.05, 0.15), max_strain=0.01, seed=seed)
    label_file(structures, load_teacher("emt"), labels, progress=False)
    return labels


def train_student(folder: Path, minutes: float) -> Path:
    from mlip_distill.training.run import compose_config, train

    labels = emt_labels(folder, 200, seed=0)
    config = compose_config([
        "experiment=cu_emt", "loss=energy_forces_stress", f"data.path={labels.resolve()}",
        f"run_dir={folder / 'run'}", "trainer.enable_progress_bar=false",
        f"trainer.max_time=00:00:{int(minutes):02d}:{int(60 * (minutes % 1)):02d}",
    ])
    return train(config).potential_dir


def _epochs(potential_dir: Path) -> int | None:
    """Epochs in the package's learning curves (None without curves)."""
    curves = potential_dir / "curves.csv"
    return len(curves.read_text().splitlines()) - 1 if curves.is_file() else None


def predictions(calculator: StudentCalculator, structures) -> dict[str, np.ndarray]:
    """Energy per atom (S,) eV, forces (A, 3) eV/Å and stress (S, 6) eV/Å³ of ``structures``."""
    energy, forces, stress = [], [], []
    for atoms in structures:
        calculator.calculate(atoms, ["energy", "forces", "stress"])
        energy.append(calculator.results["energy"] / len(atoms))
        forces.append(calculator.results["forces"])
        stress.append(calculator.results["stress"])
    return {"energy": np.array(energy), "forces": np.concatenate(forces), "stress": np.array(stress)}


def differences(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """RMS and largest differences in meV/atom, meV/Å, meV/Å³."""
    result = {}
    for key in ("energy", "forces", "stress"):
        delta = 1000 * (a[key] - b[key])
        result[f"{key}_rms"] = float(np.sqrt(np.mean(delta**2)))
        result[f"{key}_max"] = float(np.abs(delta).max())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--potential", default=None, help="a float32 package to start from (default: train one)")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time when no --potential")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        float_dir = Path(args.potential) if args.potential else train_student(folder, args.minutes)
        test_labels = emt_labels(folder, 20, seed=1)
        with LabelStore(test_labels) as store:
            structures = [store.structure(index) for index in range(len(store))]
        float32 = load_potential(float_dir)
        int8_dir = save_potential(float32.model, float32.metadata["model"]["name"], folder / "int8", int8=True, compiled=True)
        fake = load_potential(float_dir)
        prepare_qat(fake.model)
        variants = {
            "float32": StudentCalculator(float_dir, compiled=False),
            "float32 compiled": StudentCalculator(save_potential(
                float32.model, float32.metadata["model"]["name"], folder / "f32", compiled=True), compiled=True),
            "fake-quant": StudentCalculator(fake, compiled=False),
            "int8": StudentCalculator(int8_dir, compiled=False),
            "int8 compiled": StudentCalculator(int8_dir, compiled=True),
        }
        predicted = {name: predictions(calculator, structures) for name, calculator in variants.items()}
        errors = {
            name: evaluate_store(potential, test_labels, ["teacher"])["teacher"]
            for name, potential in (("float32", float32), ("fake-quant", fake), ("int8", load_potential(int8_dir)))
        }
        sizes = {"float32": (float_dir / WEIGHTS).stat().st_size, "int8": (int8_dir / WEIGHTS).stat().st_size}
        cell = seed_structures("bulk:Cu:fcc:a=3.61:cubic:3x3x3")[0]
        cell.rattle(0.05, seed=2)
        times = {name: ([], []) for name in variants}
        rng = np.random.default_rng(0)
        for calculator in variants.values():
            calculator.calculate(cell.copy(), ["energy", "forces", "stress"])
        for _ in range(args.rounds):
            for name, calculator in variants.items():
                for series, value in zip(times[name], time_per_call(calculator, cell.copy(), args.calls, rng)):
                    series.append(value)
        results = {
            "threads": args.threads,
            "errors_vs_emt": errors,
            "fake_quant_vs_float32": differences(predicted["fake-quant"], predicted["float32"]),
            "int8_vs_fake_quant": differences(predicted["int8"], predicted["fake-quant"]),
            "int8_compiled_vs_int8": differences(predicted["int8 compiled"], predicted["int8"]),
            "ms_per_call_108_atoms": {name: 1000 * statistics.median(wall) for name, (wall, _) in times.items()},
            "cpu_ms_per_call_108_atoms": {name: 1000 * statistics.median(cpu) for name, (_, cpu) in times.items()},
            "training_epochs": _epochs(float_dir),
            "weights_bytes": sizes,
            "n_parameters": float32.metadata["n_parameters"],
        }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "quantization.json").write_text(json.dumps(results, indent=2) + "\n")
    write_table(RESULTS / "quantization.md", table(results))
    print(table(results))


def table(results: dict) -> str:
    lines = [
        f"float32 student trained for {results['training_epochs'] or 'an unknown number of'} epochs. "
        "Errors against EMT on 20 held-out 32-atom copper cells:",
        "",
        "| student | E RMSE (meV/atom) | F RMSE (meV/Å) | S RMSE (meV/Å³) |",
        "|---|---|---|---|",
    ]
    for name, e in results["errors_vs_emt"].items():
        lines.append(f"| {name} | {e['energy_rmse_mev_per_atom']:.3f} | {e['forces_rmse_mev_per_A']:.2f} "
                     f"| {e['stress_rmse_mev_per_A3']:.3f} |")
    lines += ["", "Differences between the students on the same cells (RMS / max):", "",
              "| pair | E (meV/atom) | F (meV/Å) | S (meV/Å³) |", "|---|---|---|---|"]
    for pair in ("fake_quant_vs_float32", "int8_vs_fake_quant", "int8_compiled_vs_int8"):
        d = results[pair]
        lines.append(f"| {pair.replace('_', ' ')} | {d['energy_rms']:.2e} / {d['energy_max']:.2e} "
                     f"| {d['forces_rms']:.2e} / {d['forces_max']:.2e} | {d['stress_rms']:.2e} / {d['stress_max']:.2e} |")
    lines += ["", f"Energy + forces + stress of a 108-atom cell, {results['threads']} threads (medians):", "",
              "| student | wall ms per call | CPU ms per call |", "|---|---|---|"]
    lines += [f"| {name} | {ms:.1f} | {results['cpu_ms_per_call_108_atoms'][name]:.1f} |"
              for name, ms in results["ms_per_call_108_atoms"].items()]
    sizes = results["weights_bytes"]
    lines += ["", f"weights.safetensors: float32 {sizes['float32']:,} bytes, int8 {sizes['int8']:,} bytes "
              f"({results['n_parameters']:,} parameters).", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
