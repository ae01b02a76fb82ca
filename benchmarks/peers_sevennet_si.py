"""The distillation benchmark of ``../shared/data/sevennet_si`` against the peers' own trainers:
`sevenn train` and MACE rerun beside mlip-distill, each for the same wall time on the same
``train.xyz`` / ``valid.xyz``, one after another with the same threads.

- sevenn 0.13.0 with ``<data>/peers/sevenn_train.yaml`` unchanged, from the project's own
  environment (sevenn is a project dependency, the teacher that labelled the data); stopped
  when the time is up, its model is ``checkpoint_best.pth`` (best validation loss).
- MACE 0.3.16 through ``<data>/peers/run_mace.sh`` (its own ``timeout``) with the README's loss
  weights, in ``benchmarks/peers/.venv-mace`` (MACE pins e3nn 0.4.4; made on first use by
  ``benchmarks/peers/setup_venvs.sh``), on copies of the files with labels under ``REF_*``.
  When the time cuts an epoch, MACE's own ``--restart_latest`` with no epochs left turns the
  best checkpoint (EMA weights) into ``NAME.model``; that step is not counted as training.
- mlip-distill: ``sevennet_si.py``'s training (``experiment=si_sevennet``, ``trainer.max_time``).

Curves: validation force RMSE per component (meV/Å) against seconds since each trainer was
launched, read from the peers' logs while they run (sevenn's ``lc.csv``: per-atom vector norm,
divided by √3 here; MACE's ``out.txt``: per component) and from our validation epochs. The peers
validate on ``valid.xyz``, mlip-distill on 36 cells it holds out of ``train.xyz``. Final errors:
every final model on ``valid.xyz`` through its own ASE calculator (the peers' in their
environments, ``benchmarks/peers/predict.py``), scored by one code: RMSE per component, energy
meV/atom, forces meV/Å, stress meV/Å³ (six Voigt components). Speed against SevenNet-0 is
``sevennet_si.py``'s (the peers' numbers in the data README).

    python benchmarks/peers_sevennet_si.py [--minutes 11] [--only sevenn,mace,mlip-distill]
        [--data ../shared/data/sevennet_si] [--results peers_sevennet_si] [overrides ...]

A full run takes about 3 × minutes plus ~5 minutes (setup, MACE's finalisation, scoring), and
~10 minutes more the first time (the MACE environment).
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import pytorch_lightning as pl
import torch
from ase import Atoms
from ase.io import write
from torch_geometric.data import Data

import sevennet_si
from peers.predict import predict

from mlip_distill.calculator import StudentCalculator
from mlip_distill.data.io import labels_from_atoms, read_structures
from mlip_distill.metrics import ErrorMetrics
from mlip_distill.package import load_potential

BENCHMARKS = Path(__file__).parent
PEERS = BENCHMARKS / "peers"
MACE_VENV = PEERS / ".venv-mace"
TRAINERS = ("sevenn", "mace", "mlip-distill")
LABELS = {
    "sevenn": "`sevenn train` 0.13.0 (`sevenn_train.yaml`: 32 ch, l_max 1, 2 layers, 4.5 Å)",
    "mace": "MACE 0.3.16 (`run_mace.sh`: 32 ch, max_L 1, 2 interactions, 4.5 Å; E/F/S weights 10/100/100, EMA)",
    "mlip-distill": "mlip-distill (`experiment=si_sevennet`)",
}
MACE_WEIGHTS = ["--energy_weight=10", "--forces_weight=100", "--stress_weight=100"]  # the data README's run
MACE_EPOCH_LINE = re.compile(r"Epoch (\d+): head: \S+, loss=\S+, RMSE_E_per_atom=\s*(\S+) meV, RMSE_F=\s*(\S+) meV / A")


@dataclass
class TrainerRun:
    """One trainer's run: ``curve`` rows hold ``seconds`` since launch, ``epoch`` (training epochs
    done), ``forces_rmse_mev_per_A`` and ``energy_rmse_mev_per_atom`` on its validation set;
    ``valid`` the final model's errors on ``valid.xyz`` (meV units)."""

    trainer: str
    run_dir: str
    seconds: float = math.nan
    status: str = "not run"
    model: str | None = None
    curve: list[dict[str, float]] = field(default_factory=list)
    n_parameters: int | None = None
    valid: dict[str, float] = field(default_factory=dict)


