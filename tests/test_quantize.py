"""Int8 fake quantisation (QAT) of students' weights and the int8 package the calculator runs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.fd import calculate_numerical_forces

from mlip_distill.calculator import StudentCalculator
from mlip_distill.models import build_model
from mlip_distill.models.quantize import (
    int8_state_dict,
    is_prepared,
    prepare_qat,
    quantizable_modules,
    remove_qat,
)
from mlip_distill.package import load_potential, read_metadata, save_potential

ARCHITECTURES = {
    "nequip": {"channels": 8, "num_layers": 2},
    "painn": {"channels": 8, "num_layers": 2},
}


def student(name: str, dtype=torch.float32):
    torch.manual_seed(0)
    model = build_model(name, elements=[29], cutoff=4.0, e0={29: -0.5}, scale=0.3, **ARCHITECTURES[name])
    return model.to(dtype)


def rattled_copper(seed: int = 0):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1))
    atoms.rattle(0.1, seed=seed)
    return atoms


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_fake_quantised_weights_lie_on_an_int8_grid_per_channel(name):
    model = prepare_qat(student(name))
    modules = quantizable_modules(model)
    assert len(modules) >= 5  # linear and tensor-product weights of every layer
    for module, layout in modules.values():
        latent = module.parametrizations.weight.original
        for quantized, original in zip(layout.matrices(module.weight), layout.matrices(latent)):
            scale = original.abs().amax(dim=0) / 127
            steps = quantized / scale
            # every channel holds integer multiples of its own scale, at most 127 in size
            assert torch.allclose(steps, steps.round(), atol=1e-3)
            assert steps.abs().max() <= 127 + 1e-3
            assert (quantized - original).abs().max() <= 0.5 * scale.max() + 1e-7
    assert any(not torch.equal(module.weight, module.parametrizations.weight.original) for module, _ in modules.values())


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_qat_forces_stay_conservative_and_gradients_reach_the_latent_weights(name, tmp_path):
    model = prepare_qat(student(name, torch.float64))
    package = save_potential(remove_qat(student(name, torch.float64)), name, tmp_path / "p")
    potential = load_potential(package, dtype=torch.float64)
    potential.model = model
    atoms = rattled_copper()
    atoms.calc = StudentCalculator(potential, dtype="float64")
    forces = atoms.get_forces()
    assert np.abs(forces).max() > 1e-3
    np.testing.assert_allclose(forces, calculate_numerical_forces(atoms, eps=1e-5), atol=1e-6 * np.abs(forces).max() + 1e-9)

    # straight-through gradients: a force loss trains the latent float weights
    from mlip_distill.data.graph import atoms_to_graph
    from torch_geometric.data import Batch

    batch = Batch.from_data_list([atoms_to_graph(atoms, 4.0, dtype=torch.float64)])
    model.train()
    model(batch, compute_forces=True)["forces"].square().sum().backward()
    latent = [module.parametrizations.weight.original for module, _ in quantizable_modules(model).values()]
    assert all(weight.grad is not None for weight in latent)
    assert sum(float(weight.grad.abs().sum()) for weight in latent) > 0


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_int8_package_loads_runs_and_matches_the_fake_quantised_student(name, tmp_path):
    trained = student(name)
    package = save_potential(trained, name, tmp_path / "int8", int8=True, compiled=True)
    metadata = read_metadata(package)
    assert metadata["quantization"]["scheme"] == "int8-symmetric-per-channel"
    state, names = int8_state_dict(trained)
    assert all(state[key].dtype == torch.int8 for key in names)

    fake_quantized = prepare_qat(student(name)).eval()
    atoms = rattled_copper(seed=3)
    reference = StudentCalculator(load_potential(save_potential(trained, name, tmp_path / "f32")), compiled=False)
    reference.potential.model = fake_quantized
    reference.model = fake_quantized
    expected_energy, expected_forces = reference.get_potential_energy(atoms), reference.get_forces(atoms)
    float_forces = StudentCalculator(tmp_path / "f32", compiled=False).get_forces(atoms)
    quantization_shift = np.abs(float_forces - expected_forces).max()
    assert quantization_shift > 0  # int8 rounding moves the forces a little ...
    for compiled in (False, True):
        calculator = StudentCalculator(package, compiled=compiled)
        assert calculator.compiled is compiled
        assert calculator.get_potential_energy(atoms) == pytest.approx(expected_energy, abs=1e-5)
        # ... and the int8 student computes what the fake-quantised one did
        np.testing.assert_allclose(calculator.get_forces(atoms), expected_forces, atol=max(1e-5, 0.01 * quantization_shift))


def test_prepare_twice_and_saving_a_prepared_model_are_refused(tmp_path):
    model = prepare_qat(student("nequip"))
    assert is_prepared(model)
    with pytest.raises(ValueError, match="already prepared"):
        prepare_qat(model)
    with pytest.raises(ValueError, match="remove_qat"):
        int8_state_dict(model)
    with pytest.raises(ValueError, match="remove_qat"):
        save_potential(model, "nequip", tmp_path / "p", int8=True)
    remove_qat(model)
    assert not is_prepared(model)
    assert set(model.state_dict()) == set(student("nequip").state_dict())
