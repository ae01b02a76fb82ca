"""MD validation: each metric on a case whose answer is known, and `mlip-distill md` end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.io import write

from mlip_distill.cli import main
from mlip_distill.md.conservation import drift_ratio, energy_drift
from mlip_distill.md.report import report_path
from mlip_distill.md.stability import StabilityCriteria, StabilityMonitor
from mlip_distill.md.structure import pair_distribution, shortest_distances
from mlip_distill.md.validation import MDSettings, validate_md
from mlip_distill.training.run import compose_config, train

A_CU = 3.61


def copper(repeat: int = 2):
    return bulk("Cu", "fcc", a=A_CU, cubic=True).repeat(repeat)


class HeatingEMT(EMT):
    """A broken potential: EMT plus a force along every atom's velocity, which pumps energy in
    faster than the thermostat takes it out (rate 1/50 fs against a friction of 1/100 fs)."""

    rate_per_fs = 0.02

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        super().calculate(atoms, properties, system_changes)
        from ase import units

        velocities = self.atoms.get_velocities()
        self.results["forces"] = self.results["forces"] + (
            self.rate_per_fs / units.fs * self.atoms.get_masses()[:, None] * velocities
        )


def test_drift_is_the_slope_of_the_total_energy_per_atom():
    rng = np.random.default_rng(0)
    times = np.linspace(0.0, 5.0, 2001)  # ps
    n_atoms, slope = 10, 0.04  # eV/ps for the whole system
    kinetic = 1.0 + 0.2 * np.sin(40 * times)  # eV; std 0.2/sqrt(2)
    total = -30.0 + slope * times + rng.normal(0.0, 0.005, times.shape)
    assert energy_drift(times, total, n_atoms) == pytest.approx(1000 * slope / n_atoms, rel=0.02)
    assert drift_ratio(times, total, kinetic) == pytest.approx(slope * 5.0 / (0.2 / np.sqrt(2)), rel=0.02)
    assert abs(energy_drift(times, total - slope * times, n_atoms)) < 0.05


def test_rdf_of_a_perfect_fcc_crystal_peaks_at_its_neighbour_shells():
    crystal = copper(3)
    bin_width = 0.02
    rdf = pair_distribution([crystal], r_max=5.3, bin_width=bin_width)
    g = rdf.curves["Cu-Cu"]
    shells = {A_CU / np.sqrt(2): 12, A_CU: 6, A_CU * np.sqrt(1.5): 24, A_CU * np.sqrt(2): 12}
    occupied = rdf.r[g > 0]
    # every occupied bin is one neighbour shell, and every shell is occupied
    assert all(min(abs(r - shell) for shell in shells) < bin_width for r in occupied)
    assert all(min(abs(r - shell) for r in occupied) < bin_width for shell in shells)
    density = len(crystal) / crystal.get_volume()
    counts = 4 * np.pi * rdf.r**2 * density * g * bin_width
    for shell, coordination in shells.items():
        around = np.abs(rdf.r - shell) < 0.1
        assert counts[around].sum() == pytest.approx(coordination, rel=0.02)


def test_distance_density_of_a_molecule_integrates_to_one_and_peaks_at_its_bonds():
    methane = molecule("CH4")
    density = pair_distribution([methane], r_max=3.0, bin_width=0.01)
    for curve in density.curves.values():
        assert curve.sum() * 0.01 == pytest.approx(1.0)
    ch = density.curves["H-C"]
    assert density.r[np.argmax(ch)] == pytest.approx(methane.get_distance(0, 1), abs=0.01)


def test_atoms_closer_than_the_teachers_shortest_contact_fail():
    crystal = copper(2)
    monitor = StabilityMonitor(crystal, 300.0, 2.0, StabilityCriteria(check_interval=1),
                               reference_shortest=shortest_distances(crystal))
    assert monitor(crystal, 1, 300.0, -1.0) is None
    squeezed = crystal.copy()
    squeezed.positions[1] = squeezed.positions[0] + [1.2, 0.0, 0.0]
    assert "Cu-Cu atoms 1.20 Å apart" in monitor(squeezed, 2, 300.0, -1.0)


def test_a_stretched_bond_of_a_molecule_fails():
    methane = molecule("CH4")
    monitor = StabilityMonitor(methane, 300.0, 0.5, StabilityCriteria(check_interval=1))
    stretched = methane.copy()
    bond = stretched.positions[1] - stretched.positions[0]
    stretched.positions[1] += 0.3 * bond / np.linalg.norm(bond)
    assert monitor(stretched, 1, 300.0, -1.0) is None
    stretched.positions[1] += 0.3 * bond / np.linalg.norm(bond)
    assert "bond 0-1 stretched by 0.60 Å" in monitor(stretched, 2, 300.0, -1.0)


def test_a_run_whose_temperature_explodes_is_unstable():
    settings = MDSettings(temperatures=(300.0,), seeds=1, steps=150, nve_steps=20)
    result = validate_md(copper(2), HeatingEMT(), EMT(), settings).summary()["temperatures"]["300"]
    assert result["stable_ps"][0] < result["run_ps"]
    assert result["failures"][0].startswith("temperature ran away")
    assert result["teacher_stable_ps"] == pytest.approx(result["run_ps"])


def test_a_student_identical_to_its_teacher_is_stable_conserves_energy_and_matches_its_rdf():
    settings = MDSettings(temperatures=(600.0,), seeds=2, steps=150, nve_steps=150, timestep_fs=1.0)
    result = validate_md(copper(2), EMT(), EMT(), settings).summary()["temperatures"]["600"]
    assert result["stable_ps"] == pytest.approx([0.15, 0.15])
    assert result["failures"] == [None, None]
    assert abs(result["drift_ratio"]) < 0.05
    # two seeds against one teacher run, 0.12 ps each after equilibration: sampling noise only
    assert result["rdf_mae"] < 0.15
    assert result["student_steps_per_s"] > 0 and result["teacher_steps_per_s"] > 0


@pytest.fixture(scope="module")
def tiny_student(copper_label_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("md_student")
    config = compose_config([
        f"data.path={copper_label_file}", f"run_dir={run_dir}", "trainer.max_epochs=1", "data.n_valid=8",
        "model.channels=8", "model.num_layers=1", "model.radial_hidden=16", "trainer.enable_progress_bar=false",
    ])
    return train(config).potential_dir


def test_md_command_writes_every_report_file(tiny_student, tmp_path, capsys):
    structure = tmp_path / "cu.xyz"
    write(structure, copper(2))
    out = tmp_path / "md"
    status = main(["md", str(tiny_student), "--structures", str(structure), "--teacher", "emt",
                   "--temperatures", "300", "900", "--seeds", "2", "--steps", "30", "--nve-ps", "0.04",
                   "--threads", "1", "--out", str(out)])
    printed = capsys.readouterr().out
    assert status == 0
    for name in ("report.md", "report.json", "temperature.png", "nve_energy.png", "rdf.png"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "rdf.png").read_bytes()[:4] == b"\x89PNG"
    report = json.loads((out / "report.json").read_text())
    assert report["student"] == tiny_student.name  # outside a repository: the folder's name, not its absolute path
    assert report["threads"] == 1 and report["timestep_fs"] == 2.0 and report["student_device"] == "cpu"
    for temperature in ("300", "900"):
        numbers = report["temperatures"][temperature]
        assert len(numbers["stable_ps"]) == 2
        assert all(0 < ps <= numbers["run_ps"] == pytest.approx(0.06) for ps in numbers["stable_ps"])
        for key in ("drift_mev_per_atom_per_ps", "drift_ratio", "student_steps_per_s", "teacher_steps_per_s"):
            assert np.isfinite(numbers[key]), key
        assert f"{temperature} K  stable ps per seed" in printed
    assert "| 900 |" in (out / "report.md").read_text()


def test_reports_name_a_path_relative_to_its_repository_never_absolute(tmp_path, monkeypatch):
    repository = tmp_path / "repo"
    (repository / ".git").mkdir(parents=True)
    (repository / "potentials" / "si").mkdir(parents=True)
    assert report_path(repository / "potentials" / "si") == "potentials/si"
    monkeypatch.chdir(repository / "potentials")
    assert report_path("../potentials/si") == "potentials/si"
    monkeypatch.chdir(tmp_path)
    assert report_path("runs/si") == "runs/si"
    assert report_path(tmp_path / "runs" / "si") == "si"


def test_md_command_names_an_element_the_student_does_not_know(tiny_student, tmp_path, capsys):
    structure = tmp_path / "water.xyz"
    write(structure, molecule("H2O"))
    status = main(["md", str(tiny_student), "--structures", str(structure), "--teacher", "emt",
                   "--out", str(tmp_path / "md")])
    error = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(error) == 1
    assert "water.xyz" in error[0] and "H, O" in error[0]
    assert not (tmp_path / "md").exists()


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has a CUDA device")
def test_md_command_on_cuda_without_a_gpu_says_so(tiny_student, tmp_path, capsys):
    structure = tmp_path / "cu.xyz"
    write(structure, copper(2))
    with pytest.raises(SystemExit) as exit_status:
        main(["md", str(tiny_student), "--structures", str(structure), "--teacher", "emt", "--device", "cuda",
              "--out", str(tmp_path / "md")])
    error = capsys.readouterr().err.strip().splitlines()[-1]  # after argparse's usage line
    assert exit_status.value.code == 2
    assert "argument --device" in error and "no CUDA device" in error
    assert not (tmp_path / "md").exists()