def child_environment(threads: int, venv: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if venv is not None:
        env["PATH"] = f"{venv.resolve() / 'bin'}{os.pathsep}{env['PATH']}"
        env["VIRTUAL_ENV"] = str(venv.resolve())
    return env


def run_watched(
    command: list[str], cwd: Path, env: dict[str, str], limit: float, read_curve: Callable[[], list[dict]],
    console: Path,
) -> tuple[int, float, list[dict]]:
    """Run ``command`` (output to ``console``) until it ends or ``limit`` seconds pass (then its
    process group is terminated), stamping each new validation row that ``read_curve`` finds with
    the seconds since launch (within the 1 s poll). Returns the exit code, the seconds it ran and
    the rows."""
    start = time.perf_counter()
    with open(console, "w") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        rows: list[dict] = []

        def stamp() -> float:
            elapsed = time.perf_counter() - start
            rows.extend({"seconds": elapsed, **row} for row in read_curve()[len(rows):])
            return elapsed

        while process.poll() is None:
            if stamp() > limit:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
                break
            time.sleep(1.0)
        return process.returncode, stamp(), rows


def read_sevenn_curve(path: Path) -> list[dict]:
    """Validation rows of sevenn's ``lc.csv``: its force RMSE is the RMS length of the per-atom
    force error vector (eV/Å), √3 times the per-component RMSE; energy in eV/atom."""
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("epoch")]
    force = next((k for k in rows[0] if k.startswith("validset_Force_RMSE")), None) if rows else None
    energy = next((k for k in rows[0] if k.startswith("validset_Energy_RMSE")), None) if rows else None
    if force is None or energy is None:
        return []
    return [
        {"epoch": int(row["epoch"]), "forces_rmse_mev_per_A": 1000 * float(row[force]) / math.sqrt(3),
         "energy_rmse_mev_per_atom": 1000 * float(row[energy])}
        for row in rows if row[force] and row[energy]
    ]


def read_mace_curve(path: Path) -> list[dict]:
    """Validation rows of MACE's log (``Epoch N: ... RMSE_E_per_atom=... meV, RMSE_F=... meV / A``,
    per component; epochs counted from 0, validated every 2)."""
    if not path.exists():
        return []
    return [
        {"epoch": int(match[1]) + 1, "forces_rmse_mev_per_A": float(match[3]), "energy_rmse_mev_per_atom": float(match[2])}
        for match in MACE_EPOCH_LINE.finditer(path.read_text(errors="replace"))
    ]


def train_sevenn(data: Path, work: Path, minutes: float, threads: int) -> TrainerRun:
    """``sevenn train`` with the peers' yaml, in ``work/sevenn`` beside links to the data (the
    yaml names ``../train.xyz`` and ``../valid.xyz``), stopped after ``minutes``."""
    run = TrainerRun("sevenn", str(work / "sevenn"))
    folder = Path(run.run_dir)
    folder.mkdir(parents=True)
    shutil.copyfile(data / "peers" / "sevenn_train.yaml", folder / "input.yaml")
    for name in ("train.xyz", "valid.xyz"):
        (work / name).symlink_to((data / name).resolve())
    command = [sys.executable, "-m", "sevenn.main.sevenn", "train", "input.yaml", "-w", "."]
    code, run.seconds, run.curve = run_watched(
        command, folder, child_environment(threads), 60 * minutes, lambda: read_sevenn_curve(folder / "lc.csv"),
        folder / "console.txt")
    run.status = "finished" if code == 0 else ("time limit" if run.seconds >= 60 * minutes else f"failed (exit {code})")
    best = folder / "checkpoint_best.pth"
    run.model = str(best) if best.exists() else None
    return run


