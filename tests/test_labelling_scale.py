"""Labelling at scale: resuming after a kill, worker processes, shards and their merge."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ase.io
import h5py
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from mlip_distill.cli import main
from mlip_distill.data.errors import DataError
from mlip_distill.data.shards import merge_shards
from mlip_distill.data.store import LabelStore, Shard
from mlip_distill.teachers import TeacherError, label_file, load_teacher
from mlip_distill.teachers import labelling
from mlip_distill.teachers.base import Teacher

TESTS = Path(__file__).parent
MODULE = Path(__file__).stem  # importable by name: the tests folder is on sys.path


class SlowEMT(EMT):
    """EMT that sleeps ``delay`` seconds per calculation and, given a ``log`` file, appends the
    config_type of every structure it calculates (isolated atoms, which have none, are not
    logged)."""

    def __init__(self, delay: float = 0.0, log: str | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.delay, self.log = delay, log

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        time.sleep(self.delay)
        if self.log and atoms is not None and "config_type" in atoms.info:
            with open(self.log, "a") as handle:
                handle.write(f"{atoms.info['config_type']}\n")
        super().calculate(atoms, properties, system_changes)


class FailsOnMarkedStructures(EMT):
    """EMT that raises, like an unconverged SCF, on structures of config_type "unconverged"."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=()):
        if atoms is not None and atoms.info.get("config_type") == "unconverged":
            raise RuntimeError("SCF did not converge")
        super().calculate(atoms, properties, system_changes)


class Interrupted(BaseException):
    """Stands for a kill: not an Exception, so labelling does not record it as a failure."""


def copper_cells(n: int) -> list[Atoms]:
    """``n`` rattled 8-atom copper cells named ``s0``, ``s1``... by their config_type."""
    cells = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
        atoms.rattle(0.05, seed=k)
        atoms.info["config_type"] = f"s{k}"
        cells.append(atoms)
    return cells


def with_reference_labels(cells: list[Atoms]) -> list[Atoms]:
    """DFT-like labels on every other cell and a lone-atom reference energy at the front."""
    for k, atoms in enumerate(cells[::2]):
        atoms.calc = SinglePointCalculator(atoms, energy=-1.0 - k, forces=np.full((8, 3), 0.01 * k))
    lone = Atoms("Cu", positions=[[0.0, 0.0, 0.0]])
    lone.calc = SinglePointCalculator(lone, energy=-0.25)
    return [lone, *cells]


def assert_same_label_files(path: Path, expected: Path, provenance: bool = True) -> None:
    """Same structures in the same order, the same labels of every source, the same isolated
    atoms (and provenance). Labels agree to round-off, not bit for bit: EMT's numbers depend on
    what it calculated before (its neighbour list is reused), at the 1e-14 level, which the
    finite-difference Hessian-vector products (step 1e-3 Å) magnify to 1e-11 eV/Å²."""
    with LabelStore(path) as store, LabelStore(expected) as reference:
        assert len(store) == len(reference)
        assert store.sources() == reference.sources()
        for i in range(len(store)):
            mine, theirs = store.arrays(i), reference.arrays(i)
            for key in mine:
                np.testing.assert_array_equal(mine[key], theirs[key])
            for source in store.sources():
                labels, expected_labels = store.labels(source, i), reference.labels(source, i)
                assert labels.keys() == expected_labels.keys()
                for key in ("energy", "forces", "stress", "atomic_energies", "hvp_v", "hvp_hv"):
                    if key in labels:
                        np.testing.assert_allclose(
                            labels[key], expected_labels[key], rtol=1e-12,
                            atol=1e-9 if key == "hvp_hv" else 1e-12,
                        )
        for source in store.sources():
            assert store.isolated_atoms(source) == reference.isolated_atoms(source)
            if provenance:
                assert store.provenance(source) == reference.provenance(source)
    with h5py.File(path) as f, h5py.File(expected) as g:
        np.testing.assert_array_equal(
            f["structures/source_index"][:], g["structures/source_index"][:]
        )


def label_command(*argv) -> list[str]:
    return ["label", *(str(arg) for arg in argv)]


# --- resuming ---------------------------------------------------------------------------------


