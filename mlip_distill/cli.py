"""The ``mlip-distill`` command: parses arguments and dispatches; no logic of its own.

Bad input ends with one line on standard error (what is wrong, where) and exit status 2.
Set ``MLIP_DISTILL_DEBUG=1`` to see the full traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

DEMO = "the README's demo (EMT copper)"


def _sample(args: argparse.Namespace) -> None:
    from .sampling.perturb import sample_file

    count = sample_file(
        args.seeds, args.out, args.n, rattle_sigma=tuple(args.rattle), max_strain=args.strain, seed=args.seed
    )
    print(f"wrote {count} structures to {args.out}")


def _label(args: argparse.Namespace) -> None:
    from .teachers.labelling import label_file

    summary = label_file(
        args.input, args.teacher, args.out, source=args.source, features=args.features,
        hvp_probes=args.hvp_probes, seed=args.seed,
    )
    print(
        f"labelled {summary.n_labelled} structures ({summary.n_failed} failed) in {summary.seconds:.1f} s "
        f"-> {summary.out_path}"
    )
    for index, reason in summary.failures:
        print(f"  structure {index}: {reason}")


def _stats(args: argparse.Namespace) -> None:
    from .data.stats import format_statistics, statistics_for_file

    print(format_statistics(statistics_for_file(args.file, cutoff=args.cutoff, source=args.source)))


def _train(args: argparse.Namespace) -> None:
    from .training.run import compose_config, train

    result = train(compose_config(args.overrides, config_dir=args.config_dir))
    print(json.dumps(result.metrics, indent=2))
    print(f"run: {result.run_dir}\npotential: {result.potential_dir}")


def _eval(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_file, format_errors

    results = evaluate_file(args.potential, args.data, sources=args.source, batch_size=args.batch_size)
    print(format_errors(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


def _md(args: argparse.Namespace) -> None:
    from ase.io import read

    from .calculator import StudentCalculator
    from .md.langevin import run_langevin
    from .teachers import load_teacher

    atoms = read(args.structures, index=0)
    runs = {"student": run_langevin(atoms, StudentCalculator(args.potential), args.steps, args.temperature, args.timestep)}
    if args.teacher:
        teacher = load_teacher(args.teacher)
        runs["teacher"] = run_langevin(atoms, teacher.calculator, args.teacher_steps, args.temperature, args.timestep)
    for name, run in runs.items():
        print(
            f"{name:<8} {run.steps} steps of {run.n_atoms} atoms at {args.temperature:.0f} K: "
            f"{run.steps_per_s:.1f} steps/s, mean T {run.temperatures.mean():.0f} K ({run.threads} threads)"
        )
    if "teacher" in runs:
        print(f"student/teacher speed: {runs['student'].steps_per_s / runs['teacher'].steps_per_s:.1f}x")


def _distill(args: argparse.Namespace) -> None:
    from .pipeline import DistillSettings, distill

    settings = DistillSettings(
        seeds=args.seeds,
        teacher=args.teacher,
        n_structures=args.n_structures,
        n_valid=args.n_valid,
        md_steps=args.md_steps,
        experiment=args.experiment,
        train_overrides=args.overrides,
    )
    summary = distill(settings, root=args.root)
    errors, md = summary["errors_vs_teacher"], summary["md"]
    print(f"\nStudent against the teacher on {summary['n_valid']} held-out structures:")
    print(f"  energy RMSE {errors['energy_rmse_mev_per_atom']:.2f} meV/atom, "
          f"forces RMSE {errors['forces_rmse_mev_per_A']:.1f} meV/Å")
    print(f"MD ({md['n_atoms']} atoms, Langevin {args.temperature:.0f} K, {md['threads']} threads): "
          f"student {md['student_steps_per_s']:.1f} steps/s over {md['student_steps']} steps, "
          f"teacher {md['teacher_steps_per_s']:.1f} steps/s")
    print(f"total {summary['total_seconds']:.0f} s; potential written to {summary['potential']}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlip-distill", description="Distil a machine-learned interatomic potential into a small, fast student."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sample = commands.add_parser("sample", help="rattled and strained copies of seed structures")
    sample.add_argument("seeds", help="an ASE-readable file, or a crystal such as bulk:Cu:fcc:a=3.61:cubic:2x2x2")
    sample.add_argument("--out", required=True, help="output file (extxyz)")
    sample.add_argument("-n", type=int, default=100, help="number of structures (default 100)")
    sample.add_argument("--rattle", type=float, nargs=2, default=(0.05, 0.15), metavar=("MIN", "MAX"),
                        help="range of the Gaussian displacement width, Å (default 0.05 0.15)")
    sample.add_argument("--strain", type=float, default=0.01, help="largest strain component (default 0.01)")
    sample.add_argument("--seed", type=int, default=0, help="random seed")
    sample.set_defaults(run=_sample)

    label = commands.add_parser("label", help="label structures with a teacher into an HDF5 label file")
    label.add_argument("input", help="structures: any ASE-readable file, or a label file (.h5)")
    label.add_argument("--teacher", required=True,
                       help="teacher spec: emt, potential:PATH (a potential package folder), "
                            "or package.module:Class(key=value)")
    label.add_argument("--out", required=True, help="label file to write or extend (.h5)")
    label.add_argument("--source", default="teacher", help="name of the label source (default teacher)")
    label.add_argument("--features", nargs="+", default=(), metavar="LAYER",
                       help="also store the teacher's node features of these layers, e.g. layer_1 "
                            "(teachers that are networks, such as potential:PATH)")
    label.add_argument("--hvp-probes", type=_count, default=0, metavar="K",
                       help="also store Hessian-vector products along K random unit probes per "
                            "structure (default 0: none)")
    label.add_argument("--seed", type=int, default=0, help="seed of the random probes (default 0)")
    label.set_defaults(run=_label)

    stats = commands.add_parser("stats", help="statistics of a label file or ASE file")
    stats.add_argument("file", help="label file (.h5) or any ASE-readable file")
    stats.add_argument("--cutoff", type=float, default=5.0, help="cutoff for neighbour counts, Å (default 5)")
    stats.add_argument("--source", default=None, help="label source (default: teacher, else the first)")
    stats.set_defaults(run=_stats)

    train = commands.add_parser(
        "train",
        help="train a student (Hydra overrides: key=value ...)",
        description="Train a student from the packaged Hydra configs; every key can be overridden.",
        epilog=_config_group_list(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("--config-dir", default=None, help="a folder of your own config groups, searched first")
    train.add_argument("overrides", nargs="*", help="e.g. data.path=labels.h5 model=painn trainer.max_epochs=50")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("eval", help="errors of a potential against the labels of a data file")
    evaluate.add_argument("potential", help="potential package folder")
    evaluate.add_argument("data", help="label file (.h5) or ASE file with labels")
    evaluate.add_argument("--source", action="append", help="label source(s) to compare with (default all)")
    evaluate.add_argument("--batch-size", type=int, default=16, help="structures per batch (default 16)")
    evaluate.add_argument("--json", default=None, help="also write the errors to this JSON file")
    evaluate.set_defaults(run=_eval)

    md = commands.add_parser("md", help="Langevin MD with a student (and a teacher), with speeds")
    md.add_argument("potential", help="potential package folder")
    md.add_argument("--structures", required=True, help="starting structure (first frame of an ASE file)")
    md.add_argument("--teacher", default=None, help="teacher spec to run beside the student")
    md.add_argument("--steps", type=int, default=1000, help="student MD steps (default 1000)")
    md.add_argument("--teacher-steps", type=int, default=200, help="teacher MD steps (default 200)")
    md.add_argument("--temperature", type=float, default=300.0, help="K (default 300)")
    md.add_argument("--timestep", type=float, default=2.0, help="fs (default 2)")
    md.set_defaults(run=_md)

    defaults = _distill_defaults()
    distill = commands.add_parser("distill", help=f"sample, label, train, evaluate and run MD (default: {DEMO})")
    distill.add_argument("--seeds", default=defaults.seeds, help=f"seed structures (default {defaults.seeds})")
    distill.add_argument("--teacher", default=defaults.teacher, help=f"teacher spec (default {defaults.teacher})")
    distill.add_argument("--n-structures", type=int, default=defaults.n_structures,
                         help=f"structures to sample and label (default {defaults.n_structures})")
    distill.add_argument("--n-valid", type=int, default=defaults.n_valid,
                         help=f"held-out structures (default {defaults.n_valid})")
    distill.add_argument("--md-steps", type=int, default=defaults.md_steps,
                         help=f"student MD steps (default {defaults.md_steps})")
    distill.add_argument("--temperature", type=float, default=defaults.temperature, help="MD temperature, K")
    distill.add_argument("--experiment", default=defaults.experiment,
                         help=f"training experiment config (default {defaults.experiment})")
    distill.add_argument("--root", default="runs", help="where run folders go (default runs/)")
    distill.add_argument("overrides", nargs="*", help="training overrides, e.g. model=painn")
    distill.set_defaults(run=_distill)
    return parser


def _count(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _config_group_list() -> str:
    from .configs import config_groups

    lines = ["config groups (choose with group=option, e.g. model=painn):"]
    lines += [f"  {group:<10} {', '.join(options)}" for group, options in config_groups().items()]
    return "\n".join(lines)


def _distill_defaults():
    from .pipeline import DistillSettings

    return DistillSettings()


def _user_errors() -> tuple[type[BaseException], ...]:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from .data.errors import DataError
    from .package import PotentialError
    from .sampling.errors import SamplingError
    from .teachers.base import TeacherError
    from .training.run import ConfigError

    return (DataError, PotentialError, SamplingError, TeacherError, ConfigError, FileNotFoundError, HydraException, OmegaConfBaseException)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.environ.get("MLIP_DISTILL_DEBUG"):
        args.run(args)
        return 0
    try:
        args.run(args)
    except _user_errors() as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"mlip-distill {args.command}: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