def mace_copy(source: Path, target: Path) -> None:
    """``source`` with its labels moved to ``REF_energy``, ``REF_forces`` and ``REF_stress``
    (Voigt as ASE's ``get_stress``, which MACE itself stores there), where ``run_mace.sh`` wants them."""
    frames = []
    for atoms in read_structures(source):
        labels = labels_from_atoms(atoms)
        copy = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        copy.info["REF_energy"] = float(labels["energy"])
        copy.arrays["REF_forces"] = labels["forces"]
        copy.info["REF_stress"] = labels["stress"]
        frames.append(copy)
    write(target, frames, format="extxyz")


def train_mace(data: Path, work: Path, minutes: float, threads: int) -> TrainerRun:
    """``run_mace.sh`` in ``work`` for at most ``minutes`` (epochs unbounded: MACE's plateau
    scheduler does not depend on them), then, when the time cut training, the same script with
    ``--restart_latest`` and as many epochs as the best checkpoint had, which only evaluates and
    saves ``mace/mace.model``."""
    run = TrainerRun("mace", str(work / "mace"))
    folder = Path(run.run_dir)
    labelled = work / "mace_data"
    labelled.mkdir(parents=True)
    for name in ("train", "valid"):
        mace_copy(data / f"{name}.xyz", labelled / f"{name}.xyz")
    script = (data / "peers" / "run_mace.sh").resolve()
    env = {**child_environment(threads, MACE_VENV),
           "TRAIN": str((labelled / "train.xyz").resolve()), "VALID": str((labelled / "valid.xyz").resolve())}
    seconds = int(round(60 * minutes))
    code, run.seconds, run.curve = run_watched(
        ["bash", str(script), "mace", "100000", str(seconds), *MACE_WEIGHTS], work, env, seconds + 60,
        lambda: read_mace_curve(folder / "out.txt"), work / "mace_console.txt")
    wall = (folder / "wall.txt").read_text().strip() if (folder / "wall.txt").exists() else f"exit {code}"
    run.status = "finished" if wall.startswith("rc=0") else ("time limit" if wall.startswith("rc=124") else f"failed ({wall})")
    model = folder / "mace.model"
    checkpoints = sorted((folder / "checkpoints").glob("*_epoch-*.pt"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    if not model.exists() and checkpoints:
        for name in ("out.txt", "wall.txt"):
            if (folder / name).exists():
                (folder / name).rename(folder / f"train_{name}")
        epoch = checkpoints[-1].stem.rsplit("-", 1)[1]
        subprocess.run(["bash", str(script), "mace", epoch, "900", *MACE_WEIGHTS, "--restart_latest"],
                       cwd=work, env=env, check=False)
        run.status += f", model from the checkpoint of epoch {int(epoch) + 1}"
    run.model = str(model) if model.exists() else None
    return run


class ValidationClock(pl.Callback):
    """Seconds since ``start`` (``time.perf_counter``) and the validation errors of every epoch."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.rows: list[dict[str, float]] = []

    def on_validation_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if trainer.sanity_checking or "val_forces_rmse_mev_per_A" not in metrics:
            return
        self.rows.append({
            "seconds": time.perf_counter() - self.start, "epoch": trainer.current_epoch + 1,
            "forces_rmse_mev_per_A": float(metrics["val_forces_rmse_mev_per_A"]),
            "energy_rmse_mev_per_atom": float(metrics["val_energy_rmse_mev_per_atom"]),
        })


@contextmanager
def training_with(callback: pl.Callback):
    """``sevennet_si.train_student`` calls mlip-distill's ``train`` with no extra callbacks; inside
    this context it passes ``callback`` too."""
    original = sevennet_si.train
    sevennet_si.train = functools.partial(original, callbacks=[callback])
    try:
        yield
    finally:
        sevennet_si.train = original


def train_mlip_distill(data: Path, work: Path, minutes: float, overrides: list[str]) -> TrainerRun:
    start = time.perf_counter()
    clock = ValidationClock(start)
    with training_with(clock):
        potential_dir, _ = sevennet_si.train_student(data, str(work / "mlip-distill"), minutes, overrides)
    return TrainerRun("mlip-distill", str(potential_dir.parent), time.perf_counter() - start, "finished",
                      str(potential_dir), clock.rows)


def as_graph(atoms: Atoms) -> Data:
    """An ``Atoms``' labels as the one-structure batch :class:`ErrorMetrics` reads."""
    labels = {key: torch.as_tensor(value) for key, value in labels_from_atoms(atoms).items()}
    return Data(n_atoms=torch.tensor([len(atoms)]), energy=labels["energy"].reshape(1),
                forces=labels["forces"], stress=labels["stress"].reshape(1, 6))


def score(reference: list[Atoms], predicted: list[Atoms]) -> dict[str, float]:
    """Errors (meV units) of ``predicted``'s results against ``reference``'s labels, structure
    by structure."""
    if len(reference) != len(predicted):
        raise ValueError(f"{len(predicted)} predictions for {len(reference)} structures")
    metrics = ErrorMetrics()
    for k, (label, guess) in enumerate(zip(reference, predicted)):
        if (label.numbers != guess.numbers).any() or abs(label.positions - guess.positions).max() > 1e-6:
            raise ValueError(f"prediction {k} is not of structure {k}")
        metrics.update(as_graph(guess).to_dict(), as_graph(label))
    return metrics.compute()


def score_run(run: TrainerRun, valid: Path, threads: int) -> None:
    """Fill in ``run.valid`` and ``run.n_parameters`` from its model's predictions on ``valid``."""
    reference = read_structures(valid)
    if run.trainer == "mlip-distill":
        run.valid = score(reference, predict(StudentCalculator(run.model), reference))
        run.n_parameters = sum(p.numel() for p in load_potential(run.model).model.parameters())
        return
    python = sys.executable if run.trainer == "sevenn" else str(MACE_VENV / "bin" / "python")
    out = Path(run.run_dir) / "valid_predicted.xyz"
    done = subprocess.run([python, str(PEERS / "predict.py"), run.trainer, run.model, str(valid), str(out)],
                          env=child_environment(threads), capture_output=True, text=True)
    if done.returncode != 0:
        run.status += f"; scoring failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else done.returncode}"
        return
    run.n_parameters = json.loads(done.stdout.strip().splitlines()[-1])["n_parameters"]
    run.valid = score(reference, read_structures(out))


def plot(runs: list[TrainerRun], path: Path, minutes: float) -> None:
    """Validation force RMSE against wall time, one line per trainer (log y), the final score on
    ``valid.xyz`` as a star at the end of each line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        if not run.curve:
            continue
        line, = axes.plot([row["seconds"] / 60 for row in run.curve], [row["forces_rmse_mev_per_A"] for row in run.curve],
                          marker=".", markersize=3, label=LABELS[run.trainer].split(" (")[0].replace("`", ""))
        if "forces_rmse_mev_per_A" in run.valid:
            axes.plot([run.curve[-1]["seconds"] / 60], [run.valid["forces_rmse_mev_per_A"]], "*", markersize=11,
                      color=line.get_color())
    axes.set_yscale("log")
    axes.set_xlabel("wall time since launch (min)")
    axes.set_ylabel("validation force RMSE per component (meV/Å)")
    axes.set_title(f"SevenNet-0 silicon, {minutes:g} min per trainer (★: final model on valid.xyz)", fontsize=10)
    axes.grid(True, which="both", alpha=0.3)
    if axes.lines:
        axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_results(runs: list[TrainerRun], args: argparse.Namespace, results: Path) -> str:
    """``<results>.json``, ``.md`` and ``.png``; returns the markdown."""
    n_train, n_valid = (len(read_structures(args.data / f"{name}.xyz")) for name in ("train", "valid"))
    record = {"minutes": args.minutes, "threads": args.threads, "data": str(args.data), "n_train": n_train,
              "n_valid": n_valid, "overrides": args.overrides, "runs": [asdict(run) for run in runs]}
    results.parent.mkdir(exist_ok=True)
    json_path, markdown_path, plot_path = (results.parent / f"{results.name}.{kind}" for kind in ("json", "md", "png"))
    json_path.write_text(json.dumps(record, indent=2, default=float) + "\n")
    plot(runs, plot_path, args.minutes)

    def cell(run: TrainerRun, key: str, digits: int) -> str:
        return f"{run.valid[key]:.{digits}f}" if key in run.valid else "—"

    rows = [
        "| trainer | parameters | wall time (s) | epochs | E RMSE (meV/atom) | F RMSE (meV/Å) | S RMSE (meV/Å³) | run |",
        "|---|---|---|---|---|---|---|---|",
        *(f"| {LABELS[run.trainer]} | {f'{run.n_parameters:,}' if run.n_parameters else '—'} | {run.seconds:.0f} | "
          f"{run.curve[-1]['epoch'] if run.curve else '—'} | {cell(run, 'energy_rmse_mev_per_atom', 2)} | "
          f"{cell(run, 'forces_rmse_mev_per_A', 1)} | {cell(run, 'stress_rmse_mev_per_A3', 2)} | {run.status} |"
          for run in runs),
        "",
        f"Data: `{args.data}` ({n_train} training, {n_valid} validation cells). "
        f"Each trainer ran for {args.minutes:g} min of wall time ({args.threads} threads), one after another: the "
        "peers' limit counts from launch, mlip-distill's (Lightning's `max_time`) its training only. Wall time: "
        "from launch (data loading included) to the end of training and export. Errors: each final model on the "
        f"{n_valid} cells of `valid.xyz` through its own ASE calculator, RMSE per component. Epochs: the last "
        "validated one (MACE validates every 2). The peers validate on `valid.xyz` itself and keep the best "
        "checkpoint on it; mlip-distill validates on cells it holds out of `train.xyz` (36 in `sevennet_si.py`; curves in "
        f"`{plot_path.name}`). Speed against SevenNet-0: `sevennet_si.md`.",
    ]
    markdown = "\n".join(rows) + "\n"
    markdown_path.write_text(markdown)
    return markdown


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=sevennet_si.DATA, help="folder with train.xyz, valid.xyz and peers/")
    parser.add_argument("--minutes", type=float, default=11.0, help="wall time of each trainer")
    parser.add_argument("--only", default=",".join(TRAINERS), help="comma-separated trainers to run")
    parser.add_argument("--threads", type=int, default=2, help="threads of every trainer")
    parser.add_argument("--root", type=Path, default=Path("runs/benchmarks/peers_sevennet_si"), help="where runs are written")
    parser.add_argument("--results", default="peers_sevennet_si",
                        help="name of the results files in benchmarks/results (a smoke run: peers_sevennet_si.smoke)")
    parser.add_argument("overrides", nargs="*", help="mlip-distill overrides on top of experiment=si_sevennet")
    args = parser.parse_args()
    chosen = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(chosen) - set(TRAINERS))
    if unknown:
        parser.error(f"--only: unknown trainer(s) {', '.join(unknown)} (choose from {', '.join(TRAINERS)})")
    torch.set_num_threads(args.threads)
    if "mace" in chosen:
        subprocess.run(["bash", str(PEERS / "setup_venvs.sh")], check=True)

    work = args.root / time.strftime("%Y%m%d-%H%M%S")
    work.mkdir(parents=True)
    runs = []
    for name in (name for name in TRAINERS if name in chosen):
        print(f"== {name}: {args.minutes:g} min in {work}", flush=True)
        if name == "sevenn":
            run = train_sevenn(args.data, work, args.minutes, args.threads)
        elif name == "mace":
            run = train_mace(args.data, work, args.minutes, args.threads)
        else:
            run = train_mlip_distill(args.data, work, args.minutes, args.overrides)
        print(f"== {name}: {run.status}, {run.seconds:.0f} s, {len(run.curve)} validation rows", flush=True)
        runs.append(run)
    for run in runs:
        if run.model is not None:
            score_run(run, args.data / "valid.xyz", args.threads)
    print(write_results(runs, args, sevennet_si.RESULTS / args.results))


if __name__ == "__main__":
    main()
