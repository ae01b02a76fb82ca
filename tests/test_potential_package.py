"""The potential package and the ASE calculator: round trip, tamper checks, derivatives, skin."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_forces, calculate_numerical_stress

from mlip_distill.calculator import StudentCalculator
from mlip_distill.captured_step import EdgeSlots, FixedBuffersStep, far_image_shift, recorded_evaluation
from mlip_distill.models import build_model
from mlip_distill.package import PotentialError, load_potential, save_potential


def copper_student(dtype=torch.float64):
    torch.manual_seed(0)
    model = build_model("nequip", elements=[29], cutoff=4.0, e0={29: -0.5}, scale=0.3, channels=8, num_layers=2)
    return model.to(dtype)


def rattled_copper(repeat=(2, 1, 1), seed=0):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(0.1, seed=seed)
    return atoms


@pytest.fixture
def package(tmp_path):
    return save_potential(copper_student(), "nequip", tmp_path / "potential", extra={"teacher": {"name": "emt"}})


def test_round_trip_gives_identical_numbers(package):
    atoms = rattled_copper()
    original = StudentCalculator(load_potential(package, dtype=torch.float64))
    reloaded = StudentCalculator(package, dtype="float64")
    assert original.get_potential_energy(atoms) == pytest.approx(reloaded.get_potential_energy(atoms.copy()), abs=0)
    metadata = json.loads((package / "potential.json").read_text())
    assert metadata["elements"] == [29] and metadata["cutoff"] == 4.0
    assert metadata["teacher"] == {"name": "emt"}
    assert metadata["units"]["energy"] == "eV"


def test_calculator_matches_finite_differences_in_float64(package):
    atoms = rattled_copper()
    atoms.calc = StudentCalculator(package, dtype="float64")
    forces, stress = atoms.get_forces(), atoms.get_stress()
    assert np.abs(forces).max() > 1e-3  # the check below would be empty otherwise
    numerical_forces = calculate_numerical_forces(atoms, eps=1e-5)
    numerical_stress = calculate_numerical_stress(atoms, eps=1e-6)
    np.testing.assert_allclose(forces, numerical_forces, rtol=1e-5, atol=1e-5 * np.abs(forces).max())
    np.testing.assert_allclose(stress, numerical_stress, rtol=1e-5, atol=1e-5 * np.abs(stress).max())
    assert np.sum(atoms.get_potential_energies()) == pytest.approx(atoms.get_potential_energy())


def test_neighbour_list_is_reused_within_the_skin_and_stays_exact(package):
    atoms = rattled_copper()
    calculator = StudentCalculator(package, dtype="float64", skin=1.0)
    rng = np.random.default_rng(1)
    for step in range(5):
        atoms.positions += rng.normal(0, 0.03, atoms.positions.shape)  # well inside half the skin
        energy = calculator.get_potential_energy(atoms)
        fresh = StudentCalculator(package, dtype="float64", skin=0.0).get_potential_energy(atoms)
        assert energy == pytest.approx(fresh, rel=1e-12)
    assert calculator.neighbour_list_builds == 1
    atoms.positions[0] += [0.6, 0.0, 0.0]  # beyond half the skin
    calculator.get_potential_energy(atoms)
    assert calculator.neighbour_list_builds == 2


def test_one_calculator_follows_moves_strains_and_new_atoms_like_fresh_ones(package):
    # Without a skin every call rebuilds, reusing the graph of the same atoms: each step must give
    # what a new calculator gives, through moves too small for a tolerance, strain and a new cell.
    calculator = StudentCalculator(package, dtype="float64", skin=0.0)
    atoms = rattled_copper()
    steps = [lambda a: a.positions[0].__iadd__(1e-6), lambda a: a.set_cell(a.cell * 1.02, scale_atoms=True),
             lambda a: a.set_pbc([True, True, False]), lambda a: a.__delitem__(0)]
    for change in steps:
        change(atoms)
        atoms.calc = calculator
        results = (atoms.get_potential_energy(), atoms.get_forces())
        atoms.calc = StudentCalculator(package, dtype="float64", skin=0.0)
        assert results[0] == pytest.approx(atoms.get_potential_energy(), rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(results[1], atoms.get_forces(), atol=1e-12)


def test_unknown_element_is_refused(package):
    atoms = rattled_copper()
    atoms.symbols[0] = "Au"
    with pytest.raises(PotentialError, match="Au not known to this student"):
        StudentCalculator(package).get_potential_energy(atoms)


def test_tampered_weights_are_refused(package):
    weights = package / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(PotentialError, match="checksum"):
        load_potential(package)


def test_truncated_weights_are_refused(package):
    weights = package / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(PotentialError, match="modified or truncated"):
        load_potential(package)


def test_other_format_versions_say_which_version_they_need(package):
    path = package / "potential.json"
    metadata = json.loads(path.read_text())
    metadata["format_version"] = 99
    path.write_text(json.dumps(metadata))
    with pytest.raises(PotentialError, match="format version 99"):
        load_potential(package)
    path.write_text(path.read_text()[:50])
    with pytest.raises(PotentialError, match="not valid JSON"):
        load_potential(package)


def test_missing_package_is_one_line(tmp_path):
    with pytest.raises(PotentialError, match="no such potential package"):
        load_potential(tmp_path / "nothing")


def test_pairs_between_cutoff_and_skin_add_nothing(package):
    """The premise of the CUDA-graph path: evaluating every pair within cutoff + skin gives the
    same energy, forces and stress as the pairs within the cutoff alone."""
    atoms = rattled_copper(seed=3)
    calculator = StudentCalculator(package, dtype="float64", skin=1.5)
    within_cutoff = calculator._graph_for(atoms)
    every_pair = calculator._graph
    assert every_pair.edge_index.shape[1] > within_cutoff.edge_index.shape[1]
    outputs = [
        calculator.model(graph, compute_forces=True, compute_stress=True, create_graph=False)
        for graph in (within_cutoff, every_pair)
    ]
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(outputs[0][key], outputs[1][key], rtol=1e-12, atol=1e-12)


def test_cuda_graph_needs_a_cuda_device(package):
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device"):
        StudentCalculator(package, cuda_graph=True)


class HostTraffic(TorchDispatchMode):
    """Records the operations a CUDA graph cannot hold: reading a value back to the host
    (``.item()``, data-dependent shapes) and making a tensor from Python data."""

    BLOCKED = ("_local_scalar_dense", "nonzero", "lift_fresh", "lift_fresh_copy", "masked_select", "unique")

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] in self.BLOCKED:
            self.seen.append(func.__name__)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name, options", [
    ("nequip", {"l_max": 1}),
    ("nequip", {"l_max": 0, "angular_order": 2, "bispectrum": True}),
    ("painn", {}),
])
def test_a_step_has_no_host_traffic_for_a_cuda_graph_to_refuse(name, options, tmp_path):
    # The CUDA-graph path records one energy + forces + stress evaluation and falls back to eager
    # (silently slow) when the recording fails; these are the operations that make it fail.
    torch.manual_seed(0)
    model = build_model(name, elements=[29, 79], cutoff=4.0, e0={29: -0.5, 79: -0.3}, channels=8, num_layers=2,
                        **options)
    atoms = rattled_copper()
    atoms.numbers[::3] = 79
    calculator = StudentCalculator(save_potential(model, name, tmp_path / "potential"), skin=0.5)
    calculator._positions(atoms)  # the graph a recording is made of, built beforehand as it is there
    evaluate = recorded_evaluation(calculator.model, calculator._graph, compute_stress=True)
    traffic = HostTraffic()
    with traffic:
        output = evaluate()
    assert traffic.seen == []
    atoms.calc = calculator
    np.testing.assert_allclose(output["stress"].detach().numpy()[0], atoms.get_stress(), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("name, options", [
    ("nequip", {"l_max": 1, "zbl": True}),
    ("nequip", {"l_max": 0, "angular_order": 2, "bispectrum": True}),
    ("painn", {}),
])
def test_free_edge_slots_of_a_recording_add_exactly_nothing(name, options, tmp_path):
    # A CUDA-graph recording keeps free edge slots, filled with an atom and its own far image, so
    # that a rebuilt neighbour list of another length replays without a new recording.
    torch.manual_seed(0)
    model = build_model(name, elements=[29], cutoff=4.0, e0={29: -0.5}, channels=8, num_layers=2, **options)
    atoms = rattled_copper((2, 2, 1))
    calculator = StudentCalculator(save_potential(model.double(), name, tmp_path / "potential"), skin=0.5)
    calculator._positions(atoms)
    graph = calculator._graph
    slots = EdgeSlots(graph, cutoff=4.0)
    n_edges = graph.edge_index.shape[1]
    assert slots.edge_index.shape[1] > n_edges
    fewer = graph.edge_index[:, : n_edges - 40], graph.cell_shifts[: n_edges - 40]  # a shorter list
    assert slots.take(*fewer)
    padded, exact = copy.copy(graph), copy.copy(graph)
    padded.edge_index, padded.cell_shifts = slots.edge_index, slots.cell_shifts
    exact.edge_index, exact.cell_shifts = fewer
    outputs = [recorded_evaluation(calculator.model, batch, compute_stress=True)() for batch in (padded, exact)]
    assert outputs[1]["forces"].abs().max() > 1e-2
    for key in ("energy", "atomic_energies", "forces", "stress"):
        torch.testing.assert_close(outputs[0][key], outputs[1][key], rtol=0, atol=1e-12)
    too_many = torch.cat([graph.edge_index, graph.edge_index], dim=1), torch.cat([graph.cell_shifts] * 2)
    assert not slots.take(*too_many)
    torch.testing.assert_close(slots.edge_index[:, : n_edges - 40], fewer[0])  # a refusal changes nothing


def test_rebuilt_neighbour_lists_of_one_cell_replay_in_one_recording(package, monkeypatch):
    # The CUDA-graph path on the CPU (the recording's buffers, evaluated instead of replayed): moves
    # beyond half the skin rebuild the neighbour list into its edge slots; a strained cell needs a
    # new recording.
    monkeypatch.setattr("mlip_distill.calculator.CapturedStep", FixedBuffersStep)
    replayed = StudentCalculator(package, dtype="float64", skin=0.1)
    replayed.cuda_graph = True
    atoms = rattled_copper((2, 2, 1))
    rng = np.random.default_rng(2)
    for step in range(6):
        atoms.positions += rng.normal(0, 0.03, atoms.positions.shape)  # beyond half the skin: a rebuild
        if step == 4:
            atoms.set_cell(atoms.cell * 1.01, scale_atoms=True)
        atoms.calc = replayed
        results = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = StudentCalculator(package, dtype="float64", skin=0.0)
        assert results[0] == pytest.approx(atoms.get_potential_energy(), rel=1e-12)
        np.testing.assert_allclose(results[1], atoms.get_forces(), atol=1e-12)
        np.testing.assert_allclose(results[2], atoms.get_stress(), atol=1e-12)
    assert replayed.neighbour_list_builds == 6
    assert replayed.cuda_graph_recordings == 2


def test_far_image_lies_beyond_the_cutoff_and_a_molecule_has_none():
    primitive = torch.as_tensor(bulk("Si", "diamond", a=5.43).cell.array)  # vectors of 3.84 Å
    shift = far_image_shift(primitive, cutoff=4.5)
    assert float((shift @ primitive).norm()) > 4.5
    assert far_image_shift(torch.zeros(3, 3), cutoff=4.5) is None


def test_compiled_network_gives_the_eager_numbers_for_any_size(package):
    eager = StudentCalculator(package, compiled=False)
    compiled = StudentCalculator(package, compile_network=True)
    for repeat in [(2, 1, 1), (2, 2, 1)]:  # shapes change: the compiled kernels take any number of atoms and edges
        atoms = rattled_copper(repeat, seed=sum(repeat))
        results = []
        for calculator in (eager, compiled):
            atoms.calc = calculator
            results.append((atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()))
        np.testing.assert_allclose(results[1][0], results[0][0], rtol=1e-12)
        np.testing.assert_allclose(results[1][1], results[0][1], atol=1e-10)
        np.testing.assert_allclose(results[1][2], results[0][2], atol=1e-12)


def test_a_compiled_network_on_a_gpu_needs_the_cuda_graph(package):
    with pytest.raises(ValueError, match="compiles the eager student inside the CUDA graph"):
        StudentCalculator(package, device="cuda", compile_network=True, cuda_graph=False)
