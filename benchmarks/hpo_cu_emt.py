"""A documented hyperparameter search: learning rate and loss weights of the demo's EMT copper
student (``experiment=cu_emt``: rattled, strained 32-atom cells, 20 held out), with the
``cu_emt_loss_lr`` search of the ``hpo`` config group (TPE, median pruning, objective: force
MAE against EMT on the held-out cells). Extra arguments change the search or the training.

    python benchmarks/hpo_cu_emt.py [--n-structures 200] [--confirm-epochs 20] [hpo.n_trials=12 ...]
    # writes benchmarks/results/hpo_cu_emt/

After the search, the best configuration and ``experiment=cu_emt`` as given are both trained for
``--confirm-epochs`` epochs (longer than a trial), to see whether the gain outlasts the trials'
short budget; ``--confirm SEARCH_DIR`` runs only this step on a finished search.

The same search from the command line, on a label file of your own:

    mlip-distill hpo --search cu_emt_loss_lr data.path=labels.h5
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from mlip_distill.hpo import run_search
from mlip_distill.hpo.config import compose_training, prepare_search
from mlip_distill.sampling.perturb import sample_file
from mlip_distill.teachers import label_file, load_teacher
from mlip_distill.training.run import train

RESULTS = Path(__file__).parent / "results" / "hpo_cu_emt"
RESULT_FILES = ("SUMMARY.md", "trials.csv", "best.yaml", "history.png", "importance.png")


def search(root: Path, n_structures: int, overrides: list[str], command: str) -> Path:
    """Sample and label the cells, run the search, copy its results; returns the search folder."""
    structures, labels = root / "structures.xyz", root / "labels.h5"
    sample_file("bulk:Cu:fcc:a=3.61:cubic:2x2x2", structures, n_structures, rattle_sigma=(0.05, 0.15), max_strain=0.01)
    label_file(structures, load_teacher("emt"), labels, progress=False)
    start = time.perf_counter()
    prepared = prepare_search("cu_emt_loss_lr", [f"data.path={labels.resolve()}", *overrides], out=root / "search")
    result = run_search(prepared)
    minutes = (time.perf_counter() - start) / 60
    RESULTS.mkdir(parents=True, exist_ok=True)
    for name in RESULT_FILES:
        shutil.copyfile(prepared.out / name, RESULTS / name)
    note = (f"\nReproduce: `{command}` ({n_structures} EMT copper cells as in the demo, sampled and labelled "
            f"afresh, then `mlip-distill hpo --search cu_emt_loss_lr data.path=labels.h5`). This search: "
            f"{minutes:.1f} min of wall time on 2 CPU cores shared with other jobs. Paths in best.yaml and "
            f"trials.csv point to {root}, which is not kept.\n")
    summary = (RESULTS / "SUMMARY.md").read_text()
    (RESULTS / "SUMMARY.md").write_text(summary.replace("\n## Spread", note + "\n## Spread", 1))
    print(f"{result.n_complete} complete, {result.n_pruned} pruned; best trial {result.best_number}: "
          f"{result.best_value:.4g} meV/Å; results in {RESULTS}")
    return prepared.out


def confirm(search_dir: Path, epochs: int) -> str:
    """Train the best configuration and ``experiment=cu_emt`` as given for ``epochs`` epochs each
    (no wall-time limit, same data and split) and tabulate their errors on the held-out cells."""
    best = compose_training(["experiment=best"], config_dir=search_dir).config
    runs = {
        "`experiment=cu_emt` as given": compose_training(["experiment=cu_emt", f"data.path={best.data.path}"]).config,
        "`best.yaml` of the search": best,
    }
    lines = [f"## Confirmation: {epochs} epochs each", "",
             "| configuration | F MAE (meV/Å) | F RMSE (meV/Å) | E RMSE (meV/atom) | train (s) |",
             "|---|---|---|---|---|"]
    for index, (name, config) in enumerate(runs.items()):
        config.trainer.max_epochs, config.trainer.max_time = epochs, None
        config.trainer.enable_progress_bar = False
        config.run_dir = str(search_dir / "confirm" / str(index))
        result = train(config)
        errors = result.metrics
        lines.append(f"| {name} | {errors['forces_mae_mev_per_A']:.1f} | {errors['forces_rmse_mev_per_A']:.1f} | "
                     f"{errors['energy_rmse_mev_per_atom']:.2f} | {result.seconds:.0f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default="runs/benchmarks/hpo_cu_emt", help="where the data and trials are written")
    parser.add_argument("--n-structures", type=int, default=200, help="cells sampled and labelled (default 200)")
    parser.add_argument("--confirm-epochs", type=int, default=20, help="epochs of the confirmation runs; 0: none")
    parser.add_argument("--confirm", default=None, metavar="SEARCH_DIR", help="only confirm a finished search")
    parser.add_argument("overrides", nargs="*", help="search (hpo.KEY=VALUE) or training overrides")
    args = parser.parse_args()
    if args.confirm is None:
        root = Path(args.root) / time.strftime("%Y%m%d-%H%M%S")
        root.mkdir(parents=True)
        command = " ".join(["python benchmarks/hpo_cu_emt.py", f"--n-structures {args.n_structures}",
                            f"--confirm-epochs {args.confirm_epochs}", *args.overrides])
        search_dir = search(root, args.n_structures, args.overrides, command)
    else:
        search_dir = Path(args.confirm).resolve()
    if args.confirm_epochs > 0:
        table = confirm(search_dir, args.confirm_epochs)
        summary = (RESULTS / "SUMMARY.md").read_text()
        (RESULTS / "SUMMARY.md").write_text(summary.replace("\n## Spread", "\n" + table + "\n## Spread", 1))
        print(table)


if __name__ == "__main__":
    main()
