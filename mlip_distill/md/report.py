"""The files of an MD validation (report.json, report.md, PNG plots) and its terminal summary."""

from __future__ import annotations

import json
from pathlib import Path

from matplotlib.figure import Figure

from ..teachers.registry import POTENTIAL_PREFIX
from .validation import MDValidation

PLOTS = {"temperature": "temperature.png", "energy": "nve_energy.png", "rdf": "rdf.png"}


def write_report(
    validation: MDValidation, out_dir: str | Path, student: str, teacher: str, student_device: str = "cpu"
) -> list[Path]:
    """Write report.json, report.md and the plots into ``out_dir`` (created); each file goes to a
    temporary name first and is renamed when complete. ``student``, ``teacher``: the student's
    potential folder and the teacher's spec, named in the report by :func:`report_path`;
    ``student_device``: where the student ran ("cpu", "cuda"). Returns the paths written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if teacher.startswith(POTENTIAL_PREFIX):
        teacher = POTENTIAL_PREFIX + report_path(teacher.removeprefix(POTENTIAL_PREFIX).strip())
    summary = {"student": report_path(student), "student_device": student_device, "teacher": teacher,
               **validation.summary()}
    written = [
        _write_text(out_dir / "report.json", json.dumps(summary, indent=2) + "\n"),
        _write_text(out_dir / "report.md", markdown(summary)),
    ]
    for kind, draw in (("temperature", _temperature_figure), ("energy", _energy_figure), ("rdf", _rdf_figure)):
        written.append(_save(draw(validation), out_dir / PLOTS[kind]))
    return written


def report_path(path: str | Path) -> str:
    """How a report names ``path``: relative to the git repository that holds it, so that a
    committed report names no folder of the machine it ran on; outside a repository, as given when
    relative, else by its name alone."""
    path = Path(path)
    resolved = path.resolve()
    root = next((folder for folder in resolved.parents if (folder / ".git").exists()), None)
    if root is not None:
        return resolved.relative_to(root).as_posix()
    return path.name if path.is_absolute() else path.as_posix()


def markdown(summary: dict) -> str:
    """report.md from the report.json dictionary."""
    structure, settings = summary["structure"], summary["settings"]
    criteria = settings["criteria"]
    kind = "periodic" if structure["periodic"] else "molecule"
    lines = [
        f"# MD validation: {structure['formula']} ({structure['n_atoms']} atoms, {kind})",
        "",
        f"Student `{summary['student']}` (on {summary['student_device']}) against teacher `{summary['teacher']}`, in one process on "
        f"{summary['threads']} torch threads. Time step {summary['timestep_fs']:g} fs; Langevin friction "
        f"{settings['friction_per_fs']:g}/fs; {settings['seeds']} student seeds and one teacher run per "
        f"temperature; speeds leave out the first {settings['warmup']} steps of each run.",
        "",
        f"A run fails when its temperature, averaged over {criteria['temperature_window_fs']:g} fs, leaves "
        f"±{100 * criteria['temperature_band']:.0f} % of the target, when two atoms of a species pair come "
        f"closer than {criteria['min_distance_fraction']:g} × the teacher's shortest distance of that pair"
        + ("" if structure["periodic"] else
           f", or when a bond of the starting molecule stretches by more than {criteria['max_bond_stretch']:g} Å")
        + ", or when the energy is not finite.",
        "",
        "| T (K) | stable ps per student seed | teacher stable ps | NVE drift, meV/atom/ps (student / teacher) "
        "| drift / std(KE) (student / teacher) | RDF MAE | steps/s (student / teacher) | atom-steps/s (student) "
        "| ns/day (student / teacher) | speed ratio |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for temperature, r in summary["temperatures"].items():
        stable = ", ".join(f"{ps:.2f}" for ps in r["stable_ps"])
        lines.append(
            f"| {temperature} | {stable} (of {r['run_ps']:g}) | {r['teacher_stable_ps']:.2f} "
            f"| {_num(r['drift_mev_per_atom_per_ps'])} / {_num(r['teacher_drift_mev_per_atom_per_ps'])} "
            f"| {_num(r['drift_ratio'])} / {_num(r['teacher_drift_ratio'])} | {_num(r['rdf_mae'])} "
            f"| {_num(r['student_steps_per_s'])} / {_num(r['teacher_steps_per_s'])} "
            f"| {_num(r['student_atom_steps_per_s'])} | {_num(r['student_ns_per_day'])} / {_num(r['teacher_ns_per_day'])} "
            f"| {_num(r['speed_ratio'])} |"
        )
        notes += [f"- {temperature} K, student seed {k + 1}: {reason}" for k, reason in enumerate(r["failures"]) if reason]
        if r["teacher_failure"]:
            notes.append(f"- {temperature} K, teacher: {r['teacher_failure']} (the criteria may be too strict)")
        if r["nve_failure"]:
            notes.append(f"- {temperature} K, student NVE run stopped: {r['nve_failure']}")
        notes.append(f"- {temperature} K: the student's NVE run started from the {r['nve_start']}")
    lines += ["", f"RDF MAE: mean absolute difference of the {summary['rdf_unit']} curves over species pairs and bins.",
              "", "## Notes", "", *notes, ""]
    lines += [f"![{kind}]({name})" for kind, name in PLOTS.items()]
    return "\n".join(lines) + "\n"


def terminal_summary(summary: dict) -> str:
    """A few lines per temperature for the terminal."""
    structure = summary["structure"]
    lines = [f"MD validation of {structure['formula']} ({structure['n_atoms']} atoms), time step "
             f"{summary['timestep_fs']:g} fs, {summary['threads']} threads"]
    for temperature, r in summary["temperatures"].items():
        stable = " ".join(f"{ps:.2f}" for ps in r["stable_ps"])
        lines += [
            f"{temperature} K  stable ps per seed: {stable} of {r['run_ps']:g} (teacher {r['teacher_stable_ps']:.2f})",
            f"        NVE drift {_num(r['drift_mev_per_atom_per_ps'])} meV/atom/ps, ratio {_num(r['drift_ratio'])} "
            f"(teacher {_num(r['teacher_drift_mev_per_atom_per_ps'])}, {_num(r['teacher_drift_ratio'])});  "
            f"RDF MAE {_num(r['rdf_mae'])}",
            f"        speed {_num(r['student_steps_per_s'])} vs {_num(r['teacher_steps_per_s'])} steps/s "
            f"(student/teacher {_num(r['speed_ratio'])}x), {_num(r['student_ns_per_day'])} ns/day",
        ]
        lines += [f"        seed {k + 1} failed: {reason}" for k, reason in enumerate(r["failures"]) if reason]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    if value is None:
        return "–"
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _temperature_figure(validation: MDValidation) -> Figure:
    figure = Figure(figsize=(8, 2.8 * len(validation.results)), layout="constrained")
    axes = figure.subplots(len(validation.results), 1, squeeze=False)[:, 0]
    band = validation.settings.criteria.temperature_band
    for ax, result in zip(axes, validation.results):
        ax.axhspan((1 - band) * result.temperature, (1 + band) * result.temperature, color="0.92", label="allowed band")
        ax.plot(result.teacher_nvt.times_ps, result.teacher_nvt.temperature, color="k", lw=0.8, label="teacher")
        for k, trace in enumerate(result.student_nvt):
            ax.plot(trace.times_ps, trace.temperature, lw=0.8, label=f"student seed {k + 1}")
        ax.set(title=f"Langevin NVT, target {result.temperature:g} K", xlabel="time (ps)", ylabel="temperature (K)")
        ax.set_ylim(0, 2 * (1 + band) * result.temperature)
        ax.legend(fontsize="small", ncol=2)
    return figure


def _energy_figure(validation: MDValidation) -> Figure:
    figure = Figure(figsize=(8, 2.8 * len(validation.results)), layout="constrained")
    axes = figure.subplots(len(validation.results), 1, squeeze=False)[:, 0]
    for ax, result in zip(axes, validation.results):
        for name, trace, style in (("teacher", result.teacher_nve, "k"), ("student", result.student_nve, "C0")):
            if len(trace.times_ps):
                energy = 1000 * (trace.total_energy - trace.total_energy[0]) / trace.n_atoms
                ax.plot(trace.times_ps, energy, color=style, lw=0.8, label=name)
        ax.set(title=f"NVE from {result.temperature:g} K", xlabel="time (ps)",
               ylabel="total energy − start (meV/atom)")
        ax.legend(fontsize="small")
    return figure


def _rdf_figure(validation: MDValidation) -> Figure:
    results = validation.results
    pairs = next((list(r.teacher_rdf.curves) for r in results if r.teacher_rdf), [])
    figure = Figure(figsize=(3.2 * max(1, len(pairs)), 2.6 * len(results)), layout="constrained")
    axes = figure.subplots(len(results), max(1, len(pairs)), squeeze=False)
    for row, result in zip(axes, results):
        for ax, pair in zip(row, pairs):
            for name, distribution, style in (("teacher", result.teacher_rdf, "k--"), ("student", result.student_rdf, "C0-")):
                if distribution is not None:
                    ax.plot(distribution.r, distribution.curves[pair], style, lw=1, label=name)
            ax.set(title=f"{pair}, {result.temperature:g} K", xlabel="r (Å)",
                   ylabel="g(r)" if validation.periodic else "density (1/Å)")
            ax.legend(fontsize="small")
    return figure


def _write_text(path: Path, text: str) -> Path:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.replace(path)
    return path


def _save(figure: Figure, path: Path) -> Path:
    temporary = path.with_name(f".{path.stem}.tmp{path.suffix}")
    figure.savefig(temporary, dpi=110)
    temporary.replace(path)
    return path
