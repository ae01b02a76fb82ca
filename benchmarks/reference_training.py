"""Shared by the reference-data benchmarks (rMD17, AcAc): DFT frames into a label file, the
epochs a run validated, a student's errors on a test file, and the regeneration of
``benchmarks/README.md`` from the result tables.

Energies in the tables are per molecule (meV), forces per component (meV/Å), as the MACE
paper reports them.
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from ase.io import read, write

from mlip_distill.data.store import import_structures
from mlip_distill.evaluate import evaluate_file

BENCHMARKS = Path(__file__).parent
RESULTS = BENCHMARKS / "results"
SHARED_DATA = BENCHMARKS.parent.parent / "shared" / "data"

def default_data_dir() -> Path:
    """``../shared/data`` beside the repository, where the reference data sets live."""
    return SHARED_DATA


def reference_label_file(
    frames_path: Path, isolated_atoms_path: Path, out: Path, n_frames: int | None = None, seed: int = 0
) -> tuple[Path, int]:
    """A label file of ``n_frames`` frames drawn at random (without replacement, ``seed``) from
    ``frames_path`` (all when None), with DFT labels as source ``reference`` and the isolated-atom
    energies of ``isolated_atoms_path`` as that source's E0.

    Returns:
        the label file and the number of frames in it.
    """
    frames = read(frames_path, ":")
    if n_frames is not None and n_frames < len(frames):
        chosen = np.sort(np.random.default_rng(seed).choice(len(frames), n_frames, replace=False))
        frames = [frames[k] for k in chosen]
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "frames.xyz"
        write(subset, read(isolated_atoms_path, ":") + frames, format="extxyz")
        import_structures(subset, out, source="reference")
    return out, len(frames)


def epochs_completed(run_dir: Path) -> int:
    """Epochs that reached validation in a run's ``metrics.csv``."""
    with open(run_dir / "metrics.csv") as handle:
        return sum(1 for row in csv.DictReader(handle) if row.get("val_loss"))


def errors_on_test_set(potential_dir: Path, test_path: Path, n_atoms: int) -> dict[str, float]:
    """MAE and RMSE of a student on every frame of ``test_path``: energy in meV per molecule
    (per-atom error times ``n_atoms``, every frame being the same molecule), forces in meV/Å."""
    errors = evaluate_file(potential_dir, test_path, sources=["reference"], batch_size=32)["reference"]
    return {
        "n_test": errors["n_structures"],
        "energy_mae_mev": errors["energy_mae_mev_per_atom"] * n_atoms,
        "energy_rmse_mev": errors["energy_rmse_mev_per_atom"] * n_atoms,
        "forces_mae_mev_per_A": errors["forces_mae_mev_per_A"],
        "forces_rmse_mev_per_A": errors["forces_rmse_mev_per_A"],
    }


# Order and titles of the sections of benchmarks/README.md; result tables not listed come last.
SECTIONS = {
    "rmd17": "rMD17: students trained on the DFT labels (`python benchmarks/rmd17.py`)",
    "acac": "Acetylacetone, 300 K (`python benchmarks/acac.py`)",
    "sevennet_si": "SevenNet-0 silicon beside the sevenn and MACE trainers (`python benchmarks/sevennet_si.py --minutes 11`)",
    "sevennet_si_bispectrum": "The same, a second run (`python benchmarks/sevennet_si.py --minutes 11 --name sevennet_si_bispectrum model.bispectrum=true`)",
    "sevennet_si_no_bispectrum": "The student before the bispectrum (`python benchmarks/sevennet_si.py --minutes 11 --name sevennet_si_no_bispectrum model.bispectrum=false`)",
    "sevennet_si_20min": "The student before the bispectrum trained 20 minutes (`python benchmarks/sevennet_si.py --minutes 20 --name sevennet_si_20min model.bispectrum=false`)",
    "sevennet_si_40min": "The student before the bispectrum with the earlier loss (E/F/S weights 5/100/5, batch 4, amsgrad), 40 minutes on one thread (`python benchmarks/sevennet_si.py --minutes 40 --train-threads 1 model.bispectrum=false loss.energy.weight=5.0 loss.stress.weight=5.0 data.batch_size=4 optimizer.amsgrad=true`)",
    "sevennet_si_40min_forces": "The student before the bispectrum trained 40 minutes on one thread, forces weighted up (E/F/S 1/100/1, batch 2), with amsgrad (`python benchmarks/sevennet_si.py --minutes 40 --train-threads 1 --name sevennet_si_40min_forces model.bispectrum=false optimizer.amsgrad=true`)",
    "sevennet_si_radial32": "The student before the bispectrum with a radial MLP 32 wide and 12 Bessel functions (`python benchmarks/sevennet_si.py --minutes 11 --name sevennet_si_radial32 model.bispectrum=false model.radial_hidden=32 model.num_basis=12`)",
    "sevennet_si_cutoff5": "The student before the bispectrum with a 5 Å cutoff (`python benchmarks/sevennet_si.py --minutes 11 --name sevennet_si_cutoff5 model.bispectrum=false model.cutoff=5.0`)",
    "cu_emt": "EMT copper, both students (`python benchmarks/cu_emt.py`)",
    "distillation_terms": "Distillation loss terms at equal wall time (`python benchmarks/distillation_terms.py`)",
    "rmd17_mace_speed": "rMD17 student against a MACE of the paper's size, on the CPU (`python benchmarks/rmd17_mace_speed.py`)",
    "labelling_overhead": "Labelling overhead (`python benchmarks/labelling_overhead.py`)",
    "shipped_si": "Shipped silicon student against SevenNet-0 and mlearn DFT (`OMP_NUM_THREADS=1 python benchmarks/shipped_si.py --ship`)",
    "mlearn": "mlearn Si, Ge, Cu: teachers and distilled students against DFT (`python benchmarks/mlearn.py`)",
    "speed_accuracy": "Speed against accuracy over student sizes (`python benchmarks/speed_accuracy.py`)",
    "student_architecture": "Student architecture: what learns SevenNet-0 silicon fastest (`python benchmarks/student_architecture.py`)",
    "student_profile": "Where a student's call spends its time (`python benchmarks/student_profile.py`)",
    "student_profile_compiled": "The same, network compiled by torch.compile (`python benchmarks/student_profile.py --compile --output benchmarks/results/student_profile_compiled`)",
    "compiled_vs_eager": "Eager, torch.export and torch.compile students in the calculator (`python benchmarks/compiled_vs_eager.py`)",
    "data_pipeline": "Data pipeline: graph cache, loading share, peak memory (`python benchmarks/data_pipeline.py`)",
    "training_overhead": "Training-stack overhead per step (`python benchmarks/training_overhead.py`)",
    "peers_sevennet_si": "Peers' trainers rerun beside mlip-distill (`python benchmarks/peers_sevennet_si.py`)",
    "gpu_check_h200": "One GPU, NVIDIA H200: training and MD throughput against SevenNet-0 (`bash benchmarks/gpu_check.sh`)",
    "gpu_check_h100": "One GPU, NVIDIA H100: training and MD throughput against SevenNet-0 (`bash benchmarks/gpu_check.sh`)",
}


