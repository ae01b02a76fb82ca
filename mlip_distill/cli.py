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
    from collections import Counter
    from dataclasses import fields

    from .sampling.plan import SamplingPlan, sample_plan_file

    plan = {field.name: getattr(args, field.name) for field in fields(SamplingPlan)}
    structures = sample_plan_file(args.seeds, args.out, plan, teacher=args.teacher, seed=args.seed)
    counts = Counter(atoms.info["config_type"] for atoms in structures)
    print(f"wrote {len(structures)} structures to {args.out} "
          f"({', '.join(f'{count} {kind}' for kind, count in counts.items())})")


def _sampling_defaults() -> tuple[dict, int]:
    """The sampling plan's defaults by field (each the dest of a `sample` option), and the
    rattle-strain count used when no generator is chosen."""
    from dataclasses import fields

    from .sampling.plan import DEFAULT_RATTLE_STRAIN, SamplingPlan

    return {field.name: field.default for field in fields(SamplingPlan)}, DEFAULT_RATTLE_STRAIN


def _label(args: argparse.Namespace) -> None:
    from .data.store import Shard
    from .teachers.labelling import label_file

    summary = label_file(
        args.input, args.teacher, args.out, source=args.source, features=args.features,
        hvp_probes=args.hvp_probes, seed=args.seed, chunk_size=args.chunk_size, workers=args.workers,
        shard=None if args.shard is None else Shard.parse(args.shard),
    )
    resumed = f", {summary.n_resumed} by an interrupted run" if summary.n_resumed else ""
    print(
        f"labelled {summary.n_labelled} structures ({summary.n_failed} failed{resumed}) in "
        f"{summary.seconds:.1f} s -> {summary.out_path}"
    )
    for index, reason in summary.failures:
        print(f"  structure {index}: {reason}")


def _merge(args: argparse.Namespace) -> None:
    from .data.shards import merge_shards

    count = merge_shards(args.shards, args.out)
    print(f"merged {len(args.shards)} shards, {count} structures -> {args.out}")


def _stats(args: argparse.Namespace) -> None:
    from .data.stats import format_statistics, statistics_for_file

    print(format_statistics(statistics_for_file(args.file, cutoff=args.cutoff, source=args.source)))


def _train(args: argparse.Namespace) -> int:
    from .training.run import compose_config, train

    config = compose_config(args.overrides, config_dir=args.config_dir)
    if args.sanity:
        from .training.sanity import run_sanity_checks

        report = run_sanity_checks(config)
        print(report.table())
        return 0 if report.passed else 1
    result = train(config)
    if not result.metrics:  # a data-parallel process other than rank 0, which reports
        return 0
    from .training.diagnosis import diagnose_run

    print(json.dumps(result.metrics, indent=2))
    print(f"run: {result.run_dir}\npotential: {result.potential_dir}")
    print(diagnose_run(result.run_dir).summary())
    return 0


