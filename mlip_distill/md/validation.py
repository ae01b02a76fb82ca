"""MD validation of a student against its teacher, in one process: stability (Langevin NVT,
several seeds), energy conservation (NVE), structure (pair distributions) and speed, at each
temperature.

At each temperature the teacher runs first (one seed): its run gives the shortest contacts the
student must respect and the reference pair distributions. Each student seed then starts from the
same structure with its own velocities and random forces. The NVE runs start from the end of the
teacher's NVT run and of the first student run that stayed stable (from fresh velocities when
none did).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.constraints import FixCom
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet

from .conservation import drift_ratio, energy_drift
from .langevin import langevin_dynamics
from .stability import StabilityCriteria, StabilityMonitor
from .structure import PairDistribution, all_distances, distribution_mae, distribution_unit, pair_distribution
from .trajectory import Trace, run_monitored


@dataclass(frozen=True)
class MDSettings:
    """What :func:`validate_md` runs.

    Attributes:
        temperatures: K.  seeds: student NVT runs per temperature.
        steps: steps of every NVT run.  nve_steps: steps of each NVE run (None: ``steps``).
        timestep_fs: fs; None picks 0.5 fs when the structure has hydrogen, else 2 fs.
        friction_per_fs: Langevin friction, 1/fs.
        warmup: first steps of each run left out of its speed.
        rdf_max: largest distance of the pair distributions, Å; None: 6 Å for periodic systems,
            1.2 times the largest interatomic distance of a molecule.
        rdf_bin: bin width, Å.
        equilibration_fraction: the first part of each NVT run left out of the pair distributions.
        frames_per_run: frames kept per run (for the pair distributions).
    """

    temperatures: tuple[float, ...] = (300.0,)
    seeds: int = 3
    steps: int = 2000
    nve_steps: int | None = None
    timestep_fs: float | None = None
    friction_per_fs: float = 0.01
    warmup: int = 10
    criteria: StabilityCriteria = field(default_factory=StabilityCriteria)
    rdf_max: float | None = None
    rdf_bin: float = 0.05
    equilibration_fraction: float = 0.2
    frames_per_run: int = 200

    def timestep_for(self, atoms: Atoms) -> float:
        """The MD time step for ``atoms``, fs."""
        if self.timestep_fs is not None:
            return self.timestep_fs
        return 0.5 if 1 in atoms.numbers else 2.0

    def rdf_max_for(self, atoms: Atoms) -> float:
        """Largest distance of the pair distributions of ``atoms``, Å."""
        if self.rdf_max is not None:
            return self.rdf_max
        return 6.0 if atoms.pbc.any() else 1.2 * float(all_distances(atoms).max())


def speed(traces: list[Trace]) -> dict[str, float | None]:
    """Steps/s, atom-steps/s and ns/day over ``traces`` (one calculator, warm-up excluded)."""
    steps, seconds = sum(t.timed_steps for t in traces), sum(t.seconds for t in traces)
    if not steps or seconds <= 0:
        return {"steps_per_s": None, "atom_steps_per_s": None, "ns_per_day": None}
    steps_per_s = steps / seconds
    return {
        "steps_per_s": steps_per_s,
        "atom_steps_per_s": steps_per_s * traces[0].n_atoms,
        "ns_per_day": steps_per_s * traces[0].timestep_fs * 86400 * 1e-6,
    }


@dataclass
class TemperatureResult:
    """Every run at one temperature (K) and the pair distributions of the teacher and student
    (None when no run outlived the equilibration part)."""

    temperature: float
    teacher_nvt: Trace
    student_nvt: list[Trace]
    teacher_nve: Trace
    student_nve: Trace
    teacher_rdf: PairDistribution | None
    student_rdf: PairDistribution | None
    nve_start: str
    run_ps: float

    def summary(self) -> dict[str, Any]:
        """The numbers of report.json at this temperature (units in the key names)."""
        student_speed, teacher_speed = speed(self.student_nvt), speed([self.teacher_nvt])
        ratio = (student_speed["steps_per_s"] / teacher_speed["steps_per_s"]
                 if student_speed["steps_per_s"] and teacher_speed["steps_per_s"] else None)
        return {
            "run_ps": self.run_ps,
            "stable_ps": [_stable_ps(t) for t in self.student_nvt],
            "failures": [t.failure for t in self.student_nvt],
            "teacher_stable_ps": _stable_ps(self.teacher_nvt),
            "teacher_failure": self.teacher_nvt.failure,
            "mean_temperature_K": [float(t.temperature.mean()) for t in self.student_nvt],
            "teacher_mean_temperature_K": float(self.teacher_nvt.temperature.mean()),
            "drift_mev_per_atom_per_ps": _drift(self.student_nve),
            "drift_ratio": _ratio(self.student_nve),
            "nve_ps": self.student_nve.simulated_ps,
            "nve_failure": self.student_nve.failure,
            "nve_start": self.nve_start,
            "teacher_drift_mev_per_atom_per_ps": _drift(self.teacher_nve),
            "teacher_drift_ratio": _ratio(self.teacher_nve),
            "rdf_mae": (distribution_mae(self.student_rdf, self.teacher_rdf)
                        if self.student_rdf and self.teacher_rdf else None),
            **{f"student_{key}": value for key, value in student_speed.items()},
            **{f"teacher_{key}": value for key, value in teacher_speed.items()},
            "speed_ratio": ratio,
        }


@dataclass
class MDValidation:
    """The outcome of :func:`validate_md`."""

    formula: str
    n_atoms: int
    periodic: bool
    timestep_fs: float
    threads: int
    settings: MDSettings
    results: list[TemperatureResult]

    def summary(self) -> dict[str, Any]:
        """report.json: settings, then the numbers per temperature (keys such as ``"300"``)."""
        return {
            "structure": {"formula": self.formula, "n_atoms": self.n_atoms, "periodic": self.periodic},
            "timestep_fs": self.timestep_fs,
            "threads": self.threads,
            "settings": asdict(self.settings),
            "rdf_unit": distribution_unit(self.periodic),
            "temperatures": {f"{r.temperature:g}": r.summary() for r in self.results},
        }


def validate_md(
    atoms: Atoms,
    student: Calculator,
    teacher: Calculator,
    settings: MDSettings = MDSettings(),
    on_step: Callable[[], None] | None = None,
) -> MDValidation:
    """Stability, energy conservation, structure and speed of ``student`` against ``teacher``,
    starting every run from ``atoms`` (not modified). ``on_step`` is called after every MD step
    (for a progress bar)."""
    timestep = settings.timestep_for(atoms)
    nve_steps = settings.nve_steps or settings.steps
    run = _Runner(settings, timestep, on_step)
    rdf_max = settings.rdf_max_for(atoms)
    results = []
    for temperature in settings.temperatures:
        teacher_nvt, teacher_end, monitor = run.nvt(atoms, teacher, temperature, seed=0, reference=None)
        reference = monitor.shortest_seen
        student_runs = [run.nvt(atoms, student, temperature, seed, reference) for seed in range(1, settings.seeds + 1)]
        student_nvt = [trace for trace, _, _ in student_runs]
        stable_ends = [end for trace, end, _ in student_runs if trace.failure is None]
        nve_start = "end of the first stable student NVT run" if stable_ends else "starting structure, fresh velocities"
        student_start = stable_ends[0] if stable_ends else _with_velocities(atoms, temperature, seed=0)
        results.append(TemperatureResult(
            temperature=temperature,
            teacher_nvt=teacher_nvt,
            student_nvt=student_nvt,
            teacher_nve=run.nve(teacher_end, teacher, temperature, nve_steps, reference=None),
            student_nve=run.nve(student_start, student, temperature, nve_steps, reference),
            teacher_rdf=_distribution([teacher_nvt], settings, rdf_max),
            student_rdf=_distribution(student_nvt, settings, rdf_max),
            nve_start=nve_start,
            run_ps=settings.steps * timestep / 1000.0,
        ))
    return MDValidation(
        formula=atoms.get_chemical_formula(), n_atoms=len(atoms), periodic=bool(atoms.pbc.any()),
        timestep_fs=timestep, threads=results[0].teacher_nvt.threads, settings=settings, results=results,
    )


class _Runner:
    """Starts monitored NVT and NVE runs with the settings' time step and intervals."""

    def __init__(self, settings: MDSettings, timestep_fs: float, on_step: Callable[[], None] | None) -> None:
        self.settings, self.timestep_fs, self.on_step = settings, timestep_fs, on_step

    def nvt(self, atoms: Atoms, calculator: Calculator, temperature: float, seed: int,
            reference: dict | None) -> tuple[Trace, Atoms, StabilityMonitor]:
        atoms = atoms.copy()
        atoms.calc = calculator
        dynamics = langevin_dynamics(atoms, temperature, self.timestep_fs, self.settings.friction_per_fs, seed)
        return self._run(atoms, dynamics, temperature, self.settings.steps, reference, thermostat=True)

    def nve(self, start: Atoms, calculator: Calculator, temperature: float, steps: int, reference: dict | None) -> Trace:
        atoms = start.copy()
        atoms.calc = calculator
        atoms.set_constraint(FixCom())
        dynamics = VelocityVerlet(atoms, timestep=self.timestep_fs * units.fs)
        return self._run(atoms, dynamics, temperature, steps, reference, thermostat=False)[0]

    def _run(self, atoms, dynamics, temperature, steps, reference, thermostat) -> tuple[Trace, Atoms, StabilityMonitor]:
        monitor = StabilityMonitor(atoms, temperature, self.timestep_fs, self.settings.criteria, reference,
                                   lower_bound=thermostat)
        trace = run_monitored(
            atoms, dynamics, steps, monitor, warmup=self.settings.warmup,
            frame_interval=max(1, steps // self.settings.frames_per_run), on_step=self.on_step,
        )
        end = atoms.copy()
        end.set_constraint()
        return trace, end, monitor


def _with_velocities(atoms: Atoms, temperature: float, seed: int) -> Atoms:
    atoms = atoms.copy()
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=np.random.default_rng(seed))
    return atoms


def _distribution(traces: list[Trace], settings: MDSettings, r_max: float) -> PairDistribution | None:
    """Pair distributions over the frames of ``traces`` after the equilibration part; None
    when there are none."""
    equilibrated = settings.equilibration_fraction * settings.steps * traces[0].timestep_fs / 1000.0
    frames = [frame for trace in traces for frame, time in zip(trace.frames, trace.frame_times_ps) if time > equilibrated]
    return pair_distribution(frames, r_max, settings.rdf_bin) if frames else None


def _stable_ps(trace: Trace) -> float:
    """Picoseconds before the run failed (all of it when it did not)."""
    return trace.simulated_ps if trace.failure is None else float(trace.times_ps[-1] - trace.timestep_fs / 1000.0)


def _drift(trace: Trace) -> float | None:
    return energy_drift(trace.times_ps, trace.total_energy, trace.n_atoms) if len(trace.times_ps) > 2 else None


def _ratio(trace: Trace) -> float | None:
    return drift_ratio(trace.times_ps, trace.total_energy, trace.kinetic_energy) if len(trace.times_ps) > 2 else None
