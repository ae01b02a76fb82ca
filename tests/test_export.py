"""Exporting a run as a package: compiled and eager students agree, the compiled file loads
without unpickling, tampered or truncated packages are refused, old formats load, model card."""

from __future__ import annotations

import json
import pickle
import shlex
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from mlip_distill.calculator import StudentCalculator
from mlip_distill.cli import main
from mlip_distill.export import export_run
from mlip_distill.models import build_model
from mlip_distill.package import PotentialError, load_potential, metadata_checksum, read_metadata, save_potential

ARCHITECTURES = {"nequip": {"channels": 8, "num_layers": 2}, "painn": {"channels": 8, "num_layers": 2}}


def student(name: str = "nequip"):
    torch.manual_seed(0)
    return build_model(name, elements=[8, 29], cutoff=4.0, e0={8: -0.3, 29: -0.5}, scale=0.3, **ARCHITECTURES[name])


def rattled_copper(repeat=(2, 1, 1), seed=0):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(0.1, seed=seed)
    atoms.symbols[1] = "O"
    return atoms


@pytest.fixture(scope="module")
def training_config():
    from omegaconf import OmegaConf

    from mlip_distill.training.run import compose_config

    config = compose_config(["model=painn", "model.channels=8", "trainer.max_time='00:00:01:00'", "seed=3"])
    return OmegaConf.to_container(config, resolve=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, copper_label_file, training_config):
    """A run folder as training leaves it: potential/ and curves.csv."""
    run = tmp_path_factory.mktemp("runs") / "cu" / "20260101-000000-abcdef"
    extra = {
        "teacher": {"name": "emt", "spec": "emt", "version": "3.23.0", "settings": {}},
        "data": {"path": str(copper_label_file), "source": "teacher", "n_train": 36, "n_valid": 4},
        "errors": {"valid_vs_teacher": {"energy_mae_mev_per_atom": 1.5, "energy_rmse_mev_per_atom": 2.0,
                                        "forces_mae_mev_per_A": 20.0, "forces_rmse_mev_per_A": 27.0,
                                        "n_structures": 4}},
        "training": {"config": training_config, "run_dir": str(run)},
    }
    save_potential(student(), "nequip", run / "potential", extra=extra)
    (run / "curves.csv").write_text("epoch,train_loss\n0,1.0\n1,0.5\n")
    return run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    return export_run(run_dir, tmp_path_factory.mktemp("potentials") / "cu")


@pytest.fixture
def package(exported, tmp_path):
    """A fresh copy of the exported package, for a test to modify."""
    return Path(shutil.copytree(exported, tmp_path / "cu"))


def test_export_writes_the_whole_package(exported):
    package = exported
    names = {path.name for path in package.iterdir()}
    assert names == {"weights.safetensors", "potential.json", "model.pt2", "MODEL_CARD.md", "curves.csv"}
    metadata = read_metadata(package)
    assert metadata["compiled"]["format"] == "torch.export" and metadata["format_version"] == 2
    assert metadata["teacher"]["name"] == "emt"
    assert metadata["data"]["label_file"] == {"n_structures": 40, "n_atoms": 320, "config_types": {"": 40},
                                               "sources": ["teacher"]}
    assert not list(package.parent.glob(".*"))  # no staging folder left behind


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_compiled_and_eager_students_agree(name, tmp_path):
    package = save_potential(student(name), name, tmp_path / name, compiled=True)
    eager, compiled = StudentCalculator(package, compiled=False), StudentCalculator(package, compiled="auto")
    assert compiled.compiled and not eager.compiled
    rng = np.random.default_rng(0)
    for structure in (rattled_copper(), rattled_copper((2, 2, 1), seed=1), Atoms("Cu", pbc=False)):
        for _ in range(2):  # a second step reuses the neighbour list (skin) in both
            structure.positions += rng.normal(0, 0.02, structure.positions.shape)
            e_eager, e_compiled = eager.get_potential_energy(structure), compiled.get_potential_energy(structure)
            assert e_compiled == pytest.approx(e_eager, rel=1e-6, abs=1e-5)
            f_eager, f_compiled = eager.get_forces(structure), compiled.get_forces(structure)
            np.testing.assert_allclose(f_compiled, f_eager, atol=1e-5 * max(1.0, np.abs(f_eager).max()))
            if structure.pbc.all():
                np.testing.assert_allclose(compiled.get_stress(structure), eager.get_stress(structure), atol=1e-6)
    assert compiled.results["energy"] == pytest.approx(-0.5)  # the last structure, a lone atom, has its E0
    assert compiled.neighbour_list_builds == eager.neighbour_list_builds == 3


