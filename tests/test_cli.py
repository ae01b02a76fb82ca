"""The command line: each bad input ends in one line naming the file and the problem."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from mlip_distill.cli import main
from conftest import emt_copper_cells, write_label_file


def run_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def assert_one_line_error(capsys, *argv, contains: str):
    status, _, err = run_cli(capsys, *argv)
    assert status == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert contains in lines[0], lines[0]
    return lines[0]


def labelled_copper_file(path, forces=None, energy=None):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=1)
    atoms.calc = SinglePointCalculator(
        atoms, energy=-1.0 if energy is None else energy,
        forces=np.zeros((4, 3)) if forces is None else forces,
    )
    write(path, atoms, format="extxyz")
    return path


def test_missing_file(capsys, tmp_path):
    assert_one_line_error(capsys, "stats", tmp_path / "absent.xyz", contains="absent.xyz")


def test_unknown_teacher_spec(capsys, tmp_path):
    structures = labelled_copper_file(tmp_path / "cu.xyz")
    assert_one_line_error(capsys, "label", structures, "--teacher", "nosuchteacher", "--out", tmp_path / "l.h5",
                          contains="nosuchteacher")
    assert not (tmp_path / "l.h5").exists()


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_labels(capsys, tmp_path, bad):
    forces = np.zeros((4, 3))
    forces[2, 1] = float(bad)
    structures = labelled_copper_file(tmp_path / "cu.xyz", forces=forces)
    line = assert_one_line_error(capsys, "label", structures, "--teacher", "emt", "--out", tmp_path / "l.h5",
                                 contains="cu.xyz")
    assert "forces" in line


def test_corrupted_label_file(capsys, tmp_path, copper_label_file):
    broken = tmp_path / "broken.h5"
    broken.write_bytes(copper_label_file.read_bytes()[:2000])
    assert_one_line_error(capsys, "stats", broken, contains="broken.h5")


def test_two_atoms_too_close(capsys, tmp_path):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.positions[1] = atoms.positions[0] + [0.05, 0, 0]
    write(tmp_path / "close.xyz", atoms)
    assert_one_line_error(capsys, "label", tmp_path / "close.xyz", "--teacher", "emt", "--out", tmp_path / "l.h5",
                          contains="close.xyz")


def test_training_needs_forces(capsys, tmp_path):
    cells = emt_copper_cells(4)
    for atoms in cells:
        atoms.calc = SinglePointCalculator(atoms, energy=atoms.get_potential_energy())
    labels = write_label_file(tmp_path / "energies_only.h5", cells)
    assert_one_line_error(capsys, "train", f"data.path={labels}", f"run_dir={tmp_path / 'run'}",
                          contains="energies_only.h5")


def test_missing_data_path_in_train(capsys):
    assert_one_line_error(capsys, "train", "trainer.max_epochs=1", contains="data.path")


def test_element_unknown_to_the_student(capsys, tmp_path):
    from mlip_distill.models import build_model
    from mlip_distill.package import save_potential

    package = save_potential(build_model("nequip", elements=[29], cutoff=4.0, channels=4, num_layers=1),
                             "nequip", tmp_path / "potential")
    gold = bulk("Au", "fcc", a=4.08, cubic=True)
    gold.calc = SinglePointCalculator(gold, energy=0.0, forces=np.zeros((4, 3)))
    write(tmp_path / "gold.xyz", gold)
    assert_one_line_error(capsys, "eval", package, tmp_path / "gold.xyz", contains="Au")