def test_a_killed_labelling_command_resumes_where_it_stopped(tmp_path):
    ase.io.write(tmp_path / "in.xyz", copper_cells(40))
    out, log = tmp_path / "out.h5", tmp_path / "calls.log"
    spec = f"{MODULE}:SlowEMT(delay=0.05, log='{log}')"
    argv = label_command(tmp_path / "in.xyz", "--teacher", spec, "--out", out, "--chunk-size", 4)
    python_path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": python_path}
    process = subprocess.Popen(
        [sys.executable, "-m", "mlip_distill.cli", *argv], env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    parts = tmp_path / "out.h5.parts"
    deadline = time.monotonic() + 60
    while len(list(parts.glob("chunk-*.npz"))) < 3:
        assert process.poll() is None and time.monotonic() < deadline, "no chunk written"
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not out.exists()  # the label file is written only at the end
    done = {
        f"s{k}"
        for path in parts.glob("chunk-*.npz")
        for k in np.load(path)["input_index"].tolist()
    }
    assert 12 <= len(done) < 40
    log.unlink()

    assert main(argv) == 0  # the same command again
    relabelled = log.read_text().split()
    assert sorted(set(relabelled)) == sorted({f"s{k}" for k in range(40)} - done)
    assert not parts.exists()

    label_file(tmp_path / "in.xyz", "emt", tmp_path / "clean.h5", progress=False)
    assert_same_label_files(out, tmp_path / "clean.h5", provenance=False)
    with LabelStore(out) as store:
        assert store.has_label("teacher", "forces").all()
        assert [store.arrays(i)["config_type"] for i in range(40)] == [f"s{k}" for k in range(40)]


def test_an_interrupted_run_resumes_and_relabels_an_unreadable_chunk(tmp_path, monkeypatch):
    in_xyz = tmp_path / "in.xyz"
    ase.io.write(in_xyz, with_reference_labels(copper_cells(11)))
    out = tmp_path / "out.h5"
    label_file(tmp_path / "in.xyz", "emt", tmp_path / "clean.h5", progress=False, hvp_probes=1)
    teacher = load_teacher("emt")
    label = teacher.label
    calls = []

    def interrupted_in_structure_4(atoms):
        # the isolated atom, then 3 calls a structure (its labels, 2 for its probe's product)
        if len(calls) == 1 + 3 * 4:
            raise Interrupted
        calls.append(1)
        return label(atoms)

    monkeypatch.setattr(teacher, "label", interrupted_in_structure_4)
    with pytest.raises(Interrupted):
        label_file(tmp_path / "in.xyz", teacher, out, progress=False, chunk_size=3, hvp_probes=1)
    parts = sorted((tmp_path / "out.h5.parts").glob("chunk-*.npz"))
    assert [path.name for path in parts] == ["chunk-000000.npz"]  # structures 0 to 2
    assert not out.exists()

    summary = label_file(in_xyz, "emt", out, progress=False, chunk_size=3, hvp_probes=1)
    assert (summary.n_labelled, summary.n_failed, summary.n_resumed) == (11, 0, 3)
    assert_same_label_files(out, tmp_path / "clean.h5")

    # A truncated chunk file (a crash of the machine, say) is labelled again.
    out.unlink()
    monkeypatch.setattr(labelling._Parts, "remove", lambda self: None)
    label_file(tmp_path / "in.xyz", "emt", out, progress=False, chunk_size=3, hvp_probes=1)
    out.unlink()
    chunk = tmp_path / "out.h5.parts" / "chunk-000001.npz"
    chunk.write_bytes(chunk.read_bytes()[:100])
    monkeypatch.undo()
    summary = label_file(in_xyz, "emt", out, progress=False, chunk_size=3, hvp_probes=1)
    assert summary.n_resumed == 8
    assert_same_label_files(out, tmp_path / "clean.h5")


def test_a_run_killed_after_writing_the_label_file_is_not_labelled_twice(tmp_path, monkeypatch):
    ase.io.write(tmp_path / "in.xyz", copper_cells(5))
    out = tmp_path / "out.h5"
    label_file(tmp_path / "in.xyz", "emt", out, progress=False)  # a label file to append to

    def killed(self):
        raise Interrupted

    monkeypatch.setattr(labelling._Parts, "remove", killed)
    with pytest.raises(Interrupted):
        label_file(tmp_path / "in.xyz", "emt", out, progress=False, chunk_size=2)
    monkeypatch.undo()
    summary = label_file(tmp_path / "in.xyz", "emt", out, progress=False, chunk_size=2)
    assert (summary.n_labelled, summary.n_resumed) == (5, 5)
    assert not (tmp_path / "out.h5.parts").exists()
    with LabelStore(out) as store:
        assert len(store) == 10 and store.has_label("teacher", "energy").all()


def test_a_sidecar_of_other_settings_is_refused_in_one_line(tmp_path, monkeypatch):
    ase.io.write(tmp_path / "in.xyz", copper_cells(4))
    out = tmp_path / "out.h5"
    monkeypatch.setattr(labelling._Parts, "remove", lambda self: None)
    label_file(tmp_path / "in.xyz", "emt", out, progress=False, chunk_size=2)
    out.unlink()
    monkeypatch.undo()
    with pytest.raises(DataError, match=r"out.h5.parts: holds an unfinished labelling run with "
                                        r"another chunk_size, teacher; rerun that command"):
        label_file(tmp_path / "in.xyz", load_teacher("ase.calculators.lj:LennardJones"), out,
                   progress=False)
    assert not out.exists()


# --- workers ----------------------------------------------------------------------------------


def test_workers_give_the_labels_and_failures_of_one_process(tmp_path):
    cells = copper_cells(9)
    cells[4].info["config_type"] = "unconverged"
    ase.io.write(tmp_path / "in.xyz", cells)
    spec = f"{MODULE}:FailsOnMarkedStructures"
    one = label_file(tmp_path / "in.xyz", spec, tmp_path / "one.h5", progress=False)
    two = label_file(tmp_path / "in.xyz", spec, tmp_path / "two.h5", progress=False,
                     chunk_size=2, workers=2)
    assert one.failures == two.failures == [(4, "RuntimeError: SCF did not converge")]
    assert two.n_labelled == 8
    assert_same_label_files(tmp_path / "two.h5", tmp_path / "one.h5")


def test_workers_are_refused_for_teachers_that_run_in_one_process(tmp_path):
    class OneProcessTeacher(Teacher):
        name, spec, elements, version, settings = "torchy", "torchy", None, "0", {}

        def label(self, atoms):
            raise NotImplementedError

    ase.io.write(tmp_path / "in.xyz", copper_cells(2))
    with pytest.raises(TeacherError, match="labels in one process only"):
        label_file(tmp_path / "in.xyz", OneProcessTeacher(), tmp_path / "out.h5", workers=2)


# --- shards -----------------------------------------------------------------------------------


def test_shards_merged_equal_one_run(tmp_path, capsys):
    ase.io.write(tmp_path / "in.xyz", with_reference_labels(copper_cells(10)))
    common = ["--teacher", "emt", "--hvp-probes", "1", "--chunk-size", "2"]
    assert main(label_command(tmp_path / "in.xyz", "--out", tmp_path / "one.h5", *common)) == 0
    shards = [tmp_path / f"shard{i}.h5" for i in range(3)]
    for i, shard in enumerate(shards):
        argv = label_command(tmp_path / "in.xyz", "--out", shard, "--shard", f"{i}/3", *common)
        assert main(argv) == 0
    with LabelStore(shards[1]) as store:
        assert len(store) == 3 and store.shard.positions() == range(1, 10, 3)
    assert main(["merge", str(tmp_path / "merged.h5"), *map(str, shards[::-1])]) == 0
    assert "merged 3 shards, 10 structures" in capsys.readouterr().out
    assert_same_label_files(tmp_path / "merged.h5", tmp_path / "one.h5")


def test_shards_of_a_label_store_merged_equal_labelling_a_copy(tmp_path):
    ase.io.write(tmp_path / "in.xyz", with_reference_labels(copper_cells(5)))
    label_file(tmp_path / "in.xyz", "emt", tmp_path / "in.h5", progress=False)
    lj = "ase.calculators.lj:LennardJones(sigma=2.3, epsilon=0.4)"
    label_file(tmp_path / "in.h5", lj, tmp_path / "copy.h5", source="lj", progress=False)
    shards = [tmp_path / f"shard{i}.h5" for i in range(2)]
    for i, shard in enumerate(shards):
        label_file(tmp_path / "in.h5", lj, shard, source="lj", shard=Shard(i, 2), progress=False)
    assert merge_shards(shards, tmp_path / "merged.h5") == 5
    assert_same_label_files(tmp_path / "merged.h5", tmp_path / "copy.h5")


@pytest.fixture
def two_shards(tmp_path):
    ase.io.write(tmp_path / "in.xyz", copper_cells(5))
    shards = [tmp_path / f"shard{i}.h5" for i in range(2)]
    for i, shard in enumerate(shards):
        label_file(tmp_path / "in.xyz", "emt", shard, shard=Shard(i, 2), progress=False)
    return shards


def one_line_error(capsys, argv) -> str:
    assert main([str(arg) for arg in argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_bad_shards_are_refused_in_one_line(tmp_path, capsys, two_shards):
    first, second = two_shards
    out = tmp_path / "merged.h5"
    labelling_into_out = label_command(tmp_path / "in.xyz", "--teacher", "emt", "--out", out)
    assert "shard 3/2: expected i/n with 0 <= i < n" in one_line_error(
        capsys, [*labelling_into_out, "--shard", "3/2"]
    )
    assert "expected i/n" in one_line_error(capsys, [*labelling_into_out, "--shard", "a"])
    assert "shard 1/2 of" in one_line_error(capsys, ["merge", out, first])
    assert "are both shard 0/2" in one_line_error(capsys, ["merge", out, first, first, second])
    lj = tmp_path / "lj.h5"
    label_file(tmp_path / "in.xyz", "ase.calculators.lj:LennardJones", lj, shard=Shard(1, 2),
               progress=False)
    assert "labelled differently: source 'teacher' comes from ase.calculators.lj:LennardJones " \
           "and emt" in one_line_error(capsys, ["merge", out, first, lj])
    three = tmp_path / "three.h5"
    label_file(tmp_path / "in.xyz", "emt", three, shard=Shard(1, 3), progress=False)
    assert "merge the shards of one input, split once" in one_line_error(
        capsys, ["merge", out, first, three]
    )
    label_file(tmp_path / "in.xyz", "emt", tmp_path / "whole.h5", progress=False)
    assert "not a shard" in one_line_error(capsys, ["merge", out, first, tmp_path / "whole.h5"])
    assert "already exists" in one_line_error(capsys, ["merge", first, second])
    assert not out.exists()