def test_compiled_model_loads_without_unpickling(package, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for owner, attribute in ((pickle, "loads"), (pickle, "load"), (pickle, "Unpickler"), (torch, "load"),
                             (torch._C, "_pickle_load_obj")):
        monkeypatch.setattr(owner, attribute, refuse)
    calculator = StudentCalculator(package, compiled=True)
    assert np.isfinite(calculator.get_forces(rattled_copper())).all()


def _rewrite_metadata(package, change):
    path = package / "potential.json"
    metadata = json.loads(path.read_text())
    change(metadata)
    if metadata.get("format_version", 0) >= 2:
        metadata["metadata_sha256"] = metadata_checksum(metadata)
    path.write_text(json.dumps(metadata))


def test_tampered_or_truncated_packages_are_refused(package):
    compiled = package / "model.pt2"
    original = compiled.read_bytes()
    compiled.write_bytes(original[: len(original) // 2])
    with pytest.raises(PotentialError, match="model.pt2: checksum differs"):
        StudentCalculator(package, compiled="auto")
    assert StudentCalculator(package, compiled=False).get_potential_energy(rattled_copper())  # eager still runs

    compiled.write_bytes(original)
    metadata_path = package / "potential.json"
    text = metadata_path.read_text()
    metadata_path.write_text(text.replace('"cutoff": 4.0', '"cutoff": 5.0'))
    with pytest.raises(PotentialError, match="potential.json: content differs"):
        load_potential(package)
    metadata_path.write_text(text[: len(text) // 2])
    with pytest.raises(PotentialError, match="not valid JSON"):
        load_potential(package)


def test_a_compiled_file_with_a_pickled_record_is_refused_even_with_a_matching_checksum(package):
    compiled = package / "model.pt2"
    with zipfile.ZipFile(compiled) as archive:
        records = {info.filename: archive.read(info) for info in archive.infolist()}
    name = next(name for name in records if name.endswith("data/sample_inputs/model.pt"))
    records[name] = pickle.dumps(("malicious", "payload"))
    with zipfile.ZipFile(compiled, "w") as archive:
        for record, data in records.items():
            archive.writestr(record, data)
    from mlip_distill.checksums import file_sha256

    _rewrite_metadata(package, lambda metadata: metadata["compiled"].update(sha256=file_sha256(compiled)))
    with pytest.raises(PotentialError, match="sample_inputs/model.pt would be unpickled"):
        load_potential(package, compiled=True)


def test_a_version_1_package_loads_and_a_newer_one_says_what_it_needs(package):
    atoms = rattled_copper()
    expected = StudentCalculator(package, compiled=False).get_potential_energy(atoms)

    def as_version_1(metadata):  # what format 1 wrote: no compiled model, quantisation or self-checksum
        for key in ("compiled", "quantization", "metadata_sha256"):
            metadata.pop(key)
        metadata["format_version"] = 1

    _rewrite_metadata(package, as_version_1)
    (package / "model.pt2").unlink()
    calculator = StudentCalculator(package)
    assert not calculator.compiled
    assert calculator.get_potential_energy(atoms) == pytest.approx(expected, abs=0)
    with pytest.raises(PotentialError, match="no compiled model"):
        StudentCalculator(package, compiled=True)

    _rewrite_metadata(package, lambda metadata: metadata.update(format_version=3))
    with pytest.raises(PotentialError, match="format version 3.*reads versions 1, 2; it needs a newer mlip-distill"):
        load_potential(package)


def test_compiled_model_refuses_another_dtype(package):
    with pytest.raises(PotentialError, match="compiled in float32, not float64"):
        StudentCalculator(package, dtype="float64", compiled=True)
    assert not StudentCalculator(package, dtype="float64", compiled="auto").compiled


def test_model_card_states_what_is_known_and_marks_the_rest_unknown(package, training_config):
    card = (package / "MODEL_CARD.md").read_text()
    n_parameters = sum(p.numel() for p in student().parameters())
    assert f"{n_parameters:,} parameters" in card
    assert "- name: emt" in card and "- version: 3.23.0" in card
    assert "40 structures, 320 atoms" in card and "36 for training, 4 held out" in card
    assert "| valid_vs_teacher | 1.5 / 2 | 20 / 27 | not measured | 4 |" in card
    assert "Errors against reference (ground-truth) labels: unknown" in card
    assert "Speed against the teacher: unknown" in card
    assert "sampling settings: unknown" in card
    assert "One stage" in card
    assert "`curves.csv` (learning curves)" in card

    # the command in the card composes the very config the run was trained with
    from omegaconf import OmegaConf

    from mlip_distill.training.run import compose_config

    command = next(line for line in card.splitlines() if line.startswith("mlip-distill train"))
    overrides = shlex.split(command)[2:]
    assert "model=painn" in overrides and "seed=3" in overrides
    recomposed = OmegaConf.to_container(compose_config(overrides), resolve=True)
    assert recomposed == {**training_config, "run_dir": recomposed["run_dir"]}


def test_export_command_and_its_one_line_errors(run_dir, tmp_path, capsys):
    out = tmp_path / "potentials" / "cu-int8"
    assert main(["export", str(run_dir), "--out", str(out), "--int8", "--no-compiled"]) == 0
    metadata = read_metadata(out)
    assert metadata["quantization"] and metadata["compiled"] is None and not (out / "model.pt2").exists()
    assert "stored as int8" in (out / "MODEL_CARD.md").read_text() and "no faster" in (out / "MODEL_CARD.md").read_text()

    assert main(["export", str(tmp_path / "nowhere"), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "neither a training run folder" in error
    assert read_metadata(out)["quantization"]  # the failed export left the earlier package alone


def test_model_card_of_a_bare_record_lists_stages_and_invents_nothing():
    from mlip_distill.model_card import model_card

    stages = [{"name": "distill", "epochs": 5, "temperature": 4.0}, {"name": "fine-tune", "lr": 1e-4}]
    card = model_card({"model": {"name": "nequip"}, "elements": [14], "format_version": 2,
                       "training": {"config": {"stages": stages}}})
    assert "1. **distill**: epochs=5, temperature=4.0" in card and "2. **fine-tune**: lr=0.0001" in card
    for section in ("Teacher: unknown", "Training data: unknown", "Errors: unknown",
                    "Speed against the teacher: unknown", "nequip, unknown (not recorded) parameters"):
        assert section in card
    command = next(line for line in card.splitlines() if line.startswith("mlip-distill train"))
    stages_override = "stages=[{name:distill,epochs:5,temperature:4.0},{name:fine-tune,lr:0.0001}]"
    assert stages_override in [override.lstrip("+") for override in shlex.split(command)]


def _strings(value):
    if isinstance(value, dict):
        return [text for item in value.values() for text in _strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in _strings(item)]
    return [value] if isinstance(value, str) else []


def test_a_package_names_no_folder_of_the_machine_that_trained_it(exported, run_dir, copper_label_file):
    metadata = read_metadata(exported)
    assert not [text for text in _strings(metadata) if text.startswith("/")]
    assert metadata["data"]["path"] == "labels.h5"
    assert metadata["training"]["run_dir"] == run_dir.name and metadata["exported_from"] == f"{run_dir.name}/potential"
    card = (exported / "MODEL_CARD.md").read_text()
    for folder in (run_dir, copper_label_file.parent, run_dir.parent.parent):
        assert str(folder) not in card and str(folder) not in (exported / "potential.json").read_text()
    assert "- label file: `labels.h5`" in card
    assert "--out labels.h5" in card and "# run where the label file labels.h5 is" in card


def test_portable_paths_keep_folders_inside_the_run_and_names_elsewhere():
    from mlip_distill.export import portable_paths

    record = {"run": "/scratch/u/runs/cu/1", "stage": ["/scratch/u/runs/cu/1/stages/2-fine-tune"],
              "spec": "mace:/home/u/models/small.model", "url": "https://example.org/a/b", "units": "eV/Å",
              "relative": "labels.h5", "number": 3}
    assert portable_paths(record, "/scratch/u/runs/cu/1") == {
        "run": "1", "stage": ["1/stages/2-fine-tune"], "spec": "mace:small.model", "url": "https://example.org/a/b",
        "units": "eV/Å", "relative": "labels.h5", "number": 3}


def test_a_student_trained_on_reference_labels_has_no_teacher_and_a_distilled_one_keeps_its_own():
    from mlip_distill.model_card import UNKNOWN, model_card

    data = {"path": "ethanol_1000.h5", "source": "reference", "n_train": 950, "n_valid": 50}
    card = model_card({"format_version": 2, "teacher": {"imported_from": ["frames.xyz"]}, "data": data})
    teacher = card.split("## Teacher")[1].split("##")[0]
    assert ("Teacher: none; trained directly on the reference (ground-truth, e.g. DFT) labels of "
            "`ethanol_1000.h5`") in teacher
    assert UNKNOWN not in teacher
    staged = model_card({"format_version": 2, "teacher": {"name": "sevennet:7net-0"}, "data": data})
    assert "- name: sevennet:7net-0" in staged and "Teacher: none" not in staged
    assert f"- name: {UNKNOWN}" in model_card({"teacher": {"imported_from": ["x.xyz"]}, "data": {"source": "teacher"}})


def test_measured_speed_is_recorded_and_stated_in_the_card(run_dir, tmp_path):
    from mlip_distill.model_card import call_speed

    speed = call_speed([{"n_atoms": 64, "student_ms": 8.6, "teacher_ms": 377.3},
                        {"n_atoms": 216, "student_ms": 19.2, "teacher_ms": 1703.7}],
                       computes="energy, forces and stress", threads=1, student="eager", teacher="SevenNet-0",
                       source="benchmarks/results/shipped_si.md", machine="Test CPU, 2 cores")
    out = export_run(run_dir, tmp_path / "cu", compiled=False, speed=speed)
    assert read_metadata(out)["speed"] == speed
    card = (out / "MODEL_CARD.md").read_text()
    assert ("ASE calculator calls computing energy, forces and stress, on 1 CPU thread of Test CPU, 2 cores; "
            "student eager; from `benchmarks/results/shipped_si.md`:") in card
    assert "| 64 | 8.6 | 377 | 44× |" in card and "| 216 | 19.2 | 1,704 | 89× |" in card
    assert "Speed against the teacher: unknown" not in card

    from mlip_distill.model_card import model_card

    alone = call_speed([{"n_atoms": 9, "student_ms": 7.41}], computes="energy and forces", threads=1,
                       student="eager", machine="Test CPU, 2 cores")
    card = model_card({"format_version": 2, "speed": alone})
    assert "| atoms | student (ms per call) | calls per second |" in card and "| 9 | 7.41 | 135 |" in card
    assert "No teacher was timed beside it." in card


def test_refresh_rewrites_metadata_and_card_and_keeps_weights_and_added_sections(package, tmp_path):
    from mlip_distill.export import refresh_package
    from mlip_distill.model_card import call_speed

    before = {name: (package / name).read_bytes() for name in ("weights.safetensors", "model.pt2")}
    energy = StudentCalculator(package).get_potential_energy(rattled_copper())

    def as_an_older_export(metadata):  # absolute paths, no error counts
        metadata["data"]["path"] = str(tmp_path / "somewhere" / "labels.h5")
        metadata["errors"]["valid_vs_teacher"].pop("n_structures")
    _rewrite_metadata(package, as_an_older_export)
    card = package / "MODEL_CARD.md"
    card.write_text(card.read_text() + "\n## Against DFT\n\nA benchmark's table.\n")

    speed = call_speed([{"n_atoms": 8, "student_ms": 2.0}], computes="energy and forces", threads=1,
                       student="eager", machine="Test CPU, 2 cores")
    refresh_package(package, speed=speed)
    metadata = read_metadata(package)  # its self-checksum holds
    assert metadata["data"]["path"] == "labels.h5" and metadata["speed"] == speed
    assert metadata["errors"]["valid_vs_teacher"]["n_structures"] == 4  # the run's n_valid
    assert {name: (package / name).read_bytes() for name in before} == before
    text = card.read_text()
    assert text.endswith("\n## Files\n\n" + text.split("\n## Files\n\n")[1].split("\n")[0] +
                         "\n\n## Against DFT\n\nA benchmark's table.\n")
    assert "| 8 | 2 | 500 |" in text and "| valid_vs_teacher | 1.5 / 2 | 20 / 27 | not measured | 4 |" in text
    assert StudentCalculator(package).get_potential_energy(rattled_copper()) == pytest.approx(energy, abs=0)