def write_table(path: Path, table: str) -> None:
    """Write a results table to ``path``, keeping the hand-written reading of the one it
    replaces: everything from its first line that starts with ``Reading (``."""
    reading = ""
    if path.exists():
        old = path.read_text()
        start = old.find("\nReading (")
        if start >= 0:
            reading = "\n" + old[start + 1 :].rstrip() + "\n"
    path.write_text(table.rstrip() + "\n" + reading)


def regenerate_readme() -> Path:
    """Write ``benchmarks/README.md``: every ``results/*.md`` table under its title."""
    tables = {path.stem: path.read_text().strip() for path in sorted(RESULTS.glob("*.md"))}
    order = [name for name in SECTIONS if name in tables] + [name for name in tables if name not in SECTIONS]
    lines = [
        "# Benchmarks",
        "",
        "Generated by the benchmark scripts from `results/*.md` (each script rewrites this file); do not edit by",
        "hand. Reference data: `../shared/data` (its README gives the sources and the published numbers).",
        "Timings and wall-time budgets are on 2 CPU cores that other jobs shared: treat them as rough.",
    ]
    for name in order:
        title = SECTIONS.get(name, f"`{name}` (`results/{name}.md`)")
        lines += ["", f"## {title}", "", tables[name]]
    md_reports = sorted(RESULTS.glob("md_*/report.json"))
    if md_reports:
        lines += ["", "## MD validation against the teacher (`mlip-distill md`)", "", *md_validation_table(md_reports)]
    readme = BENCHMARKS / "README.md"
    temporary = readme.with_suffix(".md.tmp")
    temporary.write_text("\n".join(lines) + "\n")
    temporary.replace(readme)
    return readme


def md_validation_table(reports: Sequence[Path]) -> list[str]:
    """One row per temperature of each ``mlip-distill md`` report.json, linking to its report."""
    lines = [
        "| report | system | T (K) | stable ps per seed | NVE drift (meV/atom/ps) | drift / std(KE) | RDF MAE "
        "| steps/s student / teacher | threads |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for path in reports:
        report = json.loads(path.read_text())
        link = f"[{path.parent.name}]({path.parent.relative_to(BENCHMARKS)}/report.md)"
        system = f"{report['structure']['formula']}, {report['timestep_fs']:g} fs"
        for temperature, r in report["temperatures"].items():
            stable = ", ".join(f"{ps:.2f}" for ps in r["stable_ps"])
            lines.append(
                f"| {link} | {system} | {temperature} | {stable} of {r['run_ps']:g} | {_fmt(r['drift_mev_per_atom_per_ps'])} "
                f"| {_fmt(r['drift_ratio'])} | {_fmt(r['rdf_mae'])} | {_fmt(r['student_steps_per_s'])} / "
                f"{_fmt(r['teacher_steps_per_s'])} | {report['threads']} |"
            )
    return lines


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


if __name__ == "__main__":  # rewrite benchmarks/README.md from the committed results
    print(regenerate_readme())