def _eval(args: argparse.Namespace) -> None:
    from .evaluate import evaluate_file, format_errors

    results = evaluate_file(args.potential, args.data, sources=args.source, batch_size=args.batch_size)
    print(format_errors(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.json}")


def _export(args: argparse.Namespace) -> None:
    from .export import export_run

    out = export_run(args.run_dir, args.out, int8=args.int8, compiled=not args.no_compiled)
    print(f"potential package written to {out}")


def _md(args: argparse.Namespace) -> None:
    import torch
    from tqdm import tqdm

    from .calculator import StudentCalculator
    from .md.report import terminal_summary, write_report
    from .md.stability import StabilityCriteria
    from .md.validation import MDSettings, validate_md
    from .sampling.seeds import seed_structures
    from .teachers import load_teacher

    if args.threads:
        torch.set_num_threads(args.threads)
    atoms = seed_structures(args.structures)[0]
    student = StudentCalculator(args.potential, device=args.device, compile_network=args.compile)
    student.potential.check_elements(atoms.numbers, where=f"{args.structures}: structure 0")
    if args.compile:  # compiled before the runs, so that the speed measured is the steps'
        student.get_potential_energy(atoms.copy())
    teacher = load_teacher(args.teacher)
    teacher.check_elements(atoms.numbers)
    timestep = MDSettings(timestep_fs=args.timestep).timestep_for(atoms)
    steps = args.steps or max(1, round(args.ps * 1000 / timestep))
    nve_steps = max(1, round(args.nve_ps * 1000 / timestep)) if args.nve_ps else steps
    settings = MDSettings(
        temperatures=tuple(args.temperatures), seeds=args.seeds, steps=steps, nve_steps=nve_steps,
        timestep_fs=timestep, friction_per_fs=args.friction, rdf_max=args.rdf_max,
        criteria=StabilityCriteria(temperature_band=args.temperature_band, min_distance_fraction=args.min_distance_fraction,
                                   max_bond_stretch=args.max_bond_stretch),
    )
    total_steps = len(settings.temperatures) * ((1 + settings.seeds) * steps + 2 * nve_steps)
    with tqdm(total=total_steps, unit="step", desc="MD", disable=None) as bar:
        validation = validate_md(atoms, student, teacher.ase_calculator(), settings, on_step=bar.update)
    write_report(validation, args.out, student=str(args.potential), teacher=args.teacher, student_device=args.device)
    print(terminal_summary(json.loads((Path(args.out) / "report.json").read_text())))
    print(f"report: {Path(args.out) / 'report.md'}")


def _distill(args: argparse.Namespace) -> None:
    from .pipeline import DistillSettings, distill

    settings = DistillSettings(
        seeds=args.seeds,
        teacher=args.teacher,
        sampling={**_distill_defaults().sampling, **dict(args.sample)},
        n_valid=args.n_valid,
        md_structure=args.md_structure,
        md_steps=args.md_steps,
        teacher_md_steps=args.teacher_md_steps,
        temperature=args.temperature,
        experiment=args.experiment,
        train_overrides=args.overrides,
        rounds=args.rounds,
        committee_size=args.committee,
        on_policy_frames=args.on_policy_frames,
    )
    summary = distill(settings, root=args.root)
    errors, md = summary["errors_vs_teacher"], summary["md"]
    stress = errors.get("stress_rmse_mev_per_A3")
    ratio = md["student_steps_per_s"] / md["teacher_steps_per_s"]
    print(f"\nStudent against the teacher ({args.teacher}) on {summary['n_valid']} held-out structures:")
    print(f"  energy RMSE {errors['energy_rmse_mev_per_atom']:.2f} meV/atom, "
          f"forces RMSE {errors['forces_rmse_mev_per_A']:.1f} meV/Å"
          + (f", stress RMSE {stress:.2f} meV/Å³" if stress is not None else ""))
    print(f"MD ({md['n_atoms']} atoms, Langevin {args.temperature:.0f} K, {md['threads']} threads): "
          f"student {md['student_steps_per_s']:.1f} steps/s over {md['student_steps']} steps, "
          f"teacher {md['teacher_steps_per_s']:.2f} steps/s over {md['teacher_steps']} steps: student "
          + (f"{ratio:.0f}x faster" if ratio >= 1 else f"{1 / ratio:.1f}x slower"))
    for entry in summary["rounds"]:
        print(f"on-policy round {entry['round']}: {entry['frames_added']} frames added, forces RMSE "
              f"{entry['errors_vs_teacher']['forces_rmse_mev_per_A']:.1f} meV/Å on held-out structures")
    print(f"total {summary['total_seconds']:.0f} s; potential written to {summary['potential']}")


def _hpo(args: argparse.Namespace) -> None:
    from .hpo import run_search
    from .hpo.config import prepare_search

    result = run_search(prepare_search(args.search, args.overrides, out=args.out, config_dir=args.config_dir))
    print(f"{result.n_complete} complete, {result.n_pruned} pruned, {result.n_failed} failed trials")
    if result.best_number is not None:
        params = ", ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}"
                           for name, value in result.best_params.items())
        print(f"best: trial {result.best_number}, objective {result.best_value:.4g} ({params})")
    print(f"results: {result.out / 'SUMMARY.md'}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlip-distill", description="Distil a machine-learned interatomic potential into a small, fast student."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sample = commands.add_parser(
        "sample", help="new structures from seeds: rattle-strain, vacancies, teacher relaxations and MD",
        description="Sample structures for a teacher to label. Every structure carries info['config_type'] "
                    "(rattle-strain, vacancy, relax, md-<T>K) and the index of its seed as "
                    "info['system_id'] and info['source_index']. Structures with atoms closer than "
                    "--min-distance are rejected, and their number is reported.",
    )
    plan, default_rattle_strain = _sampling_defaults()
    sample.add_argument("seeds", help="an ASE-readable file, or a crystal such as bulk:Cu:fcc:a=3.61:cubic:2x2x2")
    sample.add_argument("--out", required=True, help="output file (extxyz)")
    sample.add_argument("--teacher", default=None,
                        help="teacher spec that drives --relax and --md-temperatures: emt, potential:PATH, "
                             "or package.module:Class(key=value)")
    sample.add_argument("--supercell", default=plan["supercell"], metavar="N1xN2xN3",
                        help="repeat every seed along its lattice vectors before sampling, e.g. 2x2x2 "
                             "(default: as given)")
    sample.add_argument("--min-distance", type=float, default=plan["min_distance"], metavar="Å",
                        help="reject structures with two atoms closer than this, Å "
                             f"(default {plan['min_distance']})")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default 0)")

    perturb = sample.add_argument_group("rattle and strain")
    perturb.add_argument("-n", "--rattle-strain", type=int, default=plan["rattle_strain"], metavar="N",
                         help="strained and rattled copies of the seeds, taken in turn "
                              f"(default {default_rattle_strain} when no other generator is chosen, else 0)")
    perturb.add_argument("--rattle", type=float, nargs=2, default=plan["rattle"], metavar=("MIN", "MAX"),
                         help="range of the Gaussian displacement width, Å; also rattles vacancy structures "
                              "and relaxation starts (default {} {})".format(*plan["rattle"]))
    perturb.add_argument("--strain", type=float, default=plan["strain"],
                         help="largest strain component, dimensionless, shear included (default %(default)s)")

    vacancy = sample.add_argument_group("vacancies")
    vacancy.add_argument("--vacancies", type=int, default=plan["vacancies"], metavar="N",
                         help="structures with random atoms removed, then rattled (default 0)")
    vacancy.add_argument("--max-vacancies", type=float, default=plan["max_vacancies"], metavar="K",
                         help="atoms removed per structure, drawn from 1..K: a count (K >= 1, e.g. 2) or a "
                              "fraction of the atoms (0 < K < 1, e.g. 0.05, rounded down, at least 1) "
                              "(default %(default)s)")

    relax = sample.add_argument_group("rattle-relax-repeat (needs --teacher)")
    relax.add_argument("--relax", type=int, default=plan["relax"], metavar="N",
                       help="frames of partial relaxations of rattled parents; parents are the seeds and "
                            "earlier relaxed ends, chosen with Boltzmann weights of their energy per atom "
                            "(default 0)")
    relax.add_argument("--relax-steps", type=int, default=plan["relax_steps"], metavar="S",
                       help="optimiser steps per relaxation, each a frame (default %(default)s)")
    relax.add_argument("--relax-fmax", type=float, default=plan["relax_fmax"], metavar="eV/Å",
                       help="stop a relaxation once every force is below this, eV/Å (default %(default)s)")
    relax.add_argument("--relax-temperature", type=float, default=plan["relax_temperature"], metavar="K",
                       help="temperature of the Boltzmann choice of parents, K (default %(default)s)")
    relax.add_argument("--relax-optimizer", default=plan["relax_optimizer"], metavar="NAME",
                       help="ASE optimiser, FIRE or BFGS (default %(default)s)")

    md = sample.add_argument_group("teacher MD (needs --teacher)")
    md.add_argument("--md-temperatures", type=float, nargs="+", default=plan["md_temperatures"], metavar="K",
                    help="run Langevin MD at each temperature, K, e.g. 300 1000 (default: no MD)")
    md.add_argument("--md-frames", type=int, default=plan["md_frames"], metavar="N",
                    help="frames kept per temperature, shared among the seeds (default %(default)s)")
    md.add_argument("--md-interval", type=int, default=plan["md_interval"], metavar="STEPS",
                    help="MD steps between kept frames (default %(default)s)")
    md.add_argument("--md-equilibration", type=int, default=plan["md_equilibration"], metavar="STEPS",
                    help="MD steps before the first kept frame (default %(default)s)")
    md.add_argument("--md-timestep", type=float, default=plan["md_timestep"], metavar="FS",
                    help="MD time step, fs (default %(default)s)")
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
    label.add_argument("--chunk-size", type=_positive, default=64, metavar="N",
                       help="structures per chunk (default 64); finished chunks are kept in OUT.parts/, "
                            "so that rerunning a killed command labels only what is missing")
    label.add_argument("--workers", type=_positive, default=1, metavar="N",
                       help="label in N processes (ASE-calculator teachers; torch teachers such as "
                            "potential:PATH run in one; default 1)")
    label.add_argument("--shard", default=None, metavar="I/N",
                       help="label only the structures k of the input with k %% N == I into a new OUT; "
                            "join the N shard files with `mlip-distill merge`")
    label.set_defaults(run=_label)

    merge = commands.add_parser("merge", help="join the label files of the shards of one input (label --shard)")
    merge.add_argument("out", help="label file to write (must not exist)")
    merge.add_argument("shards", nargs="+", help="the label files of every shard, in any order")
    merge.set_defaults(run=_merge)

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
    train.add_argument("--sanity", action="store_true",
                       help="instead of training, run the checks worth running before a long job (loss falls, "
                            "gradients, validation, exact resume, batching, memory; about 130 steps) and print a "
                            "pass/fail table; exit status 1 when a check fails")
    train.add_argument("overrides", nargs="*", help="e.g. data.path=labels.h5 model=painn trainer.max_epochs=50")
    train.set_defaults(run=_train)

    evaluate = commands.add_parser("eval", help="errors of a potential against the labels of a data file")
    evaluate.add_argument("potential", help="potential package folder")
    evaluate.add_argument("data", help="label file (.h5) or ASE file with labels")
    evaluate.add_argument("--source", action="append", help="label source(s) to compare with (default all)")
    evaluate.add_argument("--batch-size", type=int, default=16, help="structures per batch (default 16)")
    evaluate.add_argument("--json", default=None, help="also write the errors to this JSON file")
    evaluate.set_defaults(run=_eval)

    export = commands.add_parser(
        "export", help="a training run's student as a potential package (weights, compiled model, model card)",
        description="Write the potential package of a training run: weights.safetensors, potential.json, "
                    "model.pt2 (the compiled student), MODEL_CARD.md and the run's curves.csv/curves.png.",
    )
    export.add_argument("run_dir", help="training run folder (runs/<experiment>/<id>) or a potential package")
    export.add_argument("--out", required=True, help="package folder to write, e.g. potentials/cu-nequip (replaced)")
    export.add_argument("--int8", action="store_true",
                        help="store linear and tensor-product weights as int8 with per-channel scales "
                             "(smaller file; computes in float32, so no faster)")
    export.add_argument("--no-compiled", action="store_true", help="leave out the compiled model (model.pt2)")
    export.set_defaults(run=_export)

    md = commands.add_parser(
        "md", help="MD validation of a student against its teacher: stability, drift, structure, speed",
        description="Run the student and the teacher in one process from the same structure: Langevin NVT at "
                    "each temperature (one teacher run, --seeds student runs), NVE from the end of those runs, "
                    "pair distributions and speeds. Writes report.md, report.json and PNG plots to --out.",
    )
    md.add_argument("potential", help="potential package folder")
    md.add_argument("--structures", required=True,
                    help="starting structure: the first frame of an ASE-readable file, or a crystal such as "
                         "bulk:Cu:fcc:a=3.61:cubic:3x3x3")
    md.add_argument("--teacher", required=True,
                    help="teacher spec: emt, potential:PATH, sevennet:7net-0, xtb:GFN2, package.module:Class(...)")
    md.add_argument("--out", required=True, help="folder for report.md, report.json and the plots")
    md.add_argument("--temperatures", type=_positive_float, nargs="+", default=[300.0], metavar="K",
                    help="Langevin temperatures, K (default 300)")
    md.add_argument("--seeds", type=_positive, default=3, help="student NVT runs per temperature (default 3)")
    length = md.add_mutually_exclusive_group()
    length.add_argument("--ps", type=_positive_float, default=2.0, help="length of each NVT run, ps (default 2)")
    length.add_argument("--steps", type=_positive, default=None, help="length of each NVT run in steps, instead of --ps")
    md.add_argument("--nve-ps", type=_positive_float, default=None, help="length of each NVE run, ps (default: as NVT)")
    md.add_argument("--timestep", type=_positive_float, default=None, metavar="FS",
                    help="time step, fs (default 0.5 with hydrogen in the structure, else 2)")
    md.add_argument("--friction", type=_positive_float, default=0.01, metavar="PER_FS",
                    help="Langevin friction, 1/fs (default 0.01)")
    md.add_argument("--temperature-band", type=_positive_float, default=0.5, metavar="FRACTION",
                    help="a run fails when its temperature averaged over 100 fs leaves target × (1 ± this) "
                         "(default 0.5)")
    md.add_argument("--min-distance-fraction", type=_positive_float, default=0.75, metavar="FRACTION",
                    help="a run fails when two atoms come closer than this times the shortest distance of "
                         "their species pair in the teacher's run (default 0.75)")
    md.add_argument("--max-bond-stretch", type=_positive_float, default=0.5, metavar="Å",
                    help="molecules: a run fails when a starting bond grows by more than this, Å (default 0.5)")
    md.add_argument("--rdf-max", type=_positive_float, default=None, metavar="Å",
                    help="largest distance of the pair distributions, Å (default 6 for periodic systems, "
                         "1.2 × the molecule's largest distance)")
    md.add_argument("--threads", type=_positive, default=None,
                    help="torch threads for both calculators (default: torch's choice); stated in the report")
    md.add_argument("--device", type=_device, default="cpu",
                    help="where the student runs (default cpu); cuda keeps its neighbour list and steps on the GPU "
                         "(CUDA graphs up to 20,000 atoms); the teacher runs where its spec puts it")
    md.add_argument("--compile", action="store_true",
                    help="compile the student's network with torch.compile before the runs (tens of seconds "
                         "once, then 1.2-2x faster steps on the CPU; on a GPU inside the CUDA graph, about a "
                         "minute and a half once: for long runs)")
    md.set_defaults(run=_md)

    defaults = _distill_defaults()
    distill = commands.add_parser("distill", help=f"sample, label, train, evaluate and run MD (default: {DEMO})")
    distill.add_argument("--seeds", default=defaults.seeds, help=f"seed structures (default {defaults.seeds})")
    distill.add_argument("--teacher", default=defaults.teacher, help=f"teacher spec (default {defaults.teacher})")
    distill.add_argument("--sample", type=_plan_item, action="append", default=[], metavar="KEY=VALUE",
                         help="change one setting of the sampling plan (the options of `mlip-distill sample`, "
                              "with underscores), e.g. --sample rattle_strain=40 --sample md_temperatures=[600,1200]; "
                              f"default plan: {', '.join(f'{k}={v}' for k, v in defaults.sampling.items())}")
    distill.add_argument("--n-valid", type=int, default=defaults.n_valid,
                         help=f"held-out structures (default {defaults.n_valid})")
    distill.add_argument("--md-structure", default=defaults.md_structure,
                         help=f"structure of the closing MD, student and teacher (default {defaults.md_structure})")
    distill.add_argument("--md-steps", type=int, default=defaults.md_steps,
                         help=f"student MD steps (default {defaults.md_steps})")
    distill.add_argument("--teacher-md-steps", type=int, default=defaults.teacher_md_steps,
                         help=f"teacher MD steps, for its speed (default {defaults.teacher_md_steps})")
    distill.add_argument("--temperature", type=float, default=defaults.temperature, help="MD temperature, K")
    distill.add_argument("--experiment", default=defaults.experiment,
                         help=f"training experiment config (default {defaults.experiment})")
    distill.add_argument("--rounds", type=int, default=defaults.rounds,
                         help="on-policy rounds after the first training: student MD, the frames a committee "
                              f"of students disagrees on most labelled by the teacher, retraining (default {defaults.rounds})")
    distill.add_argument("--committee", type=int, default=defaults.committee_size, metavar="K",
                         help="students per committee, differing only by seed, when --rounds > 0 "
                              f"(default {defaults.committee_size})")
    distill.add_argument("--on-policy-frames", type=int, default=defaults.on_policy_frames, metavar="M",
                         help=f"frames added per on-policy round (default {defaults.on_policy_frames})")
    distill.add_argument("--root", default="runs", help="where run folders go (default runs/)")
    distill.add_argument("overrides", nargs="*", help="training overrides, e.g. model=painn")
    distill.set_defaults(run=_distill)

    hpo = commands.add_parser(
        "hpo", help="hyperparameter search over training settings (Optuna TPE or grid; resumable, parallel)",
        description="Search training settings with Optuna. Every trial is a training run in OUT/trials/; the "
                    "study lives in OUT/study.db, so the same command resumes an interrupted search, and the "
                    "same command in several processes shares the work. Results: OUT/trials.csv, best.yaml, "
                    "history.png, importance.png, SUMMARY.md.",
        epilog=_search_list(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    hpo.add_argument("--search", default="default",
                     help="a search of the hpo config group (its space, objective, sampler and budgets; default default)")
    hpo.add_argument("--out", default=None, help="the search's folder (default runs/hpo/<search>)")
    hpo.add_argument("--config-dir", default=None, help="a folder of your own config groups, searched first")
    hpo.add_argument("overrides", nargs="*",
                     help="hpo.KEY=VALUE changes the search (hpo.n_trials=40, hpo.sampler.name=grid, "
                          "hpo.space.lr.high=0.05, ~hpo.space.cutoff, "
                          "'hpo.objective=val_forces_mae_mev_per_A+0.5*val_energy_mae_mev_per_atom'); anything "
                          "else is a training override of every trial (data.path=labels.h5 experiment=cu_emt)")
    hpo.set_defaults(run=_hpo)
    return parser


def _plan_item(text: str) -> tuple[str, object]:
    """An argparse type: ``KEY=VALUE`` of a sampling plan, the value read as YAML (numbers, lists)."""
    import yaml

    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, not {text!r}")
    parsed = yaml.safe_load(value)
    return key.strip(), tuple(parsed) if isinstance(parsed, list) else parsed


def _count(text: str) -> int:
    """An argparse type: a whole number, 0 or more."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, not {value}")
    return value


def _positive(text: str) -> int:
    """An argparse type: a whole number, 1 or more."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _device(text: str) -> str:
    """An argparse type: ``cpu``, or ``cuda`` where torch finds a CUDA device."""
    if text not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"must be cpu or cuda, not {text!r}")
    if text == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError("torch finds no CUDA device on this machine")
    return text


def _positive_float(text: str) -> float:
    """An argparse type: a number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
    return value


def _config_group_list() -> str:
    from .configs import config_groups

    lines = ["config groups (choose with group=option, e.g. model=painn):"]
    lines += [f"  {group:<10} {', '.join(options)}" for group, options in config_groups().items()]
    return "\n".join(lines)


def _search_list() -> str:
    from .configs import config_groups

    return "searches (--search NAME): " + ", ".join(config_groups().get("hpo", [])) + "\n"


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
    from .hpo.errors import SearchError
    from .training.run import ConfigError

    return (DataError, PotentialError, SamplingError, TeacherError, ConfigError, SearchError, FileNotFoundError,
            HydraException, OmegaConfBaseException)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.environ.get("MLIP_DISTILL_DEBUG"):
        return args.run(args) or 0
    try:
        return args.run(args) or 0  # a command returns a non-zero status when its checks fail
    except _user_errors() as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"mlip-distill {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
